"""`p13n bench lake`: the lake layer's Delta write and read against Spark's native Parquet, same data, same
run.

The DataFrame (default 5M rows: order-like columns) is cached first, so both sides write the same
rows without recomputing them. Each repetition runs the four measurements in alternating order, after
one unmeasured warm-up round (JIT, file system cache); the medians are reported. Reads are forced
through every column with Spark's `noop` sink, so neither side can answer from metadata.
"""

from __future__ import annotations

import shutil
import tempfile

from p13n.config import get_settings

DEFAULT_ROWS = 5_000_000


def _orders(spark, rows: int):
    from pyspark.sql import functions as F

    return spark.range(rows).select(
        F.col("id").alias("order_id"),
        (F.col("id") * 7919 % 2_800_000).alias("customer_id"),
        F.concat(F.lit("SKU-"), (F.col("id") * 31 % 50_000).cast("string")).alias("sku"),
        (F.col("id") % 997 / 10.0).alias("amount"),
        F.expr("timestamp_seconds(1704067200 + id * 6)").alias("ordered_at"),
        F.expr(
            "element_at(array('web', 'app', 'store_square', 'store_legacy'), cast(id % 4 + 1 as int))"
        ).alias("channel"),
    )


def bench_lake(rows: int | None = None, reps: int = 3) -> dict:
    from p13n.bench import median, timed
    from p13n.lake import Lake
    from p13n.spark import get_spark

    rows = rows or DEFAULT_ROWS
    settings = get_settings()
    spark = get_spark(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    work = tempfile.mkdtemp(prefix="bench-lake-", dir=settings.data_dir)
    lake = Lake(spark, settings.lake, f"{work}/lake")
    df = _orders(spark, rows).cache()
    df.count()

    def parquet_write(i):
        df.write.mode("overwrite").parquet(f"{work}/parquet{i}")

    def lake_write(i):
        lake.write(f"bronze.bench{i}", df, mode="overwrite")

    def parquet_read(i):
        spark.read.parquet(f"{work}/parquet{i}").write.format("noop").mode("overwrite").save()

    def lake_read(i):
        lake.read(f"bronze.bench{i}").write.format("noop").mode("overwrite").save()

    times: dict[str, list[float]] = {"pw": [], "lw": [], "pr": [], "lr": []}
    try:
        for i in range(reps + 1):
            pairs = [("pw", parquet_write), ("lw", lake_write)]
            reads = [("pr", parquet_read), ("lr", lake_read)]
            if i % 2:
                pairs.reverse()
                reads.reverse()
            for key, fn in pairs + reads:
                t = timed(lambda fn=fn, i=i: fn(i))
                if i:  # round 0 warms up
                    times[key].append(t)
        written = lake.info(f"bronze.bench{reps}")
    finally:
        df.unpersist()
        shutil.rmtree(work, ignore_errors=True)
    pw, lw, pr, lr = (median(times[k]) for k in ("pw", "lw", "pr", "lr"))
    return {
        "lake_rows": rows,
        "lake_reps": reps,
        "lake_files": written.files,
        "parquet_write_s": pw,
        "lake_write_s": lw,
        "lake_write_ratio": lw / pw,
        "parquet_read_s": pr,
        "lake_read_s": lr,
        "lake_read_ratio": lr / pr,
    }
