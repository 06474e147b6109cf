"""Local stand-ins for the systems that push data: the warehouse's loyalty table and the Kafka producers.

In production the loyalty system writes to Snowflake and the web and app collectors produce to Kafka.
Locally, the generator leaves their data as dumps; these functions put it where the pipeline reads it.
"""

from __future__ import annotations

import datetime as dt

from p13n.config import Settings
from p13n.generate.retail import KAFKA_DUMP_DIR, SNOWFLAKE_DUMP_DIR
from p13n.sources.catalog import Catalog


def load_warehouse(settings: Settings, catalog: Catalog) -> int:
    """Upsert every warehouse dump into the local Snowflake (fakesnow); idempotent."""
    from p13n.sources.systems import load_warehouse_dumps

    rows = 0
    for source in catalog:
        if source.format == "snowflake":
            rows += load_warehouse_dumps(
                settings, source, settings.landing_dir / SNOWFLAKE_DUMP_DIR / source.location
            )
    return rows


def replay_topics(
    settings: Settings, catalog: Catalog, bootstrap: str, through: dt.date | None = None
) -> int:
    """Produce the topic dumps of every day up to `through` onto the broker (keyed by event id)."""
    from p13n.services.kafka import ensure_topics, produce_lines

    sent = 0
    kafka_sources = [s for s in catalog if s.format == "kafka"]
    ensure_topics(bootstrap, [s.location for s in kafka_sources])
    for source in kafka_sources:
        for dump in sorted((settings.landing_dir / KAFKA_DUMP_DIR / source.location).glob("*.jsonl")):
            if through and dt.date.fromisoformat(dump.stem) > through:
                continue
            lines = [line for line in dump.read_text().splitlines() if line]
            sent += produce_lines(bootstrap, source.location, lines, key_field=source.primary_key[0])
    return sent
