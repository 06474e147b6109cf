"""Benchmarks: `p13n bench NAME` prints key=value lines, ratios measured side by side in one run."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from p13n.bench.activation import bench_activation
from p13n.bench.als import bench_als
from p13n.bench.customers import bench_customers
from p13n.bench.experiments import bench_experiments
from p13n.bench.identity import bench_identity
from p13n.bench.identity_real import bench_identity_real
from p13n.bench.ingest import bench_ingest
from p13n.bench.lake import bench_lake
from p13n.bench.orchestration import bench_orchestration
from p13n.bench.planted import bench_planted
from p13n.bench.recs import bench_recs
from p13n.bench.serving import bench_serving
from p13n.bench.streaming import bench_streaming

BENCHMARKS: dict[str, Callable[..., dict]] = {
    "lake": bench_lake,
    "ingest": bench_ingest,
    "identity": bench_identity,
    "identity-real": bench_identity_real,
    "customers": bench_customers,
    "als": bench_als,
    "recs": bench_recs,
    "serving": bench_serving,
    "streaming": bench_streaming,
    "activation": bench_activation,
    "experiments": bench_experiments,
    "orchestration": bench_orchestration,
    "planted": bench_planted,
}
# Not in `p13n bench all`: orchestration runs the whole nightly twice (about 40 minutes at 20k
# customers); planted ingests 15 days per seed (about 5 minutes each).
OPT_IN = {"orchestration", "planted"}


def run_benchmark(name: str, rows: int | None = None, reps: int = 3) -> dict:
    if name not in BENCHMARKS:
        raise SystemExit(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}, all")
    figures = BENCHMARKS[name](rows=rows, reps=reps)
    for key, value in figures.items():
        print(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}", flush=True)
    return figures


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    return statistics.median(values)
