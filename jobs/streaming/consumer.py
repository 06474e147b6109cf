"""Kafka events into bronze Delta tables exactly once, bad events to a dead-letter topic.

Exactly once: a micro-batch's rows and the next offset of every topic-partition it read go into the
same Delta commit (a transaction app id `kafka:<topic>:<partition>` per partition, the ids the batch
ingestion of #3 uses too). On start the consumer seeks each partition to what the table says, so a
crash anywhere (before the commit: nothing landed, the range is read again; after it: the table
already says where to resume) neither loses nor duplicates an event.

The consumer reads raw bytes and validates in the loop. A bad event (not UTF-8, invalid JSON, not an
object, oversized, a required field missing, a mistyped field, an unknown event type) is landed in
bronze with its `_parse_error` (the nightly promotion quarantines it with that reason, so nothing is
lost), and produced to `<topic>.dlq` with the error and its origin in the headers, before the commit: the
partition keeps moving. The dead-letter topic is at least once (a crash between the produce and the
commit repeats it); bronze is exactly once.

Two modes: `run()` as a long-lived service (`p13n stream consume`), and `catch_up()` (drain to the
end offsets present at start, commit, stop) for the Airflow DAG that runs every few minutes.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from p13n.faults import checkpoint
from p13n.sources.catalog import Source
from p13n.sources.ingest import batch_id
from p13n.sources.readers import bronze_arrow_schema
from p13n.sources.systems import MAX_MESSAGE, kafka_app_id, message_record

_TIMESTAMP_FORMATS = ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%d %H:%M:%S")


_NUMBER_TYPES = ("int", "float", "decimal", "money")


def check_fields(source: Source, record: dict) -> str | None:
    """Why a parsed record is unusable (missing, mistyped or unknown values), or None."""
    for col in source.columns:
        value = record.get(col.name)
        if value is None or value == "":
            if col.required:
                return f"missing required field {col.name}"
            continue
        if col.type == "string":
            continue
        if col.type == "enum" and value not in col.values:
            return f"unknown {col.name} {value!r} (expected one of {', '.join(col.values)})"
        if col.type not in _NUMBER_TYPES and col.type != "timestamp":
            continue
        if col.type == "int":
            try:
                int(value)
            except ValueError:
                return f"{col.name} is not an integer: {value!r}"
        if col.type in ("float", "decimal", "money"):
            try:
                float(value)
            except ValueError:
                return f"{col.name} is not a number: {value!r}"
        if col.type == "timestamp" and not _is_timestamp(value):
            return f"{col.name} is not a timestamp: {value!r}"
    return None


def _is_timestamp(value: str) -> bool:
    try:
        dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        return True
    except ValueError:
        return any(_parses(value, f) for f in _TIMESTAMP_FORMATS)


def _parses(value: str, fmt: str) -> bool:
    try:
        dt.datetime.strptime(value, fmt)
        return True
    except ValueError:
        return False


def event_record(source: Source, partition: int, offset: int, value: bytes | None) -> dict:
    """One message as a bronze record; `_parse_error` says why it is bad, if it is."""
    record = message_record(source, partition, offset, value)
    if record["_parse_error"] is None:
        problem = check_fields(source, record)
        if problem:
            record["_parse_error"] = problem
    return record


def fast_records(source: Source, origins: list[str], offsets: list[int], values: list) -> pa.Table | None:
    """The bronze records of a batch parsed in one pass by Arrow's JSON reader, checks vectorized; None
    when the batch needs the per-event path (a message that is not one flat JSON object line of
    declared string fields: invalid JSON, a number where text is declared, an undeclared field, a
    newline inside a value, a nested column). The two paths give the same records."""
    import io

    import pyarrow.compute as pc
    import pyarrow.json as pj

    if any("." in c.source or c.source != c.name for c in source.columns):
        return None
    if any(v is None or len(v) > MAX_MESSAGE or b"\n" in v for v in values):
        return None
    names = [c.name for c in source.columns]
    try:
        raw = pa.array(values, pa.binary()).cast(pa.string())  # fails on invalid UTF-8
        parsed = pj.read_json(
            io.BytesIO(b"\n".join(values)),
            parse_options=pj.ParseOptions(
                explicit_schema=pa.schema([(n, pa.string()) for n in names]),
                unexpected_field_behavior="error",
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    if parsed.num_rows != len(values):
        return None
    bad = pa.array([False] * len(values))
    for col in source.columns:
        column = parsed[col.name]
        empty = pc.or_kleene(pc.is_null(column), pc.equal(column, ""))
        if col.required:
            bad = pc.or_(bad, pc.fill_null(empty, True))
        if col.type == "enum":
            bad = pc.or_(
                bad,
                pc.and_(
                    pc.invert(pc.fill_null(empty, True)), pc.invert(pc.is_in(column, pa.array(col.values)))
                ),
            )
        elif col.type == "timestamp":
            bad = pc.or_(
                bad, pc.and_(pc.invert(pc.fill_null(empty, True)), pc.invert(_timestamps_ok(column)))
            )
        elif col.type in _NUMBER_TYPES:
            return None  # numbers: the per-event path checks them
    errors: list = [None] * len(values)
    rows = parsed.to_pylist() if pc.any(bad).as_py() else None
    if rows is not None:
        for i in pc.indices_nonzero(bad).to_pylist():
            errors[i] = check_fields(source, rows[i])
    n = len(values)
    return pa.table(
        {
            **{name: parsed[name] for name in names},
            "_file": pa.array(origins, pa.string()),
            "_record": pa.array(offsets, pa.int64()),
            "_raw": raw,
            "_extra": pa.nulls(n, pa.string()),
            "_parse_error": pa.array(errors, pa.string()),
        }
    )


def _timestamps_ok(column) -> pa.Array:
    import pyarrow.compute as pc

    try:
        return pc.is_valid(
            pc.cast(pc.fill_null(column, "1970-01-01T00:00:00Z"), pa.timestamp("us", tz="UTC"))
        )
    except pa.ArrowInvalid:  # some without a zone, or not timestamps: decide each distinct value
        seen = {v: _is_timestamp(v) for v in set(column.to_pylist()) if v}
        return pa.array([True if not v else seen[v] for v in column.to_pylist()])


@dataclass
class BatchStats:
    events: int = 0
    bad: int = 0
    commits: int = 0
    dead_lettered: int = 0
    suppressed: int = 0  # events of erased customers, dropped (their offsets still advance)
    seconds: float = 0.0
    per_source: dict[str, int] = field(default_factory=dict)

    def add(self, other: BatchStats) -> None:
        self.events += other.events
        self.suppressed += other.suppressed
        self.bad += other.bad
        self.commits += other.commits
        self.dead_lettered += other.dead_lettered
        for k, v in other.per_source.items():
            self.per_source[k] = self.per_source.get(k, 0) + v


class StreamConsumer:
    """Consumes the topics of `sources` into their bronze tables (see the module docstring)."""

    def __init__(
        self,
        lake_root: str,
        sources: list[Source],
        bootstrap: str,
        *,
        max_records: int = 50_000,
        max_seconds: float = 5.0,
        dead_letter: bool = True,
        batch_date: dt.date | None = None,
        on_batch: Callable[[Source, list[dict], list[int]], None] | None = None,
        keep: Callable[[Source, pa.Table], pa.Array | None] | None = None,
    ):
        from kafka import KafkaConsumer

        self.lake_root = lake_root
        self.by_topic = {s.location: s for s in sources}
        self.bootstrap = bootstrap
        self.max_records, self.max_seconds = max_records, max_seconds
        self.dead_letter = dead_letter
        self.batch_date = batch_date
        self.on_batch = on_batch  # before the commit: real-time profiles (idempotent updates)
        self.keep = keep  # which events may land (False: an erased customer's; see p13n.privacy)
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            group_id=None,  # offsets live in the Delta tables, not in Kafka
            max_partition_fetch_bytes=max(MAX_MESSAGE * 2, 4 << 20),
            fetch_max_bytes=32 << 20,
        )
        self._producer = None
        self.assign()

    # --- offsets ---
    def stored_offsets(self, source: Source, partitions=None) -> dict[int, int]:
        """The next offset per partition that the bronze table's transactions record (0 if none)."""
        from p13n.lake.duck import open_table

        if partitions is None:
            partitions = self.consumer.partitions_for_topic(source.location) or set()
        table = open_table(self.lake_root, source.bronze_table)
        if table is None:
            return dict.fromkeys(partitions, 0)
        return {p: table.transaction_version(kafka_app_id(source.location, p)) or 0 for p in partitions}

    def assign(self) -> None:
        """Assign every partition of every topic and seek each to the offset its table stores."""
        from kafka import TopicPartition

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            parts = {t: self.consumer.partitions_for_topic(t) for t in self.by_topic}
            if all(parts.values()):
                break
            self.consumer.topics()  # refresh metadata
            time.sleep(0.2)
        tps = []
        for topic, source in self.by_topic.items():
            stored = self.stored_offsets(source)
            self._check_not_reset(source, stored)
            for p, offset in sorted(stored.items()):
                tp = TopicPartition(topic, p)
                tps.append((tp, offset))
        self.consumer.assign([tp for tp, _ in tps])
        for tp, offset in tps:
            self.consumer.seek(tp, offset)

    def _check_not_reset(self, source: Source, stored: dict[int, int]) -> None:
        """Refuse to run when the table stores an offset past the broker's end: the topic was
        recreated or the broker lost its log. Seeking there would skip (Kafka resets an out-of-range
        position) every event until the new log reaches the old offset, silently."""
        if not any(stored.values()):
            return
        from p13n.services.kafka import end_offsets

        ends = end_offsets(self.bootstrap, source.location)
        ahead = {p: (o, ends.get(p, 0)) for p, o in sorted(stored.items()) if o > ends.get(p, 0)}
        if ahead:
            where = ", ".join(
                f"{source.location}/{p} stored {o:,}, broker end {e:,}" for p, (o, e) in ahead.items()
            )
            raise StreamOffsetError(
                f"{source.bronze_table} has landed past the end of topic {source.location} ({where}): the "
                "topic was recreated or the broker lost messages. Nothing was read. After checking what "
                f"happened, `p13n stream reset-offsets --topic {source.location} --to beginning` lands what "
                "the broker holds now (or `--to end` skips it)."
            )

    # --- one micro-batch ---
    def poll_batch(self) -> dict:
        """Poll until `max_records` events or `max_seconds` have passed: {tp: [messages]}."""
        batch: dict = {}
        n = 0
        deadline = time.monotonic() + self.max_seconds
        while n < self.max_records and time.monotonic() < deadline:
            polled = self.consumer.poll(timeout_ms=200, max_records=self.max_records - n)
            for tp, messages in polled.items():
                batch.setdefault(tp, []).extend(messages)
                n += len(messages)
            if not polled and n:
                break  # caught up: land what we have rather than wait out the window
        return batch

    def commit(self, batch: dict) -> BatchStats:
        """Land one polled batch: dead letters first, then one Delta commit per topic (rows + next
        offsets)."""
        from p13n.lake.duck import write_arrow

        stats = BatchStats()
        t0 = time.perf_counter()
        now = dt.datetime.now(dt.UTC)
        day = self.batch_date or now.date()
        by_topic: dict[str, list] = {}
        for tp, messages in batch.items():
            by_topic.setdefault(tp.topic, []).append((tp, messages))
        for topic, parts in by_topic.items():
            source = self.by_topic[topic]
            origins, numbers, values, offsets, produced = [], [], [], {}, []
            # Another writer (the batch ingestion, a second consumer) may have landed part of this
            # range since we sought: keep only what the table does not hold yet. That narrows the
            # window; delta-rs does not refuse a repeated app transaction (delta-rs#2580), so run
            # one consumer per topic (the DAG or the service, not both).
            stored = self.stored_offsets(source, [tp.partition for tp, _ in parts])
            for tp, all_messages in parts:
                messages = [m for m in all_messages if m.offset >= stored.get(tp.partition, 0)]
                if not messages:
                    continue
                origins += [f"{topic}/{tp.partition}"] * len(messages)
                numbers += [m.offset for m in messages]
                values += [m.value for m in messages]
                produced += [m.timestamp for m in messages]
                offsets[tp.partition] = messages[-1].offset + 1
            if not values:
                continue
            records = fast_records(source, origins, numbers, values)
            if records is None:  # the per-event path: any message the fast one cannot take
                rows = [
                    event_record(source, int(o.rsplit("/", 1)[1]), n, v)
                    for o, n, v in zip(origins, numbers, values, strict=True)
                ]
                schema = bronze_arrow_schema(source)
                # Column by column: about 6x faster than Table.from_pylist on 50k events.
                records = pa.table(
                    {f.name: pa.array([r[f.name] for r in rows], f.type) for f in schema}, schema=schema
                )
            mask = self.keep(source, records) if self.keep else None
            if mask is not None:
                kept = pc.indices_nonzero(mask)
                stats.suppressed += records.num_rows - len(kept)
                produced = [produced[i] for i in kept.to_pylist()]
                records = records.take(kept)
            errors = records["_parse_error"]
            bad_idx = pc.indices_nonzero(pc.is_valid(errors)).to_pylist()
            bad = (
                records.take(pa.array(bad_idx, pa.int64()))
                .select(["_file", "_record", "_raw", "_parse_error"])
                .to_pylist()
            )
            if not records.num_rows:
                continue
            if bad and self.dead_letter:  # before the commit: a crash repeats them, never drops them
                stats.dead_lettered += self._dead_letter(topic, bad)
            if self.on_batch:
                good = pc.indices_nonzero(pc.is_null(errors)).to_pylist()
                self.on_batch(
                    source, records.take(pa.array(good, pa.int64())).to_pylist(), [produced[i] for i in good]
                )
            table = _bronze_rows(source, records, day, now)
            write_arrow(
                self.lake_root,
                source.bronze_table,
                table,
                partition_by=["_batch_date"],
                txns=[(kafka_app_id(topic, p), o) for p, o in sorted(offsets.items())],
                metadata={"p13n.writer": "stream", "p13n.offsets": json.dumps(offsets)},
            )
            checkpoint("stream.after_commit")
            stats.events += records.num_rows
            stats.bad += len(bad)
            stats.commits += 1
            stats.per_source[source.name] = records.num_rows
        stats.seconds = time.perf_counter() - t0
        return stats

    def _dead_letter(self, topic: str, bad: list[dict]) -> int:
        from kafka import KafkaProducer

        if self._producer is None:
            self._producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
        for r in bad:
            partition = r["_file"].rsplit("/", 1)[1]
            headers = [
                ("p13n.error", r["_parse_error"].encode()),
                ("p13n.origin", f"{topic}/{partition}@{r['_record']}".encode()),
            ]
            self._producer.send(f"{topic}.dlq", value=(r["_raw"] or "").encode(), headers=headers)
        self._producer.flush()
        return len(bad)

    # --- modes ---
    def end_offsets(self) -> dict:
        from p13n.services.kafka import end_offsets

        return {
            (topic, p): e for topic in self.by_topic for p, e in end_offsets(self.bootstrap, topic).items()
        }

    def catch_up(
        self, progress: Callable[[str], None] | None = None, idle_seconds: float = 60.0
    ) -> BatchStats:
        """Drain to the end offsets present now, committing micro-batches, then stop. Fails (naming the
        partitions) when no message arrives for `idle_seconds` short of those offsets."""
        targets = self.end_offsets()
        total = BatchStats()
        last_progress = time.monotonic()

        def landed(stats: BatchStats) -> None:
            total.add(stats)
            if progress:
                progress(f"landed {total.events:,} events ({total.bad:,} bad) in {total.commits} commits")

        with _Pipeline(self.commit, landed) as pipeline:
            while True:
                positions = {
                    (tp.topic, tp.partition): self.consumer.position(tp) for tp in self.consumer.assignment()
                }
                behind = {k: (positions.get(k, 0), e) for k, e in targets.items() if positions.get(k, 0) < e}
                if not behind:
                    break
                batch = self.poll_batch()
                if not batch:
                    if time.monotonic() - last_progress > idle_seconds:
                        where = ", ".join(
                            f"{t}/{p} at {at} of {end}" for (t, p), (at, end) in sorted(behind.items())
                        )
                        raise RuntimeError(
                            f"catch-up stalled for {idle_seconds:.0f}s short of the end offsets: {where}"
                        )
                    continue
                last_progress = time.monotonic()
                pipeline.submit(batch)
        return total

    def run(self, stop: Callable[[], bool] = lambda: False, progress: Callable[[str], None] | None = None):
        """The long-lived service: micro-batches until `stop()` says so."""
        total = BatchStats()

        def landed(stats: BatchStats) -> None:
            total.add(stats)
            if progress:
                progress(
                    f"{stats.events:,} events ({stats.bad} bad) in {stats.seconds * 1000:.0f} ms; "
                    f"{total.events:,} in all"
                )

        with _Pipeline(self.commit, landed) as pipeline:
            while not stop():
                batch = self.poll_batch()
                if batch:
                    pipeline.submit(batch)
        return total

    def close(self) -> None:
        self.consumer.close()
        if self._producer:
            self._producer.close()


class StreamOffsetError(RuntimeError):
    """A bronze table's stored offsets do not fit the broker's topic."""


def reset_offsets(lake_root: str, source: Source, bootstrap: str, to: str) -> dict[int, tuple[int, int]]:
    """Move the stored offsets of `source`'s partitions that are past the broker's end to the
    broker's beginning or end (one Delta commit without data, its transactions only). Returns
    {partition: (old, new)}; partitions that are fine are left alone."""
    from kafka import KafkaConsumer, TopicPartition

    from p13n.lake.duck import commit_transactions, open_table
    from p13n.services.kafka import end_offsets

    if to not in ("beginning", "end"):
        raise ValueError(f"reset to 'beginning' or 'end', not {to!r}")
    table = open_table(lake_root, source.bronze_table)
    if table is None:
        return {}
    ends = end_offsets(bootstrap, source.location)
    if to == "beginning":
        c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
        try:
            tps = [TopicPartition(source.location, p) for p in sorted(ends)]
            targets = {tp.partition: o for tp, o in c.beginning_offsets(tps).items()}
        finally:
            c.close()
    else:
        targets = ends
    moves = {}
    for p, end in sorted(ends.items()):
        stored = table.transaction_version(kafka_app_id(source.location, p)) or 0
        if stored > end:
            moves[p] = (stored, targets[p])
    if moves:
        commit_transactions(
            lake_root,
            source.bronze_table,
            [(kafka_app_id(source.location, p), new) for p, (_, new) in moves.items()],
            metadata={"p13n.writer": "stream-reset-offsets", "p13n.offsets": json.dumps(moves)},
        )
    return moves


class _Pipeline:
    """Commits one batch in a background thread while the next one is polled: Arrow's JSON parsing,
    the Parquet write and the Delta commit release the GIL, kafka-python's decoding holds it, so on
    two cores the two overlap. At most one commit is in flight and they land in poll order, so the
    offsets a commit stores never pass a batch that has not landed; a commit's error is raised at the
    next submit or on leaving the block, after which nothing more is committed."""

    def __init__(self, commit: Callable[[dict], BatchStats], landed: Callable[[BatchStats], None]):
        from concurrent.futures import ThreadPoolExecutor

        self.commit, self.landed = commit, landed
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="p13n-stream-commit")
        self.pending = None

    def submit(self, batch: dict) -> None:
        self.wait()
        self.pending = self.pool.submit(self.commit, batch)

    def wait(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            self.landed(pending.result())

    def __enter__(self) -> _Pipeline:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.wait()
            elif self.pending is not None:
                self.pending.exception()  # let the commit in flight finish (or fail) before returning
        finally:
            self.pool.shutdown(wait=True)


def _bronze_rows(source: Source, records: pa.Table, day: dt.date, now: dt.datetime) -> pa.Table:
    n = records.num_rows
    front = pa.table(
        {
            "_source": pa.array([source.name] * n, pa.string()),
            "_batch_id": pa.array([batch_id(source, day)] * n, pa.string()),
            "_batch_date": pa.array([day] * n, pa.date32()),
            "_ingested_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
        }
    )
    return pa.Table.from_arrays(
        front.columns + records.columns, names=front.column_names + records.column_names
    )
