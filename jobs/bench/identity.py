"""`p13n bench identity`: the matcher at 100k customers, with its quality against the ground truth.

Generates the retailer (default 100,000 customers, 2 days), ingests the customer-bearing sources
into a scratch lake (no expectations: they are not what is measured), then resolves day 1 and day 2
as the nightly DAG does. Reports records per second of resolution, precision, recall and F1 of both
days, how many day-1 records kept their customer id on day 2 (the stability of the ids), and
`identity_vs_splink_ratio`: Splink's own training and scoring time ÷ the matcher's (records in,
clusters out) on the same profiles.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
import time
from pathlib import Path

DEFAULT_CUSTOMERS = 100_000
MATCH_STAGES = ("profiles_s", "train_s", "score_s", "cluster_s")  # resolve_records, records to clusters


def bench_identity(rows: int | None = None, reps: int = 1, days: int = 2, keep: bool = False) -> dict:
    from pyspark.sql import functions as F

    from p13n.bench.memory import PeakMemory
    from p13n.config import get_settings
    from p13n.generate.retail import generate
    from p13n.identity.pipeline import resolve_identities
    from p13n.identity.tasks import load_truth
    from p13n.lake import Lake
    from p13n.lake.tables import GOLD_IDENTITY_GRAPH
    from p13n.sources.catalog import catalog
    from p13n.sources.ingest import ingest_batch
    from p13n.sources.simulate import load_warehouse
    from p13n.spark import get_spark

    customers = rows or DEFAULT_CUSTOMERS
    base = get_settings()
    base.data_dir.mkdir(parents=True, exist_ok=True)
    work = tempfile.mkdtemp(prefix="bench-identity-", dir=base.data_dir)
    settings = base.model_copy(update={"data_dir": Path(work)})
    start = dt.date(2024, 3, 1)
    figures: dict = {"identity_customers": customers}
    try:
        with PeakMemory() as memory:
            generate(catalog(), settings.data_dir, customers, days, seed=42, start=start, bad_rate=0.005)
            load_warehouse(settings, catalog())
            spark = get_spark(settings)
            lake = Lake(spark, settings.lake, settings.lake_root)
            truth = load_truth(settings)
            figures["identity_ingest_s"] = 0.0
            for d in range(days):  # each night: that day's batches, then resolution
                day = start + dt.timedelta(days=d)
                t0 = time.perf_counter()
                for name in settings.identity.sources:
                    ingest_batch(lake, settings, catalog(), catalog()[name], day, b"bench")
                figures["identity_ingest_s"] += time.perf_counter() - t0
                t1 = time.perf_counter()
                out = resolve_identities(lake, settings, day, b"bench", truth=truth)
                elapsed = time.perf_counter() - t1
                print(out.summary(), flush=True)
                tag = f"day{d + 1}"
                figures[f"identity_{tag}_records"] = out.counts["records"]
                figures[f"identity_{tag}_s"] = elapsed
                figures[f"identity_{tag}_records_per_s"] = out.counts["records"] / elapsed
                for k in ("precision", "recall", "f1", "persons_exact_share"):
                    figures[f"identity_{tag}_{k}"] = out.metrics[k]
                figures[f"identity_{tag}_changes"] = sum(
                    v for k, v in out.changes.items() if k != "new" or d == 0
                )
                figures[f"identity_{tag}_match_s"] = sum(out.timings[k] for k in MATCH_STAGES)
                figures[f"identity_{tag}_splink_s"] = out.timings["splink_s"]
            first = lake.read(GOLD_IDENTITY_GRAPH, where=[("run_date", "=", start)]).select(
                "record_key", "customer_id"
            )
            last = lake.read(
                GOLD_IDENTITY_GRAPH, where=[("run_date", "=", start + dt.timedelta(days=days - 1))]
            ).select("record_key", F.col("customer_id").alias("customer_id_later"))
            joined = first.join(last, on="record_key", how="inner")
            same = joined.filter("customer_id = customer_id_later").count()
            figures["identity_ids_kept_share"] = same / max(joined.count(), 1)
        figures["identity_records_per_s"] = figures[f"identity_day{days}_records_per_s"]
        figures["identity_f1"] = figures[f"identity_day{days}_f1"]
        # Splink's training and scoring ÷ the whole matcher (records in, clusters out) on the same
        # profiles: 1.0 would mean the work around Splink costs nothing
        figures["identity_vs_splink_ratio"] = round(
            figures[f"identity_day{days}_splink_s"] / max(figures[f"identity_day{days}_match_s"], 1e-9), 3
        )
        figures["peak_rss_mb"] = memory.peak_rss_sum_mb
        figures["peak_pss_mb"] = memory.peak_mb
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return figures
