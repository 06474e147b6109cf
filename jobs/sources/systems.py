"""Sources that are systems, not files: Kafka topics read as bounded batches, and a Snowflake table.

Kafka: a batch reads each partition from the offset the bronze table recorded last (one Delta app
transaction per topic-partition, committed with the data) up to the end offsets seen at the start.
Each Spark task consumes one partition's range, so the read is distributed; a crash before the
commit leaves the offsets where they were, and the rerun reads the same messages again.

Snowflake: the rows whose cursor falls in the batch's day, read with snowflake-connector-python
(locally the fakesnow stand-in, with its databases kept under the data directory).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
from pyspark.sql import DataFrame

from p13n.config import Settings
from p13n.sources.catalog import Source
from p13n.sources.readers import (
    bronze_arrow_schema,
    bronze_ddl,
    error_record,
    mapping_record,
    parse_json_record,
)

MAX_MESSAGE = 1 << 20


def kafka_app_id(topic: str, partition: int) -> str:
    return f"kafka:{topic}:{partition}"


def _consume_ranges(batches, *, source: Source, bootstrap: str):
    """Executor side: each input row is (partition, start, end); yield that range's messages as records."""
    from kafka import KafkaConsumer, TopicPartition

    schema = bronze_arrow_schema(source)
    for batch in batches:
        for partition, start, end in zip(
            *(batch.column(c).to_pylist() for c in ("partition", "start", "end")), strict=True
        ):
            if end <= start:
                continue
            tp = TopicPartition(source.location, partition)
            consumer = KafkaConsumer(
                bootstrap_servers=bootstrap,
                enable_auto_commit=False,
                group_id=None,
                max_partition_fetch_bytes=4 << 20,
            )
            try:
                consumer.assign([tp])
                consumer.seek(tp, start)
                rows: list[dict] = []
                position = start
                while position < end:
                    polled = consumer.poll(timeout_ms=2000, max_records=5000)
                    if not polled:
                        raise RuntimeError(
                            f"{source.name}: partition {partition} stopped at offset {position} before {end}"
                        )
                    for message in polled.get(tp, []):
                        if message.offset >= end:
                            position = end
                            break
                        rows.append(message_record(source, partition, message.offset, message.value))
                        position = message.offset + 1
                    if len(rows) >= 8192:
                        yield pa.RecordBatch.from_pylist(rows, schema=schema)
                        rows = []
                if rows:
                    yield pa.RecordBatch.from_pylist(rows, schema=schema)
            finally:
                consumer.close()


def message_record(source: Source, partition: int, offset: int, value: bytes | None) -> dict:
    where = f"{source.location}/{partition}"
    if value is None:
        return error_record(source, where, offset, "", "empty message")
    if len(value) > MAX_MESSAGE:
        return error_record(
            source,
            where,
            offset,
            value[:4096].decode("utf-8", "replace"),
            f"message of {len(value)} bytes exceeds {MAX_MESSAGE}",
        )
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return error_record(source, where, offset, value.decode("utf-8", "replace"), f"not UTF-8: {exc}")
    return parse_json_record(source, text, where, offset)


def kafka_batch(
    spark, source: Source, bootstrap: str, starts: dict[int, int], ends: dict[int, int], here: bool = False
) -> DataFrame:
    """Bronze records of the messages between `starts` and `ends`, read by the executors, or with
    `here` by this process and sent to Spark as Arrow (a small batch: see `ingest.read_landing_records`)."""
    ranges = [(p, starts.get(p, 0), ends[p]) for p in sorted(ends)]
    consume = functools.partial(_consume_ranges, source=source, bootstrap=bootstrap)
    if here:
        names = ("partition", "start", "end")
        rows = pa.record_batch([pa.array([r[i] for r in ranges], pa.int64()) for i in range(3)], names=names)
        table = pa.Table.from_batches(list(consume([rows])), schema=bronze_arrow_schema(source))
        return spark.createDataFrame(table, schema=bronze_ddl(source))
    df = spark.createDataFrame(ranges or [(0, 0, 0)], "partition int, start long, end long")
    df = df.repartition(max(1, len(ranges)))
    return df.mapInArrow(consume, bronze_ddl(source))


# ---------------------------------------------------------------------- Snowflake
@contextmanager
def snowflake_connection(settings: Settings, database: str | None = None, schema: str | None = None):
    """A snowflake-connector-python connection: fakesnow locally, the Airflow connection in prod."""
    import snowflake.connector

    if settings.env == "prod":
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(settings.sources.snowflake_connection_id)
        extra = conn.extra_dejson
        con = snowflake.connector.connect(
            user=conn.login,
            password=conn.password,
            account=extra.get("account"),
            warehouse=extra.get("warehouse"),
            role=extra.get("role"),
        )
        try:
            yield con
        finally:
            con.close()
        return
    import fakesnow

    settings.snowflake_db_path.mkdir(parents=True, exist_ok=True)
    _local_stages(settings)
    with fakesnow.patch(db_path=str(settings.snowflake_db_path)):
        # fakesnow attaches a database's file only when a connection names it
        con = snowflake.connector.connect(database=database, schema=schema)
        try:
            yield con
        finally:
            con.close()


def _local_stages(settings: Settings) -> None:
    """fakesnow makes a folder for staged files (a PUT) in /tmp when imported and never removes it, one per
    process: the empty folder is removed and stages go under the data directory, made when a PUT needs
    them."""
    import tempfile

    from fakesnow.transforms import stage

    made_on_import = Path(stage.LOCAL_BUCKET_PATH)
    if made_on_import.parent == Path(tempfile.gettempdir()) and made_on_import.is_dir():
        with contextlib.suppress(OSError):  # not empty: something staged there; leave it
            made_on_import.rmdir()
    stage.LOCAL_BUCKET_PATH = str(settings.data_dir / "cache" / "fakesnow-stages")


def _sf_type(col, cursor: str | None) -> str:
    if col.name == cursor:
        return "TIMESTAMP_NTZ"
    return "NUMBER" if col.type == "int" else "VARCHAR"


def warehouse_batch(spark, source: Source, settings: Settings, batch_date: dt.date) -> DataFrame:
    """The rows of the warehouse table whose cursor falls on `batch_date` (the batch's data interval)."""
    cursor = source.column(source.cursor).source
    arrow_schema = bronze_arrow_schema(source)
    db, db_schema, _ = source.location.split(".")
    with snowflake_connection(settings, db, db_schema) as con:
        cur = con.cursor()
        cur.execute(
            f"select * from {source.location} where {cursor} >= %s and {cursor} < %s order by {cursor}, 1",
            (batch_date.isoformat(), (batch_date + dt.timedelta(days=1)).isoformat()),
        )
        names = [d[0] for d in cur.description]
        records = []
        for index, row in enumerate(cur.fetchall(), start=1):
            record = dict(zip(names, (_sf_text(v) for v in row), strict=True))
            records.append(
                mapping_record(source, record, source.location, index, json.dumps(record, default=str))
            )
    return spark.createDataFrame(pa.Table.from_pylist(records, schema=arrow_schema), bronze_ddl(source))


def _sf_text(value):
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return value


def load_warehouse_dumps(settings: Settings, source: Source, dump_dir: Path) -> int:
    """Local stand-in for the loyalty system writing to Snowflake: upsert the generator's daily dumps."""
    import pandas as pd
    import snowflake.connector.pandas_tools as pandas_tools  # looked up at call time: fakesnow patches it

    cols = source.columns
    rows = 0
    db, db_schema, table = source.location.split(".")
    with snowflake_connection(settings, db, db_schema) as con:
        cur = con.cursor()
        cur.execute(f"create database if not exists {db}")
        cur.execute(f"create schema if not exists {db}.{db_schema}")
        ddl = ", ".join(f"{c.source} {_sf_type(c, source.cursor)}" for c in cols)
        cur.execute(f"create table if not exists {source.location} ({ddl})")
        key = source.column(source.primary_key[0]).source
        for dump in sorted(dump_dir.glob("*.json")):
            records = json.loads(dump.read_text())
            if not records:
                continue
            ids = [r[key] for r in records]
            for i in range(0, len(ids), 1000):
                chunk = ids[i : i + 1000]
                cur.execute(
                    f"delete from {source.location} where {key} in ({', '.join(['%s'] * len(chunk))})", chunk
                )
            frame = pd.DataFrame([{c.source: _sf_value(r.get(c.source), c) for c in cols} for r in records])
            cursor_col = source.column(source.cursor).source
            frame[cursor_col] = pd.to_datetime(frame[cursor_col])
            # the connector's bulk path (a stage and COPY on Snowflake): row-by-row inserts are far slower
            pandas_tools.write_pandas(
                con, frame, table, database=db, schema=db_schema, quote_identifiers=False
            )
            rows += len(records)
    return rows


def _sf_value(value, col):
    """A dump value as the warehouse column holds it (numbers stay numbers, the rest text)."""
    if value is None:
        return None
    if col.type == "timestamp":
        return str(value).replace("T", " ").replace("Z", "")[:19]
    return value if col.type == "int" else str(value)
