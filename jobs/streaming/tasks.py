"""`p13n stream consume` and the catch-up task: the Kafka sources of the catalog into bronze."""

from __future__ import annotations

import datetime as dt
import signal

from p13n.config import get_settings
from p13n.lake.tables import (
    GOLD_CUSTOMER_PROFILES,
    GOLD_IDENTITY_KEYS,
    GOLD_SEGMENTS,
    GOLD_TRIGGERED_AUDIENCES,
)
from p13n.orchestration import progress


def kafka_sources():
    from p13n.sources.catalog import catalog

    return [s for s in catalog() if s.format == "kafka"]


def consume(
    catch_up: bool = False, batch_date: str | None = None, max_records: int = 50_000, max_seconds: float = 5.0
) -> dict:
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
        keep=erased_filter(settings),
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
    out = (
        {"events": stats.events, "bad": stats.bad, "commits": stats.commits, "suppressed": stats.suppressed}
        if stats
        else {}
    )
    progress(f"stream consumer stopped: {out}")
    return out


def erased_filter(settings, reload_seconds: float = 60.0):
    """The consumer's `keep`: False for events whose customer field is an erased customer's identifier
    (its keyed hash is in `ops.suppressions`), so a replayed event does not bring them back. The list
    is re-read every `reload_seconds` while the service runs."""
    import time

    import pyarrow as pa

    from p13n.privacy.erasure import keyed_hash, suppressed_hashes
    from p13n.secrets import pii_key

    key = pii_key(settings)
    state = {"hashes": suppressed_hashes(settings), "at": time.monotonic()}

    def keep(source, records):
        if time.monotonic() - state["at"] > reload_seconds:
            state["hashes"], state["at"] = suppressed_hashes(settings), time.monotonic()
        column = settings.stream.customer_fields.get(source.name)
        if not state["hashes"] or not column or column not in records.column_names:
            return None
        values = records[column].to_pylist()
        gone = {v for v in set(values) if v and keyed_hash(v, key) in state["hashes"]}
        return pa.array([v not in gone for v in values]) if gone else None

    return keep


def realtime_profiles(settings):
    """The real-time profile updater when a serving Redis is configured (`serving.redis_url`), else None."""
    if not settings.serving.redis_url:
        progress("no serving.redis_url: events land in bronze, real-time profiles are not updated")
        return None
    from p13n.streaming.realtime import RealtimeProfiles

    return RealtimeProfiles(settings, settings.serving.redis_url)


def triggers_task(now=None, day: str | None = None) -> dict:
    """Evaluate the behavioural triggers on the landed events and append the new ones: at `now`, by
    default the clock, or for a run of a past `day` (a backfill, a replayed night) at that day's end."""
    from p13n.lake.duck import duckdb_connection

    settings = get_settings()
    now = now or dt.datetime.now(dt.UTC)
    con = duckdb_connection()
    if day and dt.date.fromisoformat(day) < now.date():
        now = dt.datetime.combine(dt.date.fromisoformat(day), dt.time(23, 59, 59), dt.UTC)
        if found := _evaluated(settings, con, dt.date.fromisoformat(day)):
            progress(
                f"triggers of {day}: evaluated before ({found:,} of them); a replayed past day adds none"
            )
            return {"triggered": 0, "suppressed": 0}
    new = with_cadence(settings, con, evaluate_triggers(settings, con, now), now)
    if len(new):
        import pyarrow as pa

        from p13n.lake.duck import write_arrow
        from p13n.streaming.triggers import COLUMNS, SCHEMA

        table = pa.Table.from_pandas(new[COLUMNS], schema=SCHEMA, preserve_index=False)
        write_arrow(settings, GOLD_TRIGGERED_AUDIENCES, table, partition_by=["trigger_date"])
    counts = new.groupby(["trigger", "status"]).size().to_dict() if len(new) else {}
    progress(
        f"triggers at {now:%Y-%m-%d %H:%M}: "
        + (", ".join(f"{t} {s} {n}" for (t, s), n in sorted(counts.items())) or "none")
    )
    return {
        "triggered": int((new["status"] == "sent").sum()) if len(new) else 0,
        "suppressed": int((new["status"] == "suppressed").sum()) if len(new) else 0,
    }


def _evaluated(settings, con, day: dt.date) -> int:
    """The stream's triggers already recorded for `day`. A past day's evaluation is not repeated: its
    events are the same, but identity, consents and lifecycle stages have moved on since (a rerun of a
    night resolves that day's identities), so a replay would trigger what the day itself did not,
    and the night's journeys, which read the day's triggers, would not rerun the same."""
    from p13n.streaming.triggers import PRIORITY

    if not _exists(settings, GOLD_TRIGGERED_AUDIENCES):
        return 0
    kinds = ", ".join(f"'{k}'" for k in PRIORITY)
    return con.execute(
        f"SELECT count(*) FROM {_scan(settings, GOLD_TRIGGERED_AUDIENCES)} "
        f"WHERE trigger_date = ? AND trigger IN ({kinds})",
        [day],
    ).fetchone()[0]


def with_cadence(settings, con, new, now, programs=()):
    """The triggers to send through the contact ledger (`p13n.cadence`): the caps over every channel
    and program, quiet hours and the time each goes out; one the ledger holds back is `suppressed`
    with its reason."""
    from p13n.cadence.ledger import candidates_frame, hold_back, plan

    if not len(new) and not programs:
        return new
    go = new[new["status"] == "sent"]
    rows = plan(
        settings,
        candidates_frame(go["customer_id"], go["channel"], "trigger", go["trigger"], go["trigger_id"]),
        now,
        con,
        programs=list(programs),
    )
    return hold_back(
        new,
        rows,
        ("trigger", "customer_id", "trigger_id"),
        sent=("status", "sent"),
        held="suppressed",
        reason="reason",
    )


def _scan(settings, table: str) -> str:
    from p13n.lake.duck import scan

    return scan(settings.lake_root, table)


def _exists(settings, table: str) -> bool:
    from p13n.lake.duck import table_exists

    return table_exists(settings.lake_root, table)


def evaluate_triggers(settings, con, now):
    """Read the events of the lookback window (bronze, attributed through gold.identity_keys), consents,
    lapsed customers and the trigger history, and evaluate (see `p13n.streaming.triggers`)."""
    import pandas as pd

    from p13n.sources.catalog import catalog
    from p13n.streaming.triggers import COLUMNS, evaluate

    st = settings.stream
    by_name = {s.name: s for s in catalog()}
    since = now - dt.timedelta(days=max(st.triggers.lookback_days, st.triggers.post_purchase_days + 1))
    parts = []
    for name, field in st.customer_fields.items():
        table = by_name[name].bronze_table
        if not _exists(settings, table):
            continue
        session = "session_id" if "session_id" in [c.name for c in by_name[name].columns] else "device_id"
        parts.append(f"""
            SELECT k.customer_id, e.event_id, e.event_type, e.sku, e.{session} AS session_id,
                   CAST(e.event_at AS TIMESTAMPTZ) AS event_at
            FROM {_scan(settings, table)} e
            JOIN {_scan(settings, GOLD_IDENTITY_KEYS)} k
              ON k.key_type = ? AND k.key_value = e.{field}
            WHERE e._parse_error IS NULL AND TRY_CAST(e.event_at AS TIMESTAMPTZ) >= ?""")
    if not parts or not _exists(settings, GOLD_IDENTITY_KEYS):
        return pd.DataFrame(columns=COLUMNS)
    params = [st.customer_key_type, since] * len(parts)
    events = con.execute(" UNION ALL ".join(parts), params).df().drop_duplicates("event_id")
    events["event_at"] = pd.to_datetime(events["event_at"], utc=True)
    consents = con.execute(
        "SELECT customer_id, consent_email, consent_sms, consent_push FROM "
        f"{_scan(settings, GOLD_CUSTOMER_PROFILES)}"
    ).df()
    lapsed = None
    if _exists(settings, GOLD_SEGMENTS):
        lapsed = con.execute(f"""
            SELECT customer_id FROM {_scan(settings, GOLD_SEGMENTS)}
            WHERE as_of_date = (SELECT max(as_of_date) FROM {_scan(settings, GOLD_SEGMENTS)})
              AND lifecycle_stage = 'lapsed'""").df()
    history = (
        con.execute(f"SELECT * FROM {_scan(settings, GOLD_TRIGGERED_AUDIENCES)}").df()
        if _exists(settings, GOLD_TRIGGERED_AUDIENCES)
        else pd.DataFrame(columns=COLUMNS)
    )
    return evaluate(events, now, st.triggers, consents, history, lapsed)


def produce(
    rate: float,
    seconds: float,
    customers: int = 2000,
    seed: int | None = None,
    bootstrap: str | None = None,
    day: dt.date | None = None,
) -> int:
    """Produce `rate` × `seconds` web events at `rate` per second (customers' shopify ids), for demos
    and load tests of the consumer: `p13n stream produce --rate R`. Stamped now, or, with `day`, from
    22:00 UTC of that day at `rate` a second (a replayed day's events belong to that day's batch).
    With a `seed`, the same events (ids, keys, times, so partitions and offsets) every time."""
    import json
    import random
    import time

    from kafka import KafkaProducer

    from p13n.services.kafka import ensure_topics
    from p13n.sources.ingest import kafka_bootstrap

    bootstrap = bootstrap or kafka_bootstrap(get_settings())
    ensure_topics(bootstrap, ["web-events"])
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    rng = random.Random(seed)
    types = ("product_view",) * 6 + ("add_to_cart", "remove_from_cart", "page_view", "search", "purchase")
    total = max(1, int(rate * seconds))
    sent, start = 0, time.monotonic()
    prefix = (f"L{seed}" + (f"-{day:%Y%m%d}" if day else "")) if seed is not None else f"P{int(time.time())}"
    first = dt.datetime.combine(day, dt.time(22), dt.UTC) if day else None
    try:
        while sent < total:
            elapsed = time.monotonic() - start
            due = min(total, int(elapsed * rate) + 1)
            for _ in range(due - sent):
                who = rng.randrange(customers) + 1
                event = {
                    "event_id": f"{prefix}-{sent}",
                    "event_at": (
                        first + dt.timedelta(seconds=sent / rate) if first else dt.datetime.now(dt.UTC)
                    )
                    .isoformat(timespec="seconds")
                    .replace("+00:00", "Z"),
                    "event_type": rng.choice(types),
                    "session_id": f"S{who}-{int(elapsed // 1800)}",
                    "anonymous_id": f"A{who:08d}",
                    "customer_id": f"SH{who:08d}",
                    "sku": f"SKU-{rng.randrange(1, 200):06d}",
                }
                producer.send(
                    "web-events", value=json.dumps(event).encode(), key=event["session_id"].encode()
                )
                sent += 1
            time.sleep(min(0.01, max(0.0, (sent / rate) - (time.monotonic() - start))))
        producer.flush()
    finally:
        producer.close()
    progress(
        f"produced {sent:,} events in {time.monotonic() - start:.1f}s ({sent / max(seconds, 1e-9):,.0f}/s)"
    )
    return sent
