"""The lake layer on real Spark and real Delta tables: exact content, atomicity, conflicts, idempotency."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
import time
from decimal import Decimal

import polars as pl
import pyarrow as pa
import pytest

from p13n.lake import (
    ConcurrentWriteError,
    Lake,
    ReplaceWhereViolation,
    SchemaMismatchError,
    TableNotFoundError,
)
from p13n.lake.duck import duckdb_connection
from p13n.runctx import RunContext

pytestmark = pytest.mark.spark

D1, D2, D3 = dt.date(2024, 3, 1), dt.date(2024, 3, 2), dt.date(2024, 3, 3)
ORDER_SCHEMA = "order_id long, customer string, amount double, order_date date"


def orders(spark, rows):
    return spark.createDataFrame(rows, ORDER_SCHEMA)


def rows_of(df, *cols):
    cols = cols or tuple(df.columns)
    return sorted(tuple(r[c] for c in cols) for r in df.collect())


BASE = [(1, "ann", 10.0, D1), (2, "bob", 20.0, D1), (3, "cy", 30.0, D2), (4, "dee", 40.0, D3)]


def duck(lake):
    """DuckDB on the lake's storage (its S3 credentials when it has them)."""
    from types import SimpleNamespace

    storage = SimpleNamespace(storage_options=lake.storage_options or {})
    return duckdb_connection(settings=SimpleNamespace(lake_root=lake.root, lake=storage))


def stored_files(lake, table) -> set[str]:
    """The Parquet files under a table's folder (outside the staging folder), relative to it."""
    import pyarrow.fs as pafs

    fs, table_dir = lake._fs(table)
    found = fs.get_file_info(pafs.FileSelector(table_dir, recursive=True))
    return {
        i.path[len(table_dir) + 1 :]
        for i in found
        if i.path.endswith(".parquet") and "/_staging/" not in i.path[len(table_dir) :]
    }


def files_read(lake, df_of) -> int:
    """How many data files a read opens: Spark's own input files, or the files an Arrow-IO lake hands
    its executors."""
    if not lake.arrow_io:
        return len(df_of().inputFiles())
    seen = []
    original = lake._read_files_via_arrow

    def spy(dt, uris, *args):
        seen.extend(uris)
        return original(dt, uris, *args)

    lake._read_files_via_arrow = spy
    try:
        df_of()
    finally:
        del lake._read_files_via_arrow
    return len(seen)


def test_written_table_is_standard_delta_read_by_deltalake_duckdb_and_polars(spark, lake):
    special = ["a b", "x/y", "50%", "é", "k=v", None]
    df = spark.createDataFrame(
        [(i, v, dt.datetime(2024, 1, 1, 12, i)) for i, v in enumerate(special)],
        "id long, tag string, ts timestamp",
    )
    lake.write("bronze.tags", df, partition_by=["tag"])

    expected = sorted((i, v) for i, v in enumerate(special))
    table = lake.delta_table("bronze.tags").to_pyarrow_table()
    assert sorted(zip(table["id"].to_pylist(), table["tag"].to_pylist(), strict=True)) == expected
    polars = pl.read_delta(lake.uri("bronze.tags"), storage_options=lake.storage_options)
    assert sorted(polars.select("id", "tag").rows()) == expected
    by_duckdb = duck(lake).sql(f"select id, tag from delta_scan('{lake.uri('bronze.tags')}')").fetchall()
    assert sorted(by_duckdb) == expected
    assert rows_of(lake.read("bronze.tags"), "id", "tag") == expected
    # timestamps survive exactly (UTC, microseconds)
    assert lake.delta_table("bronze.tags").to_pyarrow_table()["ts"].to_pylist()[0].minute in range(6)
    assert {r.ts for r in lake.read("bronze.tags").collect()} == {
        dt.datetime(2024, 1, 1, 12, i) for i in range(6)
    }


def test_append_then_overwrite(spark, lake):
    lake.write("silver.orders", orders(spark, BASE[:2]))
    lake.write("silver.orders", orders(spark, BASE[2:]))
    assert rows_of(lake.read("silver.orders"), "order_id") == [(1,), (2,), (3,), (4,)]
    result = lake.write("silver.orders", orders(spark, BASE[:1]), mode="overwrite")
    assert result.version == 2
    assert rows_of(lake.read("silver.orders"), "order_id") == [(1,)]


def test_replace_where_overwrites_only_the_named_partition(spark, lake):
    lake.write("silver.orders", orders(spark, BASE), partition_by=["order_date"])
    new_d1 = [(10, "eve", 5.0, D1)]
    lake.write("silver.orders", orders(spark, new_d1), mode="overwrite", replace_where={"order_date": D1})
    assert rows_of(lake.read("silver.orders"), "order_id", "order_date") == [(3, D2), (4, D3), (10, D1)]


def test_replace_where_refuses_rows_outside_the_partition_and_keeps_the_table(spark, lake):
    lake.write("silver.orders", orders(spark, BASE), partition_by=["order_date"])
    with pytest.raises(
        ReplaceWhereViolation, match=r"silver.orders: replace_where .* 1 rows fall in partitions"
    ):
        lake.write(
            "silver.orders",
            orders(spark, [(10, "eve", 5.0, D1), (11, "fay", 6.0, D2)]),
            mode="overwrite",
            replace_where={"order_date": D1},
        )
    assert lake.delta_table("silver.orders").version() == 0
    assert rows_of(lake.read("silver.orders"), "order_id") == [(1,), (2,), (3,), (4,)]
    # the refused write's files were removed, not left for readers of the directory
    assert len(stored_files(lake, "silver.orders")) == len(lake.delta_table("silver.orders").file_uris())


def test_read_prunes_files_by_partition_and_filters_rows(spark, lake):
    lake.write("silver.orders", orders(spark, BASE), partition_by=["order_date"])
    df = lake.read("silver.orders", where=[("order_date", "=", D1)])
    assert files_read(lake, lambda: lake.read("silver.orders", where=[("order_date", "=", D1)])) == 1
    assert rows_of(df, "order_id") == [(1,), (2,)]
    assert rows_of(lake.read("silver.orders", where="amount > 25"), "order_id") == [(3,), (4,)]


def test_read_pandas_reads_what_the_log_counts_as_small_without_spark_and_leaves_the_rest_to_it(spark, lake):
    lake.write("silver.orders", orders(spark, BASE), partition_by=["order_date"])
    day = [("order_date", "=", D1)]
    small = lake.read_pandas("silver.orders", where=day, max_rows=2)
    assert sorted(small["order_id"]) == [1, 2] and list(small.columns) == [
        "order_id",
        "customer",
        "amount",
        "order_date",
    ]
    assert set(small["order_date"]) == {D1}
    assert lake.read_pandas("silver.orders", where=day, max_rows=1) is None  # 2 rows in its files
    assert len(lake.read_pandas("silver.orders", max_rows=4)) == 4
    assert lake.read_pandas("silver.orders", max_rows=3) is None
    assert lake.read_pandas("silver.orders", where="amount > 25", max_rows=10) is None  # SQL: Spark's


def test_merge_updates_matched_rows_and_inserts_new_ones(spark, lake):
    lake.write("silver.orders", orders(spark, BASE), partition_by=["order_date"])
    src = orders(spark, [(2, "bob", 99.0, D1), (5, "eli", 50.0, D3)])
    result = lake.merge("silver.orders", src, keys=["order_id", "order_date"])
    assert rows_of(lake.read("silver.orders"), "order_id", "amount") == [
        (1, 10.0),
        (2, 99.0),
        (3, 30.0),
        (4, 40.0),
        (5, 50.0),
    ]
    # only the partitions of the source (D1, D3) were rewritten; D2's file is untouched
    assert result.files_removed == 2 and result.rows_removed == 3


def test_merge_ignore_keeps_existing_rows(spark, lake):
    lake.write("silver.orders", orders(spark, BASE))
    lake.merge(
        "silver.orders",
        orders(spark, [(2, "bob", 99.0, D1), (5, "eli", 50.0, D3)]),
        keys=["order_id"],
        when_matched="ignore",
    )
    assert rows_of(lake.read("silver.orders"), "order_id", "amount") == [
        (1, 10.0),
        (2, 20.0),
        (3, 30.0),
        (4, 40.0),
        (5, 50.0),
    ]


def test_merge_refuses_duplicate_source_keys(spark, lake):
    lake.write("silver.orders", orders(spark, BASE))
    with pytest.raises(
        Exception, match=r"silver.orders: merge source has duplicate keys \['order_id'\], e.g. \[\(7,\)\]"
    ):
        lake.merge("silver.orders", orders(spark, [(7, "a", 1.0, D1), (7, "b", 2.0, D1)]), keys=["order_id"])
    assert lake.delta_table("silver.orders").version() == 0


def test_delete_by_predicate_rewrites_only_matching_files(spark, lake):
    lake.write("silver.orders", orders(spark, BASE), partition_by=["order_date"])
    result = lake.delete("silver.orders", "customer = 'bob'")
    assert rows_of(lake.read("silver.orders"), "order_id") == [(1,), (3,), (4,)]
    # D1's file (ann, bob) was rewritten without bob; D2 and D3 were not touched
    assert (result.files_removed, result.rows_removed, result.rows_written) == (1, 2, 1)
    noop = lake.delete("silver.orders", "customer = 'nobody'")
    assert noop.version == result.version  # nothing matched: no commit


def test_same_app_transaction_is_applied_once(spark, lake):
    batch = orders(spark, BASE[:2])
    first = lake.write("bronze.orders", batch, txn=("ingest:orders", 7))
    again = lake.write("bronze.orders", batch, txn=("ingest:orders", 7))
    older = lake.write("bronze.orders", batch, txn=("ingest:orders", 6))
    assert not first.skipped and again.skipped and older.skipped
    assert lake.read("bronze.orders").count() == 2
    lake.write("bronze.orders", batch, txn=("ingest:orders", 8))
    assert lake.read("bronze.orders").count() == 4
    assert lake.delta_table("bronze.orders").transaction_version("ingest:orders") == 8


def test_time_travel_by_version_and_timestamp(spark, lake):
    # S3 states a commit's time (its log object's Last-Modified) to the second.
    gap = 1.1 if lake.root.startswith("s3://") else 0
    lake.write("gold.scores", orders(spark, BASE))
    time.sleep(gap)
    v0_time = dt.datetime.now(dt.UTC)
    time.sleep(gap)
    lake.write("gold.scores", orders(spark, BASE[:1]), mode="overwrite")
    assert lake.read("gold.scores").count() == 1
    assert lake.read("gold.scores", version=0).count() == 4
    assert lake.read("gold.scores", as_of=v0_time).count() == 4


def test_history_carries_run_metadata(spark, lake):
    run = RunContext(
        dag_id="nightly",
        run_id="scheduled__2024-03-01",
        task_id="ingest",
        logical_date="2024-03-01T00:00:00+00:00",
        code_version="0.1.0+abc",
    )
    lake.write("silver.orders", orders(spark, BASE), run=run)
    commit = lake.history("silver.orders")[0]
    assert commit["p13n.dag_id"] == "nightly"
    assert commit["p13n.run_id"] == "scheduled__2024-03-01"
    assert commit["p13n.logical_date"] == "2024-03-01T00:00:00+00:00"
    assert commit["p13n.code_version"] == "0.1.0+abc"


def test_schema_mismatch_names_table_and_columns(spark, lake):
    lake.write("silver.orders", orders(spark, BASE))
    wrong = spark.createDataFrame(
        [(1, "ann", "ten", D1, "x")],
        "order_id long, customer string, amount string, order_date date, note string",
    )
    with pytest.raises(SchemaMismatchError) as err:
        lake.write("silver.orders", wrong)
    assert str(err.value) == (
        "silver.orders: schema mismatch: unexpected columns ['note']; "
        "type changes ['amount (double in the table, string in the data)']"
    )
    missing = spark.createDataFrame([(1, "ann")], "order_id long, customer string")
    with pytest.raises(SchemaMismatchError, match=r"missing columns \['amount', 'order_date'\]"):
        lake.write("silver.orders", missing)


def test_add_columns_mode_evolves_the_schema(spark, lake):
    lake.write("silver.orders", orders(spark, BASE[:1]))
    more = spark.createDataFrame([(9, "zed", 1.0, D2, "vip")], ORDER_SCHEMA + ", note string")
    lake.write("silver.orders", more, schema_mode="add_columns")
    assert rows_of(lake.read("silver.orders"), "order_id", "note") == [(1, None), (9, "vip")]


def test_concurrent_merges_one_fails_cleanly_and_a_retry_loses_nothing(spark, lake, monkeypatch):
    lake.write("silver.orders", orders(spark, BASE))
    original = Lake._write_files
    calls = []

    def interleaved(self, *args, **kwargs):
        # Writer A has read the table and written its files; writer B now commits first.
        files = original(self, *args, **kwargs)
        if not calls:
            calls.append("B")
            monkeypatch.setattr(Lake, "_write_files", original)
            lake.merge("silver.orders", orders(spark, [(2, "bob", 222.0, D1)]), keys=["order_id"])
        return files

    monkeypatch.setattr(Lake, "_write_files", interleaved)
    a_update = orders(spark, [(3, "cy", 333.0, D2)])
    with pytest.raises(
        ConcurrentWriteError, match="silver.orders: a concurrent commit conflicts with this merge"
    ):
        lake.merge("silver.orders", a_update, keys=["order_id"])
    assert lake.delta_table("silver.orders").version() == 1  # only B's commit
    lake.merge("silver.orders", a_update, keys=["order_id"])  # the retry
    assert rows_of(lake.read("silver.orders"), "order_id", "amount") == [
        (1, 10.0),
        (2, 222.0),
        (3, 333.0),
        (4, 40.0),
    ]


def test_concurrent_appends_both_land(spark, lake, monkeypatch):
    lake.write("bronze.orders", orders(spark, BASE[:1]))
    original = Lake._write_files

    def interleaved(self, *args, **kwargs):
        files = original(self, *args, **kwargs)
        monkeypatch.setattr(Lake, "_write_files", original)
        lake.write("bronze.orders", orders(spark, BASE[1:2]))
        return files

    monkeypatch.setattr(Lake, "_write_files", interleaved)
    lake.write("bronze.orders", orders(spark, BASE[2:]))
    assert rows_of(lake.read("bronze.orders"), "order_id") == [(1,), (2,), (3,), (4,)]


KILLED_WRITER = textwrap.dedent("""
    import sys
    from p13n.config import get_settings
    from p13n.spark import get_spark
    from p13n.lake import Lake
    spark = get_spark(get_settings())
    lake = Lake(spark, get_settings().lake, sys.argv[1])  # storage options from P13N__LAKE__...
    schema = "order_id long, customer string, amount double, order_date date"
    df = spark.createDataFrame([(100, "killed", 1.0, None)], schema)
    lake.write("silver.orders", df)
    print("committed")
""")


def test_writer_killed_before_commit_leaves_previous_version_and_vacuum_cleans(spark, lake):
    lake.write("silver.orders", orders(spark, BASE))
    env = {**os.environ, "P13N_FAULTS": "lake.before_commit"}
    for key, value in (lake.storage_options or {}).items():
        env[f"P13N__LAKE__STORAGE_OPTIONS__{key}"] = value
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, lake.root], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 137, proc.stderr[-2000:]
    assert "committed" not in proc.stdout

    committed = set(lake.delta_table("silver.orders").file_uris())
    on_disk = stored_files(lake, "silver.orders")
    assert len(on_disk) == len(committed) + 1  # the killed write's file is there, but invisible
    assert lake.delta_table("silver.orders").version() == 0
    assert rows_of(lake.read("silver.orders"), "order_id") == [(1,), (2,), (3,), (4,)]

    removed = lake.vacuum("silver.orders", retention_hours=0)
    assert len(removed) == 1
    assert len(stored_files(lake, "silver.orders")) == len(committed)
    assert set(lake.delta_table("silver.orders").file_uris()) == committed
    assert rows_of(lake.read("silver.orders"), "order_id") == [(1,), (2,), (3,), (4,)]


def test_optimize_compacts_small_files_without_changing_content(spark, lake):
    for row in BASE:
        lake.write("silver.orders", orders(spark, [row]))
    before = lake.info("silver.orders")
    lake.optimize("silver.orders")
    after = lake.info("silver.orders")
    assert (before.files, after.files, after.rows) == (4, 1, 4)
    assert rows_of(lake.read("silver.orders")) == sorted(BASE)


def test_tables_lists_every_layer(spark, lake):
    lake.write("bronze.a", orders(spark, BASE[:1]))
    lake.write("gold.b", orders(spark, BASE[:1]))
    assert lake.tables() == ["bronze.a", "gold.b"]
    assert lake.tables("gold") == ["gold.b"]


def test_bad_names_and_missing_tables_say_what_is_wrong(spark, lake):
    with pytest.raises(ValueError, match="table name 'orders' must be <layer>.<name>"):
        lake.uri("orders")
    with pytest.raises(TableNotFoundError, match="silver.nothing: no Delta table at"):
        lake.read("silver.nothing")


def test_stats_let_readers_skip_files(spark, lake):
    lake.write("silver.orders", orders(spark, BASE[:2]).coalesce(1))
    lake.write("silver.orders", orders(spark, BASE[2:]).coalesce(1))
    adds = pa.table(lake.delta_table("silver.orders").get_add_actions(flatten=True)).to_pydict()
    assert sorted(
        zip(
            adds["min.order_id"],
            adds["max.order_id"],
            adds["num_records"],
            adds["min.order_date"],
            adds["max.order_date"],
            strict=True,
        )
    ) == [(1, 2, 2, D1, D1), (3, 4, 2, D2, D3)]
    assert files_read(lake, lambda: lake.read("silver.orders", where="order_id >= 3")) == 1


def test_tables_written_by_other_tools_outside_a_hive_layout_are_read_too(spark, lake):
    """A partitioned table whose files do not sit in `col=value/` folders (other writers may do that)."""
    import pyarrow.parquet as pq
    from deltalake import Schema
    from deltalake.transaction import AddAction, create_table_with_add_actions

    fs, root = lake._fs("silver.foreign")
    fs.create_dir(f"{root}/data", recursive=True)
    actions = []
    for day, ids in ((D1, [1, 2]), (D2, [3])):
        path = f"{root}/data/{day}.parquet"
        pq.write_table(pa.table({"id": pa.array(ids, pa.int64())}), path, filesystem=fs)
        actions.append(
            AddAction(
                f"data/{day}.parquet",
                fs.get_file_info(path).size,
                {"day": str(day)},
                0,
                True,
                json.dumps({"numRecords": len(ids)}),
            )
        )
    schema = Schema.from_arrow(pa.schema([("id", pa.int64()), ("day", pa.date32())]))
    create_table_with_add_actions(
        lake.uri("silver.foreign"),
        schema,
        actions,
        partition_by=["day"],
        storage_options=lake.storage_options,
    )
    assert rows_of(lake.read("silver.foreign"), "id", "day") == [(1, D1), (2, D1), (3, D2)]
    assert rows_of(lake.read("silver.foreign", where=[("day", "=", D2)]), "id") == [(3,)]


def test_replace_partition_is_the_idempotent_interval_write(spark, lake):
    day1 = orders(spark, BASE[:2])
    for _ in range(2):  # a rerun of the same interval
        lake.replace_partition("gold.daily", day1, "order_date", D1)
    lake.replace_partition("gold.daily", orders(spark, BASE[2:3]), "order_date", D2)
    assert rows_of(lake.read("gold.daily"), "order_id", "order_date") == [(1, D1), (2, D1), (3, D2)]
    assert lake.info("gold.daily").partition_by == ["order_date"]


def test_the_content_key_sees_the_rows_not_the_versions_or_files_they_are_in(spark, lake):
    """What a model run's rerun key is made of: a rerun rewriting a partition with the same rows and
    a compaction make new versions of the same content; a changed count, range or null does not."""
    lake.replace_partition("gold.daily", orders(spark, BASE[:2]), "order_date", D1)
    lake.replace_partition("gold.daily", orders(spark, BASE[2:3]), "order_date", D2)
    first = lake.content_key("gold.daily")
    lake.replace_partition("gold.daily", orders(spark, BASE[1::-1]), "order_date", D1)  # the rerun
    assert lake.content_key("gold.daily") == first
    lake.replace_partition("gold.daily", orders(spark, BASE[:1]), "order_date", D1)
    lake.write("gold.daily", orders(spark, BASE[1:2]))  # the same rows in two files
    assert (lake.info("gold.daily").files, lake.content_key("gold.daily")) == (3, first)
    lake.optimize("gold.daily")
    assert (lake.info("gold.daily").files, lake.delta_table("gold.daily").version()) == (2, 5)
    assert lake.content_key("gold.daily") == first
    assert lake.content_key("gold.daily", version=1) == first
    for changed in (
        [(1, "ann", 10.0, D1), (2, "bob", 25.0, D1)],  # a maximum
        [(1, "ann", 10.0, D1), (2, "bob", 20.0, D1), (5, "bo", 15.0, D1)],  # a count
        [(1, "ann", 10.0, D1), (2, None, 20.0, D1)],  # a null
    ):
        lake.replace_partition("gold.daily", orders(spark, changed), "order_date", D1)
        assert lake.content_key("gold.daily") != first
    lake.replace_partition("gold.daily", orders(spark, BASE[:2]), "order_date", D1)
    assert lake.content_key("gold.daily") == first


def test_rows_in_hand_replace_their_partition_from_pandas_or_arrow(spark, lake):
    import pandas as pd
    import pyarrow as pa

    frame = pd.DataFrame({"customer_id": ["a", "b"], "as_of_date": [D1, D1], "score": [0.5, 0.25]})
    for _ in range(2):  # idempotent, like replace_partition
        written = lake.replace_partition_rows("gold.scored", frame, "as_of_date", D1)
    assert written.rows_written == 2
    lake.replace_partition_rows(
        "gold.scored", pa.Table.from_pandas(frame.iloc[:1].assign(as_of_date=D2)), "as_of_date", D2
    )
    assert rows_of(lake.read("gold.scored"), "customer_id", "as_of_date", "score") == [
        ("a", D1, 0.5),
        ("a", D2, 0.5),
        ("b", D1, 0.25),
    ]


def test_a_large_partition_is_written_by_every_task_when_not_colocated(spark, lake):
    """The identity graph is one run_date partition of 6.7M rows at 1M customers: co-locating it put
    it in one task. `colocate=False` lets each task write its share, with the same rows."""
    day = orders(spark, [(i, "ann", 1.0, D1) for i in range(20)]).repartition(4)  # 5 rows a task
    lake.replace_partition("gold.together", day, "order_date", D1)
    lake.replace_partition("gold.spread", day, "order_date", D1, colocate=False)
    assert lake.info("gold.together").files == 1 and lake.info("gold.spread").files == 4
    assert rows_of(lake.read("gold.spread"), "order_id") == rows_of(lake.read("gold.together"), "order_id")


def test_duckdb_reads_the_lakes_instants_as_utc_whatever_the_machines_zone():
    code = textwrap.dedent(
        """
        from p13n.lake.duck import duckdb_connection
        con = duckdb_connection()
        print(con.execute("SELECT current_setting('TimeZone'), "
                          "CAST(TIMESTAMPTZ '2024-03-02 10:00:00+00' AS TIMESTAMP)").fetchone())
        """
    )
    env = os.environ | {"TZ": "America/Chicago"}  # an analyst's laptop
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "('UTC', datetime.datetime(2024, 3, 2, 10, 0))"


def test_a_small_write_through_arrow_gives_the_same_table_as_spark_s_writer(spark, lake):
    """`rows_at_most` under `lake.client_write_max_rows` sends the rows back as Arrow and pyarrow
    writes the files: every reader must see the same rows, and the log the same statistics."""
    schema = (
        "id long, n int, amount decimal(12,2), price double, flag boolean, name string, day date, "
        "ts timestamp, local timestamp_ntz, tag string"
    )
    rows = [
        (
            i,
            i * 7 if i % 3 else None,
            Decimal(f"{i}.{i:02d}"),
            i / 4,
            i % 2 == 0,
            f"n{i}" if i % 4 else None,
            D1 + dt.timedelta(days=i % 2),
            dt.datetime(2024, 3, 1, 12, i, 0, 1234 * i),
            dt.datetime(2024, 3, 1, 9, i),
            ["a b", "x/y", None][i % 3],
        )
        for i in range(12)
    ]
    df = spark.createDataFrame(rows, schema)
    by_spark = lake.write("gold.by_spark", df, partition_by=["tag"])
    by_arrow = lake.write("gold.by_arrow", df, partition_by=["tag"], rows_at_most=12)
    assert by_spark.rows_written == by_arrow.rows_written == 12

    def described(name):
        table = lake.delta_table(name)
        adds = pa.table(table.get_add_actions(flatten=True)).to_pylist()
        stats = sorted(
            (
                str(a["partition.tag"]),
                a["num_records"],
                json.dumps(
                    {k: v for k, v in a.items() if k.split(".")[0] in ("min", "max", "null_count")},
                    default=str,
                    sort_keys=True,
                ),
            )
            for a in adds
        )
        content = sorted(map(repr, table.to_pyarrow_table().to_pylist()))
        return table.schema().to_arrow(), stats, content

    assert described("gold.by_arrow") == described("gold.by_spark")
    assert sorted(map(tuple, lake.read("gold.by_arrow").collect())) == sorted(map(tuple, df.collect()))
    con = duck(lake)
    assert sorted(con.sql(f"select * from delta_scan('{lake.uri('gold.by_arrow')}')").fetchall()) == sorted(
        con.sql(f"select * from delta_scan('{lake.uri('gold.by_spark')}')").fetchall()
    )


def test_files_a_failed_task_attempt_left_in_staging_are_not_committed(spark, lake, monkeypatch):
    """With the executors writing through pyarrow, a task retried after writing some files leaves
    them in the staging folder; only the files of the attempts that succeeded reach the table."""
    import pyarrow.parquet as pq

    import p13n.lake.core as core

    arrow_lake = (
        lake
        if lake.arrow_io
        else Lake(spark, lake.settings.model_copy(update={"spark_io": "arrow"}), lake.root)
    )
    original = core.collect_staged_files

    def with_a_leftover(fs, staging, *args, **kwargs):
        stray = pa.table({"order_id": [99], "customer": ["ghost"], "amount": [9.0]})
        fs.create_dir(f"{staging}/order_date=2024-03-01", recursive=True)
        pq.write_table(stray, f"{staging}/order_date=2024-03-01/part-failed-attempt.parquet", filesystem=fs)
        return original(fs, staging, *args, **kwargs)

    monkeypatch.setattr(core, "collect_staged_files", with_a_leftover)
    result = arrow_lake.write("silver.orders", orders(spark, BASE), partition_by=["order_date"])
    assert result.rows_written == 4
    assert rows_of(arrow_lake.read("silver.orders"), "order_id") == [(1,), (2,), (3,), (4,)]
    assert not [p for p in stored_files(arrow_lake, "silver.orders") if "failed-attempt" in p]
