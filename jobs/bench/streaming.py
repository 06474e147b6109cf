"""`p13n bench streaming`: the stream consumer against a bare kafka-python loop, and profile latency.

* `stream_ratio` (best of 3 alternating runs each) = events per second the consumer lands in bronze (raw bytes
→ validated records →
  Delta commits with their offsets, dead letters included) ÷ events per second of a bare kafka-python
  loop that only polls the same topic, in the same run on the same embedded broker.
* `latency_p99_ms`: from the producer's timestamp of an event to its customer's real-time profile
  update in Redis, with the consumer running as a service while events arrive at `--rate`-like pace.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path

TOPIC = "web-events"


def _events(n: int, customers: int, start: int = 0) -> list[str]:
    types = ("product_view", "product_view", "product_view", "add_to_cart", "page_view", "search")
    now = time.time()
    return [
        json.dumps(
            {
                "event_id": f"E{start + i:09d}",
                "event_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 60)),
                "event_type": types[i % len(types)],
                "session_id": f"S{(start + i) // 20}",
                "anonymous_id": f"A{i % customers}",
                "customer_id": str(700000 + i % customers),
                "sku": f"SKU-{i % 5000:06d}",
                "page_url": f"/p/{i % 5000}",
            }
        )
        for i in range(n)
    ]


def _bare_loop(bootstrap: str, n: int) -> float:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        max_partition_fetch_bytes=4 << 20,
        fetch_max_bytes=32 << 20,
    )
    tps = [TopicPartition(TOPIC, p) for p in sorted(c.partitions_for_topic(TOPIC))]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    t = time.perf_counter()
    got = 0
    while got < n:
        for messages in c.poll(timeout_ms=500, max_records=50_000).values():
            got += len(messages)
    seconds = time.perf_counter() - t
    c.close()
    return n / seconds


def bench_streaming(rows: int | None = None, reps: int = 1) -> dict:
    from p13n.bench.serving import AS_OF, write_gold
    from p13n.config import get_settings
    from p13n.services.kafka import EmbeddedBroker, ensure_topics, produce_lines
    from p13n.services.redis import RedisServer
    from p13n.serving.publish import publish
    from p13n.sources.catalog import catalog
    from p13n.streaming.consumer import StreamConsumer
    from p13n.streaming.realtime import RealtimeProfiles

    n = rows or 200_000
    customers = 10_000
    work = Path(tempfile.mkdtemp(prefix="p13n-bench-streaming-"))
    os.environ["P13N_DATA_DIR"] = str(work)
    settings = get_settings()
    source = next(s for s in catalog() if s.name == "web_clickstream")
    broker = EmbeddedBroker().start()
    redis_server = RedisServer(work / "redis", persist=False).start()
    try:
        ensure_topics(broker.bootstrap, [TOPIC], partitions=3)
        print(f"bench streaming: producing {n:,} events", flush=True)
        produce_lines(broker.bootstrap, TOPIC, _events(n, customers), key_field="session_id")
        # Alternating runs, the best of each (the broker and the machine are shared, so runs vary).
        bare, landed = 0.0, 0.0
        for rep in range(max(3, reps)):
            bare = max(bare, _bare_loop(broker.bootstrap, n))
            consumer = StreamConsumer(
                str(work / f"lake{rep}"), [source], broker.bootstrap, max_records=50_000
            )
            t = time.perf_counter()
            stats = consumer.catch_up()
            landed = max(landed, stats.events / (time.perf_counter() - t))
            consumer.close()
        out = {
            "stream_events": stats.events,
            "stream_commits": stats.commits,
            "stream_landed_per_s": round(landed),
            "bare_consume_per_s": round(bare),
            "stream_ratio": round(landed / bare, 3),
        }

        # Latency: the consumer as a service, events arriving in small bursts, profiles in Redis.
        write_gold(settings.lake_root, customers, 1000)
        publish(settings, redis_server.url, AS_OF)
        profiles = RealtimeProfiles(settings, redis_server.url)
        service = StreamConsumer(
            str(work / "lake2"),
            [source],
            broker.bootstrap,
            max_records=5000,
            max_seconds=settings.stream.max_seconds,
            on_batch=profiles.apply,
        )
        stop = threading.Event()
        runner = threading.Thread(target=service.run, kwargs={"stop": stop.is_set}, daemon=True)
        service.catch_up()  # start from the end of the backlog
        profiles.latencies_ms.clear()
        runner.start()
        sent = 0
        for _ in range(50):  # 50 bursts of 200 events, 100 ms apart: 2,000 events/s for 5 s
            produce_lines(broker.bootstrap, TOPIC, _events(200, customers, start=n + sent))
            sent += 200
            time.sleep(0.1)
        deadline = time.monotonic() + 30
        while len(profiles.latencies_ms) < sent and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        runner.join(30)
        service.close()
        lat = sorted(profiles.latencies_ms)
        out |= {
            "latency_events": len(lat),
            "latency_p50_ms": round(lat[len(lat) // 2], 1),
            "latency_p99_ms": round(lat[int(len(lat) * 0.99) - 1], 1),
            "latency_max_ms": round(lat[-1], 1),
        }
    finally:
        broker.stop()
        redis_server.stop()
    return out
