"""`p13n bench ingest`: the full source set at 100k customers through bronze, silver and quarantine.

Generates the retailer (default 100,000 customers, 2 days: the first day carries every customer's
initial records in CRM, loyalty, consent and the e-commerce platform), then ingests every source's
batches exactly as the DAG does (readers, standardization, quarantine, Great Expectations, merges),
and reports rows per second over the ingestion alone, plus the peak memory of the whole process tree.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
import time
from pathlib import Path

DEFAULT_CUSTOMERS = 100_000


def bench_ingest(rows: int | None = None, reps: int = 1, days: int = 2) -> dict:
    from p13n.bench.memory import PeakMemory
    from p13n.config import get_settings
    from p13n.generate.retail import generate
    from p13n.lake import Lake
    from p13n.services.kafka import EmbeddedBroker
    from p13n.sources.catalog import catalog
    from p13n.sources.expectations import Validator
    from p13n.sources.ingest import ingest_batch
    from p13n.sources.simulate import load_warehouse, replay_topics
    from p13n.spark import get_spark

    customers = rows or DEFAULT_CUSTOMERS
    base = get_settings()
    base.data_dir.mkdir(parents=True, exist_ok=True)
    work = tempfile.mkdtemp(prefix="bench-ingest-", dir=base.data_dir)
    settings = base.model_copy(update={"data_dir": Path(work)})
    start = dt.date(2024, 3, 1)
    try:
        with PeakMemory() as memory:
            t0 = time.perf_counter()
            stats = generate(
                catalog(), settings.data_dir, customers, days, seed=42, start=start, bad_rate=0.005
            )
            load_warehouse(settings, catalog())
            generate_s = time.perf_counter() - t0
            broker = EmbeddedBroker().start()
            try:
                settings = settings.model_copy(
                    update={
                        "sources": settings.sources.model_copy(update={"kafka_bootstrap": broker.bootstrap})
                    }
                )
                replay_topics(settings, catalog(), broker.bootstrap)
                spark = get_spark(settings)
                lake = Lake(spark, settings.lake, settings.lake_root)
                validate = Validator(settings)
                t1 = time.perf_counter()
                read = promoted = quarantined = 0
                for d in range(days):
                    for source in catalog():
                        r = ingest_batch(
                            lake,
                            settings,
                            catalog(),
                            source,
                            start + dt.timedelta(days=d),
                            b"bench",
                            validate=validate,
                        )
                        read, promoted, quarantined = (
                            read + r.bronze_rows,
                            promoted + r.silver_rows,
                            quarantined + r.quarantined,
                        )
                ingest_s = time.perf_counter() - t1
            finally:
                broker.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "ingest_customers": customers,
        "ingest_days": days,
        "ingest_sources": len(catalog().sources),
        "ingest_rows": read,
        "ingest_rows_promoted": promoted,
        "ingest_rows_quarantined": quarantined,
        "generate_records": stats["records"],
        "generate_s": generate_s,
        "ingest_s": ingest_s,
        "ingest_rows_per_s": read / ingest_s,
        "peak_rss_mb": memory.peak_rss_sum_mb,
        "peak_pss_mb": memory.peak_mb,
    }
