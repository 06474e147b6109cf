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


def nightly_triggers_task(ds: str) -> dict:
    """The night's triggers from the batch sources (export_audiences' triggers task, before the
    journeys they start): checkout abandoned, birthday, back in stock, price drop, replenishment."""
    from p13n.journeys.triggers import run_nightly_triggers

    out = run_nightly_triggers(get_settings(), dt.date.fromisoformat(ds))
    said = "; ".join(
        f"{kind} " + ", ".join(f"{n:,} {status}" for status, n in sorted(counts.items()))
        for kind, counts in out.items()
        if counts
    )
    progress(f"nightly triggers {ds}: {said or 'none'}")
    return out
