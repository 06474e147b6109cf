"""The stream consumer on the embedded Kafka-compatible broker: exactly once across a crash, bad events
landed with their reason and dead-lettered while the partition moves on. No Spark: delta-rs writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest
from deltalake import DeltaTable

from p13n.services.kafka import EmbeddedBroker, end_offsets, ensure_topics, produce_lines
from p13n.sources.catalog import load_catalog
from p13n.streaming.consumer import StreamConsumer, check_fields

pytestmark = pytest.mark.kafka
TOPIC = "web-events"


def _event(i: int, **over) -> str:
    e = {
        "event_id": f"E{i:06d}",
        "event_at": "2024-03-01T10:00:00Z",
        "event_type": "product_view",
        "session_id": f"S{i % 7}",
        "anonymous_id": f"A{i % 11}",
        "customer_id": f"SH{i % 11:08d}",
        "sku": f"SKU-{i % 50:06d}",
    }
    return json.dumps(e | over)


@pytest.fixture
def broker():
    b = EmbeddedBroker().start()
    yield b
    b.stop()


def _bronze(root: str):
    return DeltaTable(f"{root}/bronze/web_clickstream").to_pyarrow_table().to_pylist()


def test_field_checks_name_the_problem():
    source = load_catalog()["web_clickstream"]
    good = json.loads(_event(1))
    assert check_fields(source, good) is None
    assert check_fields(source, good | {"event_type": "teleport"}).startswith("unknown event_type 'teleport'")
    assert check_fields(source, {**good, "session_id": None}) == "missing required field session_id"
    assert (
        check_fields(source, good | {"event_at": "yesterday"}) == "event_at is not a timestamp: 'yesterday'"
    )


def test_a_replay_puts_every_message_at_the_same_offsets_bad_lines_too(broker):
    """`p13n run` refills its in-memory broker from the landing zone's dumps, and a rerun's lake holds
    the offsets of the run before: the planted bad lines, which have no key to read, must land in the
    same partitions every time (unkeyed, they went to random ones and a rerun's stream step failed)."""
    lines = [_event(i) for i in range(120)] + ["{not json", "[1, 2]", '"a string"', "\x00binary"] * 5
    ensure_topics(broker.bootstrap, [TOPIC], partitions=3)
    produce_lines(broker.bootstrap, TOPIC, lines, key_field="event_id")
    first = end_offsets(broker.bootstrap, TOPIC)
    for _ in range(2):
        again = EmbeddedBroker().start()
        try:
            ensure_topics(again.bootstrap, [TOPIC], partitions=3)
            produce_lines(again.bootstrap, TOPIC, lines, key_field="event_id")
            assert end_offsets(again.bootstrap, TOPIC) == first
        finally:
            again.stop()
    assert sum(first.values()) >= len(lines) and min(first.values()) > 0


def test_events_land_exactly_once_across_a_crash_and_bad_ones_are_dead_lettered(broker, tmp_path):
    source = load_catalog()["web_clickstream"]
    root = str(tmp_path / "lake")
    ensure_topics(broker.bootstrap, [TOPIC], partitions=3)
    lines = [_event(i) for i in range(300)]
    poison = ["{not json", json.dumps({"event_id": "X1"}), _event(999, event_type="teleport")]
    produce_lines(broker.bootstrap, TOPIC, lines[:150] + poison + lines[150:], key_field="session_id")

    # A consumer killed right after its first Delta commit (before dead letters and anything else).
    env = {
        **os.environ,
        "P13N_DATA_DIR": str(tmp_path),
        "P13N__SOURCES__KAFKA_BOOTSTRAP": broker.bootstrap,
        "P13N_FAULTS": "stream.after_commit",
    }
    killed = subprocess.run(
        [
            sys.executable,
            "-m",
            "p13n.cli",
            "stream",
            "consume",
            "--catch-up",
            "--batch-date",
            "2024-03-01",
            "--max-records",
            "100",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == 137, killed.stderr[-2000:]
    landed_before = len(_bronze(root))
    assert 0 < landed_before < len(lines) + len(poison)

    # Restarted: it resumes from the offsets in the table; every event once, nothing lost.
    consumer = StreamConsumer(root, [source], broker.bootstrap, max_records=100)
    try:
        stats = consumer.catch_up()
    finally:
        consumer.close()
    rows = _bronze(root)
    assert len(rows) == len(lines) + len(poison) == landed_before + stats.events
    good = [r for r in rows if r["_parse_error"] is None]
    assert sorted(r["event_id"] for r in good) == sorted(json.loads(x)["event_id"] for x in lines)
    bad = {r["_raw"]: r["_parse_error"] for r in rows if r["_parse_error"]}
    assert bad["{not json"].startswith("invalid JSON")
    assert bad[json.dumps({"event_id": "X1"})] == "missing required field event_at"
    assert bad[poison[2]].startswith("unknown event_type 'teleport'")
    table = DeltaTable(f"{root}/bronze/web_clickstream")
    ends = {p: table.transaction_version(f"kafka:{TOPIC}:{p}") or 0 for p in range(3)}
    assert sum(ends.values()) == len(lines) + len(poison)  # the stored offsets cover every message

    # A second catch-up finds nothing new and lands nothing.
    again = StreamConsumer(root, [source], broker.bootstrap)
    try:
        assert again.catch_up().events == 0
    finally:
        again.close()
    assert len(_bronze(root)) == len(rows)

    # The dead-letter topic holds the bad events with their reason and origin (at least once: those
    # of the killed consumer's first batch may be there twice, never missing).
    from kafka import KafkaConsumer

    dlq = KafkaConsumer(
        f"{TOPIC}.dlq",
        bootstrap_servers=broker.bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        consumer_timeout_ms=3000,
    )
    letters = {(m.value.decode(), dict(m.headers)["p13n.error"].decode()) for m in dlq}
    dlq.close()
    assert letters == {(raw, err) for raw, err in bad.items()}


def test_stream_updates_realtime_profiles_the_api_and_fires_triggers(broker, redis_url, settings, tmp_path):
    """Events → bronze + real-time profile → the API's answers → an abandoned-cart trigger."""
    import datetime as dt

    from fastapi.testclient import TestClient

    from p13n.bench.serving import AS_OF, write_gold
    from p13n.lake.tables import GOLD_TRIGGERED_AUDIENCES
    from p13n.serving.api import create_app
    from p13n.serving.auth import headers_for
    from p13n.serving.publish import publish
    from p13n.streaming.realtime import RealtimeProfiles, read_profile
    from p13n.streaming.tasks import evaluate_triggers

    srv = settings.serving.model_copy(
        update={
            "experiments": {},
            "api": settings.serving.api.model_copy(update={"pointer_cache_seconds": 0.0}),
        }
    )
    s = settings.model_copy(update={"data_dir": tmp_path, "serving": srv})
    write_gold(s.lake_root, 50, 200)
    publish(s, redis_url, AS_OF)
    with TestClient(create_app(s, redis_url), headers=headers_for(s)) as api:
        nightly = [i["sku"] for i in api.get("/v1/customers/C000000006/recommendations?k=5").json()["items"]]

    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    at = lambda minutes: (now - dt.timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")  # noqa: E731
    shopper = {"session_id": "S1", "anonymous_id": "A1", "customer_id": "700006"}  # C000000006, email consent
    events = [
        _event(1, **shopper, event_type="product_view", sku="SKU-000111", event_at=at(130)),
        _event(2, **shopper, event_type="add_to_cart", sku=nightly[0], event_at=at(125)),
        _event(3, **shopper, event_type="product_view", sku="SKU-000122", event_at=at(120)),
        _event(
            4, session_id="S9", anonymous_id="A9", customer_id=None, event_type="page_view", event_at=at(5)
        ),
    ]
    ensure_topics(broker.bootstrap, [TOPIC], partitions=1)
    produce_lines(broker.bootstrap, TOPIC, events)
    profiles = RealtimeProfiles(s, redis_url)
    consumer = StreamConsumer(
        s.lake_root, [load_catalog()["web_clickstream"]], broker.bootstrap, on_batch=profiles.apply
    )
    try:
        assert consumer.catch_up().events == 4
    finally:
        consumer.close()
    assert profiles.unresolved == 1  # the anonymous page view
    import redis

    rt = read_profile(redis.Redis.from_url(redis_url, decode_responses=True), "p13n", "C000000006")
    assert rt["recently_viewed"] == ["SKU-000122", "SKU-000111"] and rt["cart"] == [nightly[0]]
    assert rt["session_events"] == 3 and rt["activity"]["last_event_type"] == "product_view"

    with TestClient(create_app(s, redis_url), headers=headers_for(s)) as api:
        served = [i["sku"] for i in api.get("/v1/customers/C000000006/recommendations?k=5").json()["items"]]
        assert nightly[0] not in served and served[:4] == nightly[1:5]  # the cart item is not recommended
        viewed = api.get("/v1/customers/C000000006/recommendations?type=recently_viewed&k=3").json()["items"]
        assert [i["sku"] for i in viewed[:2]] == ["SKU-000122", "SKU-000111"]

    from deltalake import write_deltalake

    from p13n.lake.duck import duckdb_connection

    new = evaluate_triggers(s, duckdb_connection(), now)
    journeys = new[new["trigger"] != "win_back"]
    assert list(
        zip(
            journeys["customer_id"],
            journeys["trigger"],
            journeys["anchor_sku"],
            journeys["status"],
            strict=True,
        )
    ) == [("C000000006", "abandoned_cart", nightly[0], "sent")]
    # Win-back: the customers the nightly lifecycle calls lapsed (i % 4 == 1); no email consent: i % 5 == 0.
    win = new[new["trigger"] == "win_back"].set_index("customer_id")["status"].to_dict()
    assert win == {f"C{i:09d}": "suppressed" if i % 5 == 0 else "sent" for i in range(50) if i % 4 == 1}
    write_deltalake(
        f"{s.lake_root}/gold/triggered_audiences", new, mode="append", partition_by=["trigger_date"]
    )
    assert evaluate_triggers(s, duckdb_connection(), now).empty  # evaluated again: nothing new
    assert GOLD_TRIGGERED_AUDIENCES == "gold.triggered_audiences"


def test_the_fast_batch_path_gives_the_per_event_records():
    import pyarrow as pa

    from p13n.sources.readers import bronze_arrow_schema
    from p13n.streaming.consumer import event_record, fast_records

    source = load_catalog()["web_clickstream"]
    values = [_event(i).encode() for i in range(20)] + [
        _event(20, event_type="teleport").encode(),
        json.dumps({"event_id": "X", "event_at": "2024-03-01T10:00:00Z"}).encode(),  # required fields missing
        _event(22, event_at="not a time").encode(),
        _event(23, event_at="2024-03-01 10:00:00", sku="").encode(),  # no zone: still a timestamp
    ]
    origins, offsets = [f"{TOPIC}/1"] * len(values), list(range(100, 100 + len(values)))
    fast = fast_records(source, origins, offsets, values)
    assert fast is not None
    slow = [event_record(source, 1, o, v) for o, v in zip(offsets, values, strict=True)]
    assert fast.to_pylist() == pa.Table.from_pylist(slow, schema=bronze_arrow_schema(source)).to_pylist()
    assert [r["_parse_error"] is not None for r in slow] == [False] * 20 + [True, True, True, False]
    # Anything the fast path cannot take goes to the per-event path.
    assert fast_records(source, origins[:1], offsets[:1], [b"{not json"]) is None
    assert fast_records(source, origins[:1], offsets[:1], [_event(1, extra_field=1).encode()]) is None


def test_a_consumer_that_sought_before_another_landed_the_range_skips_it(broker, tmp_path):
    source = load_catalog()["web_clickstream"]
    root = str(tmp_path / "lake")
    ensure_topics(broker.bootstrap, [TOPIC], partitions=2)
    produce_lines(broker.bootstrap, TOPIC, [_event(i) for i in range(40)], key_field="session_id")
    first, late = (StreamConsumer(root, [source], broker.bootstrap) for _ in range(2))  # both seek to 0
    try:
        assert first.catch_up().events == 40
        assert late.catch_up().events == 0  # it polls offsets 0.. again, and the table already holds them
    finally:
        first.close()
        late.close()
    assert sorted(r["event_id"] for r in _bronze(root)) == [f"E{i:06d}" for i in range(40)]


@pytest.fixture
def tansu_s3(local_s3):
    """The local S3 endpoint with a bucket for the broker's durable storage, as Tansu's environment."""
    bucket = local_s3.create_bucket(f"tansu-{uuid.uuid4().hex[:8]}")
    options = local_s3.storage_options()
    env = {
        "AWS_ENDPOINT": options["AWS_ENDPOINT_URL"],
        "AWS_ACCESS_KEY_ID": options["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": options["AWS_SECRET_ACCESS_KEY"],
        "AWS_DEFAULT_REGION": options["AWS_REGION"],
        "AWS_ALLOW_HTTP": "true",
    }
    return env, f"s3://{bucket}/"


def test_a_broker_restart_is_survived(tansu_s3, tmp_path):
    source = load_catalog()["web_clickstream"]
    root = str(tmp_path / "lake")
    env, storage = tansu_s3
    broker = EmbeddedBroker(storage=storage, storage_env=env).start()
    consumer = None
    try:
        ensure_topics(broker.bootstrap, [TOPIC], partitions=2)
        produce_lines(broker.bootstrap, TOPIC, [_event(i) for i in range(200)], key_field="session_id")
        consumer = StreamConsumer(root, [source], broker.bootstrap, max_records=60, max_seconds=2)
        assert consumer.commit(consumer.poll_batch()).events == 60

        broker.stop()  # the broker goes away mid-stream: what was prefetched lands, then polls come back
        for _ in range(10):  # empty and nothing raises
            if not (batch := consumer.poll_batch()):
                break
            consumer.commit(batch)
        assert batch == {}
        broker.start()  # same port, same storage: the topic and its offsets are back

        produce_lines(broker.bootstrap, TOPIC, [_event(i) for i in range(200, 300)], key_field="session_id")
        deadline = time.monotonic() + 60
        consumer.run(stop=lambda: len(_bronze(root)) >= 300 or time.monotonic() > deadline)
    finally:
        if consumer:
            consumer.close()
        broker.stop()
    assert sorted(r["event_id"] for r in _bronze(root)) == [f"E{i:06d}" for i in range(300)]


def test_a_recreated_topic_is_refused_until_its_offsets_are_reset(broker, tmp_path):
    from p13n.streaming.consumer import StreamOffsetError, reset_offsets

    source = load_catalog()["web_clickstream"]
    root = str(tmp_path / "lake")
    ensure_topics(broker.bootstrap, [TOPIC], partitions=1)
    produce_lines(broker.bootstrap, TOPIC, [_event(i) for i in range(30)])
    first = StreamConsumer(root, [source], broker.bootstrap)
    assert first.catch_up().events == 30
    first.close()

    fresh = EmbeddedBroker().start()  # the same topic, recreated: its log starts again at 0
    try:
        ensure_topics(fresh.bootstrap, [TOPIC], partitions=1)
        produce_lines(fresh.bootstrap, TOPIC, [_event(i) for i in range(100, 110)])
        with pytest.raises(StreamOffsetError, match=r"web-events/0 stored 30, broker end 10"):
            StreamConsumer(root, [source], fresh.bootstrap)
        assert reset_offsets(root, source, fresh.bootstrap, "beginning") == {0: (30, 0)}
        again = StreamConsumer(root, [source], fresh.bootstrap)
        assert again.catch_up().events == 10
        again.close()
    finally:
        fresh.stop()
    ids = sorted(r["event_id"] for r in _bronze(root))
    assert ids == [f"E{i:06d}" for i in range(30)] + [f"E{i:06d}" for i in range(100, 110)]
