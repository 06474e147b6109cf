"""Journey entry points for the DAGs and the CLI (`p13n journeys`)."""

from __future__ import annotations

import datetime as dt

from p13n.config import get_settings
from p13n.orchestration import progress


def journeys_task(ds: str) -> dict:
    """Advance every journey through the night of `ds` (export_audiences' journeys task)."""
    from p13n.journeys.pipeline import NotScored, run_night

    try:
        out = run_night(get_settings(), dt.date.fromisoformat(ds))  # measure validates its outputs
    except NotScored as exc:
        progress(f"{exc}: no journey moved")
        return {}
    for name, counts in sorted(out.items()):
        said = ", ".join(f"{n:,} {what}" for what, n in counts.items() if what != "active" and n)
        progress(f"journey {name} {ds}: {said or 'nothing happened'}; {counts['active']:,} in it now")
    return out
