"""`p13n bench customers`: customer intelligence and recommendations at 100k customers, with quality.

Generates the retailer (default 100,000 customers, one day after a year of purchase history),
ingests every source the step reads into a scratch lake (no expectations: not what is measured),
resolves identities, then runs features, churn, CLV, segments and recommendations as the DAGs do. Reports each
stage's seconds, the churn model's ROC-AUC/PR-AUC, the CLV holdout errors, the clusters chosen (their
personas are printed), the send-time accuracy against the generated favourite hours, and peak memory.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
import time
from pathlib import Path

DEFAULT_CUSTOMERS = 100_000
HISTORY_DAYS = 365


def bench_customers(rows: int | None = None, reps: int = 1, keep: bool = False) -> dict:
    from p13n.bench.memory import PeakMemory
    from p13n.config import get_settings
    from p13n.customers import pipeline
    from p13n.customers.tasks import person_traits
    from p13n.generate.retail import generate
    from p13n.identity.pipeline import resolve_identities
    from p13n.identity.tasks import load_truth
    from p13n.lake import Lake
    from p13n.recommend import pipeline as recommend
    from p13n.recommend.tasks import evaluation_table
    from p13n.services.kafka import EmbeddedBroker
    from p13n.sources.catalog import catalog
    from p13n.sources.ingest import ingest_batch
    from p13n.sources.simulate import load_warehouse, replay_topics
    from p13n.spark import get_spark

    customers = rows or DEFAULT_CUSTOMERS
    base = get_settings()
    base.data_dir.mkdir(parents=True, exist_ok=True)
    work = tempfile.mkdtemp(prefix="bench-customers-", dir=base.data_dir)
    settings = base.model_copy(update={"data_dir": Path(work)})
    day = dt.date(2024, 3, 1)
    figures: dict = {"customers_generated": customers, "history_days": HISTORY_DAYS}
    needed = set(settings.identity.sources) | {"wishlists", "inventory_snapshots"}
    needed |= {t.split(".", 1)[1] for t in pipeline.INPUTS.values() if t.startswith("silver.")}

    def stage(name: str, fn):
        t = time.perf_counter()
        out = fn()
        figures[f"{name}_s"] = round(time.perf_counter() - t, 1)
        print(f"{name}: {figures[f'{name}_s']} s", flush=True)
        return out

    try:
        with PeakMemory() as memory:
            stats = stage(
                "generate",
                lambda: generate(
                    catalog(), settings.data_dir, customers, 1, seed=42, start=day, history_days=HISTORY_DAYS
                ),
            )
            figures["records"] = stats["records"]
            load_warehouse(settings, catalog())
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
                stage(
                    "ingest",
                    lambda: [
                        ingest_batch(lake, settings, catalog(), catalog()[n], day, b"bench")
                        for n in sorted(needed)
                    ],
                )
            finally:
                broker.stop()
            stage(
                "identity",
                lambda: resolve_identities(lake, settings, day, b"bench", truth=load_truth(settings)),
            )
            activity = pipeline.read_activity(lake)
            built = stage("features", lambda: pipeline.build_customer_features(lake, activity, day))
            figures |= {f"features_{k}": v for k, v in built.items()}
            churn = stage("churn", lambda: pipeline.score_churn(lake, settings, activity, day))
            clv = stage("clv", lambda: pipeline.score_clv(lake, settings, activity, day))
            truth = person_traits(settings, lake)
            seg = stage(
                "segments", lambda: pipeline.segment_customers(lake, settings, activity, day, truth=truth)
            )
            data = stage("recommend_read", lambda: recommend.read_data(lake, settings, day))
            stage("interactions", lambda: recommend.build_interactions(lake, data, settings, day))
            rec, recipe, table = stage(
                "recommend_train", lambda: recommend.train_recommender(lake, settings, data, day)
            )
            listed = stage(
                "recommend_lists", lambda: recommend.build_lists(lake, settings, data, recipe, day)
            )
        print(evaluation_table(table, settings.recommend.k), flush=True)
        figures |= {f"recommend_{m}_{k}": v for m, row in table.items() for k, v in row.items()}
        figures |= {f"recommend_{k}": v for k, v in rec.metrics.items()}
        figures |= {f"lists_{k}": v for k, v in listed.items() if isinstance(v, int | float)}
        for prefix, run in (("churn", churn), ("clv", clv), ("segments", seg)):
            figures |= {f"{prefix}_{k}": v for k, v in run.metrics.items() if isinstance(v, int | float)}
        figures["peak_rss_mb"] = memory.peak_rss_sum_mb
        figures["peak_pss_mb"] = memory.peak_mb
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return figures
