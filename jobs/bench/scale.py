"""`make bench-scale`: the whole nightly (`p13n run`) at 100k and 1M customers, measured.

Each size runs in its own data directory (`<data_dir>/scale/<customers>/`) as a `p13n run`
subprocess: the dataset is generated, then every DAG runs through Airflow as in `make run`. Recorded
per size: generation time, each DAG's time, the nightly's time (the second night: ingestion and
identity of one day's delta, then scoring, recommendations, publish and exports), peak memory of the
whole process tree (Airflow, the Spark JVM, Python workers, Redis, the broker), and output sizes
(rows and bytes of the gold tables, the whole lake). The figures are appended to
`docs/scale-results.json` and the table in `docs/scale.md` is rewritten from it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from p13n.config import REPO_ROOT, get_settings

RESULTS = REPO_ROOT / "docs" / "scale-results.json"
REPORT = REPO_ROOT / "docs" / "scale.md"
NIGHTLY_DAGS = ("score_customers", "recommend_products", "publish_serving", "export_audiences")
GOLD = (
    "customer_profiles",
    "customer_features",
    "segments",
    "churn_scores",
    "clv",
    "recommendations",
    "item_similarity",
    "identity_graph",
)


def run_size(customers: int, days: int = 2, keep: bool = False, log=print) -> dict:
    """Run the nightly at `customers` and return its figures (also when it fails: `succeeded`)."""
    import shutil

    from p13n.bench.memory import PeakMemory

    base = get_settings().data_dir / "scale" / str(customers)
    if base.exists() and not keep:
        shutil.rmtree(base)
    env = {
        **os.environ,
        "P13N_DATA_DIR": str(base),
        "P13N_ENV": os.environ.get("P13N_ENV", "local"),
        "PYTHONUNBUFFERED": "1",
    }  # progress (generation's too) reaches the log as it happens
    # The Spark driver holds a whole table's partition when it writes the profiles: 4 GB (make run's
    # default) runs out of memory from about 100k customers. This machine has 24 GB.
    env.setdefault("P13N__SPARK__DRIVER_MEMORY", driver_memory(customers))
    out_log = base.parent / f"{customers}.out"
    base.parent.mkdir(parents=True, exist_ok=True)
    log(f"scale {customers:,} customers × {days} days: output in {out_log}")
    t0 = time.monotonic()
    with PeakMemory(interval=1.0) as mem, out_log.open("w") as out:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "p13n"),
                "run",
                "--customers",
                str(customers),
                "--days",
                str(days),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if (
                line.startswith(("DAG ", "  done", "no data yet", "  generated", "  loaded"))
                or "failed" in line
            ):
                log(f"  [{time.monotonic() - t0:7.0f}s] {line.rstrip()}")
        code = proc.wait()
    wall = time.monotonic() - t0
    runs = sorted((base / "logs").glob("run-*.json"))
    record = json.loads(runs[-1].read_text()) if runs else {"stages": [], "generate_seconds": None}
    stages = record["stages"]
    last = record["dates"][-1] if record.get("dates") else None
    nightly = sum(
        s["seconds"]
        for s in stages
        if s["date"] == last
        and (s["dag"] in NIGHTLY_DAGS or s["dag"] in ("ingest_sources", "resolve_identities"))
    )
    figures = {
        "customers": customers,
        "days": days,
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "commit": _commit(),
        "succeeded": code == 0,
        "wall_seconds": round(wall, 1),
        "generate_seconds": record.get("generate_seconds"),
        "nightly_seconds": round(nightly, 1),
        "stages": stages,
        # the RSS sum (every earlier measurement's figure) and the PSS sum (shared pages counted once:
        # the memory the tree really held), with what held the latter, by kind of process
        "peak_memory_gb": round(mem.peak_rss_sum_bytes / 2**30, 2),
        "peak_pss_gb": round(mem.peak_bytes / 2**30, 2),
        "peak_memory_by_process_gb": {
            label: round(held / 2**30, 2)
            for label, held in sorted(mem.peak_by_process.items(), key=lambda kv: -kv[1])
            if held >= 2**27
        },
        "outputs": _outputs(base / "lake", last),
    }
    if not keep and code == 0:
        shutil.rmtree(base / "landing", ignore_errors=True)  # the bulk of the disk; the lake stays for a look
    return figures


def _commit() -> str | None:
    """The short commit the measurement ran on (None outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def driver_memory(customers: int) -> str:
    # Not more at 1M: the JVM keeps the heap it grew, and identity resolution (pandas, DuckDB) needs
    # the rest of the 24 GB in the same DAG process.
    return "4g" if customers < 50_000 else ("10g" if customers < 500_000 else "12g")


def _outputs(lake: Path, day: str | None) -> dict:
    from p13n.lake.duck import duckdb_connection, scan, table_exists

    sizes = {
        "lake_gb": round(sum(f.stat().st_size for f in lake.rglob("*") if f.is_file()) / 2**30, 3)
        if lake.exists()
        else 0
    }
    con = duckdb_connection()
    for name in GOLD:
        table = f"gold.{name}"
        if table_exists(str(lake), table):
            sizes[f"{table} rows"] = con.execute(f"SELECT count(*) FROM {scan(str(lake), table)}").fetchone()[
                0
            ]
            path = lake / "gold" / name
            sizes[f"{table} MB"] = round(sum(f.stat().st_size for f in path.rglob("*.parquet")) / 2**20, 1)
    return sizes


def bench_scale(sizes: list[int], days: int = 2, log=print) -> list[dict]:
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    out = []
    for n in sizes:
        figures = run_size(n, days, log=log)
        out.append(figures)
        results.append(figures)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        write_report(results)
        for key in (
            "customers",
            "succeeded",
            "wall_seconds",
            "generate_seconds",
            "nightly_seconds",
            "peak_memory_gb",
            "peak_pss_gb",
        ):
            print(f"scale_{n}_{key}={figures[key]}", flush=True)
        if not figures["succeeded"]:
            log(
                f"the {n:,} run failed: see {get_settings().data_dir / 'scale' / f'{n}.out'}; larger sizes "
                "skipped"
            )
            break
    return out


def write_report(results: list[dict]) -> None:
    """Rewrite the generated table of docs/scale.md (between its markers) from the results file."""
    latest: dict[int, dict] = {}
    earlier: dict[int, list[dict]] = {}
    for r in results:
        if r["customers"] in latest and latest[r["customers"]]["succeeded"]:
            earlier.setdefault(r["customers"], []).append(latest[r["customers"]])
        latest[r["customers"]] = r  # the newest measurement of each size
    dags = []
    for r in latest.values():
        for s in r["stages"]:
            if s["dag"] not in dags:
                dags.append(s["dag"])
    head = ["", *(f"{n:,} customers" for n in sorted(latest))]
    rows = [
        ["measured", *(latest[n]["measured_at"][:10] for n in sorted(latest))],
        ["succeeded", *("yes" if latest[n]["succeeded"] else "**no**" for n in sorted(latest))],
        [
            "nights run (the last one is the nightly measured)",
            *(str(latest[n]["days"]) for n in sorted(latest)),
        ],
        ["generate the dataset (s)", *(_num(latest[n]["generate_seconds"]) for n in sorted(latest))],
    ]
    for dag in dags:
        for night in (0, 1):
            vals = []
            for n in sorted(latest):
                dates = sorted({s["date"] for s in latest[n]["stages"]})
                match = [
                    s
                    for s in latest[n]["stages"]
                    if s["dag"] == dag and len(dates) > night and s["date"] == dates[night]
                ]
                vals.append(_num(match[0]["seconds"]) if match else "")
            if any(vals):
                rows.append([f"{dag} (night {night + 1}) (s)", *vals])
    rows.append(
        [
            "**the nightly: the last night, ingestion to exports (s)**",
            *(
                f"**{_num(latest[n]['nightly_seconds'])}**"
                if latest[n]["succeeded"]
                else f"failed after {_num(latest[n]['nightly_seconds'])}"
                for n in sorted(latest)
            ),
        ]
    )
    if earlier:
        rows.append(
            [
                "the nightly, earlier measurements (s)",
                *(
                    "; ".join(
                        f"{_num(r['nightly_seconds'])} ({r.get('commit') or r['measured_at'][:10]})"
                        for r in earlier.get(n, [])
                    )
                    for n in sorted(latest)
                ),
            ]
        )
    rows.append(
        ["wall time of the whole run (s)", *(_num(latest[n]["wall_seconds"]) for n in sorted(latest))]
    )
    rows.append(
        ["peak memory, whole process tree (GB)", *(str(latest[n]["peak_memory_gb"]) for n in sorted(latest))]
    )
    if any(r.get("peak_pss_gb") for r in latest.values()):
        rows.append(
            [
                "peak memory, shared pages counted once (PSS, GB)",
                *(str(latest[n].get("peak_pss_gb", "")) for n in sorted(latest)),
            ]
        )
        rows.append(
            [
                "at that peak, by process (PSS, GB)",
                *(
                    "; ".join(f"{k} {v}" for k, v in latest[n].get("peak_memory_by_process_gb", {}).items())
                    for n in sorted(latest)
                ),
            ]
        )
    if any(r.get("note") for r in latest.values()):  # how a size was measured, when not in one plain run
        rows.append(["how it was measured", *(latest[n].get("note", "") for n in sorted(latest))])
    keys = []
    for r in latest.values():
        keys += [k for k in r["outputs"] if k not in keys]
    for k in keys:
        rows.append([k, *(_num(latest[n]["outputs"].get(k)) for n in sorted(latest))])
    table = "\n".join("| " + " | ".join(map(str, r)) + " |" for r in [head, ["---"] * len(head), *rows])
    start, end = "<!-- scale-table:start -->", "<!-- scale-table:end -->"
    text = REPORT.read_text() if REPORT.exists() else f"# Scale\n\n{start}\n{end}\n"
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1]
    REPORT.write_text(f"{before}{start}\n{table}\n{end}{after}")


def _num(v) -> str:
    if v is None or v == "":
        return ""
    return f"{v:,.0f}" if isinstance(v, int | float) and abs(v) >= 10 else str(v)
