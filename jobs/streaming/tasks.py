"""`p13n stream consume` and the catch-up task: the Kafka sources of the catalog into bronze."""

from __future__ import annotations

import datetime as dt
import signal

from p13n.config import get_settings
from p13n.orchestration import progress


def kafka_sources():
    from p13n.sources.catalog import catalog

    return [s for s in catalog() if s.format == "kafka"]


def consume(catch_up: bool = False, batch_date: str | None = None, max_records: int = 50_000,
            max_seconds: float = 5.0) -> dict:  # fmt: skip
    """Run the consumer: until interrupted, or (catch-up) until the end offsets present at start."""
    from p13n.sources.ingest import kafka_bootstrap
    from p13n.streaming.consumer import StreamConsumer

    settings = get_settings()
    profiles = realtime_profiles(settings)
    consumer = StreamConsumer(
        settings.lake_root,
        kafka_sources(),
        kafka_bootstrap(settings),
        batch_date=dt.date.fromisoformat(batch_date) if batch_date else None,
        max_records=max_records,
        max_seconds=max_seconds,
        on_batch=profiles.apply if profiles else None,
    )
    stopping = []
    if not catch_up:  # the service stops cleanly on SIGTERM (a task leaves signals to Airflow)
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    try:
        if catch_up:
            stats = consumer.catch_up(progress=progress)
        else:
            stats = consumer.run(stop=lambda: bool(stopping), progress=progress)
    except KeyboardInterrupt:
        stats = None
    finally:
        consumer.close()
    out = {"events": stats.events, "bad": stats.bad, "commits": stats.commits} if stats else {}
    progress(f"stream consumer stopped: {out}")
    return out


def realtime_profiles(settings):
    """The real-time profile updater when a serving Redis is configured (`serving.redis_url`), else None."""
    if not settings.serving.redis_url:
        progress("no serving.redis_url: events land in bronze, real-time profiles are not updated")
        return None
    from p13n.streaming.realtime import RealtimeProfiles

    return RealtimeProfiles(settings, settings.serving.redis_url)
