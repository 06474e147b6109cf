"""The reference night's day and what it is compared by (tests/orchestration/conftest.py builds it)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

DAY = dt.date(2024, 3, 1)
# The generated day both runs process: 500 customers with a year of purchase history.
NIGHT = {"customers": 500, "days": 1, "seed": 4, "start": DAY, "bad_rate": 0.005, "history_days": 400}
PII_KEY = "k"  # the pseudonymization key (P13N_PII_KEY) of both runs, so their pseudonyms agree


@dataclass
class Night:
    settings: object
    lines: list[str]  # the progress lines of score_customers's run
    digests: dict[str, tuple[int, str]]  # table_digests() of the lake after both DAGs


def table_digests(root: str | Path) -> dict[str, tuple[int, str]]:
    """Every Delta table under a local lake root: its row count and a digest of its sorted rows, without
    the columns that record a run rather than data (`_…` lineage, `…_at` times, `run_id`)."""
    from deltalake import DeltaTable

    out = {}
    for table in sorted(Path(root).glob("*/*/_delta_log")):
        frame = DeltaTable(str(table.parent)).to_pyarrow_table().to_pandas()
        keep = [c for c in frame.columns if not c.startswith("_") and not c.endswith("_at") and c != "run_id"]
        rows = sorted(json.dumps(r, default=str, sort_keys=True) for r in frame[keep].to_dict("records"))
        name = f"{table.parent.parent.name}.{table.parent.name}"
        out[name] = (len(rows), hashlib.sha256("\n".join(rows).encode()).hexdigest())
    return out
