"""`bench`: side-by-side benchmarks printing key=value figures."""

from __future__ import annotations

import argparse

from p13n.cli.common import positive_int


def _rows(text: str) -> int:
    """An argparse type: a size from 1 to 10^9 (`1_000_000` allowed)."""
    digits = text.replace("_", "")
    if not (digits.isascii() and digits.isdigit() and 1 <= int(digits[:10]) <= 10**9):
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to 10^9, got {text[:40]!r}")
    return int(digits)


def _cmd_bench(args: argparse.Namespace) -> int:
    from p13n.bench import BENCHMARKS, run_benchmark

    if args.name == "scale":  # opt-in, never part of `all`: hours at 1M customers
        from p13n.bench.scale import bench_scale

        sizes = [int(x.replace("_", "")) for x in args.sizes.split(",")]
        results = bench_scale(sizes, days=args.days)
        return 0 if all(r["succeeded"] for r in results) else 1
    from p13n.bench import OPT_IN

    names = [n for n in BENCHMARKS if n not in OPT_IN] if args.name == "all" else [args.name]
    for name in names:
        run_benchmark(name, rows=args.rows, reps=args.reps)
    return 0


def register(sub) -> None:
    """Add this group's commands to the `p13n` parser."""
    p = sub.add_parser("bench", help="run a benchmark (or all) and print key=value figures")
    p.add_argument(
        "name",
        help="benchmark name, or 'all': lake, ingest, identity, customers, als, serving, streaming, "
        "activation; "
        "or 'orchestration' (the nightly through the scheduler against in-process, --rows customers; not in "
        "'all'); or 'planted' (a lift the generator plants, measured through ingestion, identity and the "
        "global holdout; --reps seeds; not in 'all'); "
        "or 'scale' (the whole nightly at --sizes customers, recorded in docs/scale.md; not in "
        "'all')",
    )
    p.add_argument("--sizes", default="100000,1000000", help="scale: customer counts, comma-separated")
    p.add_argument(
        "--days", type=int, default=2, help="scale: days of data (the nightly measured is the last)"
    )
    p.add_argument(
        "--rows",
        type=_rows,
        default=None,
        help="size: rows for lake (default 5M), customers for ingest and identity (default 100k)",
    )
    p.add_argument("--reps", type=positive_int, default=3, help="repetitions; the median is reported")
    p.set_defaults(handler=_cmd_bench)
