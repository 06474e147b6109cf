"""Cadence entry points for the DAGs: the stream's `dispatch` task."""

from __future__ import annotations

import datetime as dt

from p13n.config import get_settings
from p13n.orchestration import progress


def dispatch_task(day: str | None = None, now: dt.datetime | None = None) -> dict:
    """Hand the messages due by now to their platforms: at the clock, or for a run of a past `day`
    (a replayed night) at that day's end, as the triggers are evaluated."""
    from p13n.cadence.dispatch import dispatch

    now = now or dt.datetime.now(dt.UTC)
    if day and dt.date.fromisoformat(day) < now.date():
        now = dt.datetime.combine(dt.date.fromisoformat(day), dt.time(23, 59, 59), dt.UTC)
    return dispatch(get_settings(), now, progress=progress)
