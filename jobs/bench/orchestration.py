"""`p13n bench orchestration`: the nightly through Airflow's scheduler against the in-process path, on
the same generated data, side by side in one run.

One dataset (default 20,000 customers, 2 days) is generated once and copied into two data directories.
Each arm runs `p13n run` there (the scheduler arm, `--scheduler`: scheduler, DAG processor, triggerer and API
server,
a LocalExecutor, tasks as Spark Connect clients; the in-process arm: `p13n run --in-process`, every DAG
through `airflow dags test` in one process), then ingestion alone for a date with no landed files.
Figures: the median duration of an ingestion task on that empty date (a task's fixed cost), each arm's
DAG-run times for the ordinary night (the last date) and the empty date, the whole run, and the machine's
peak used memory during each arm.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

DEFAULT_CUSTOMERS = 20_000
EMPTY_DATE = "2024-03-09"  # no source lands anything that day


def _used_memory_bytes() -> int:
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    kib = int(info["MemTotal"].split()[0]) - int(info["MemAvailable"].split()[0])
    return kib * 1024


class _PeakUsed:
    """The machine's peak used memory (MemTotal - MemAvailable) above what was used at the start:
    the arms' processes are spread over process groups (Airflow's, Spark's), so the machine is counted."""

    def __init__(self, interval: float = 0.5):
        self.base = _used_memory_bytes()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.interval = interval

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _used_memory_bytes() - self.base)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *_exc):
        self._stop.set()
        self._thread.join()


def _p13n(args: list[str], data_dir: Path, log: Path) -> tuple[int, float]:
    env = {**os.environ, "P13N_DATA_DIR": str(data_dir), "P13N_ENV": os.environ.get("P13N_ENV", "local")}
    start = time.monotonic()
    with log.open("a") as out:
        code = subprocess.call(
            [str(Path(sys.executable).parent / "p13n"), *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    return code, time.monotonic() - start


def _last_record(data_dir: Path) -> dict:
    records = sorted((data_dir / "logs").glob("run-*.json"))
    return json.loads(records[-1].read_text()) if records else {}


def _task_seconds(data_dir: Path, dag_id: str, day: str) -> list[float]:
    """Durations of the tasks of `dag_id`'s runs for `day` (by partition key or logical date), from
    Airflow's metadata database (SQLite in both arms)."""
    db = data_dir / "airflow" / "airflow.db"
    con = sqlite3.connect(db)
    try:
        rows = con.execute(
            """SELECT ti.duration FROM task_instance ti JOIN dag_run dr
                 ON dr.dag_id = ti.dag_id AND dr.run_id = ti.run_id
               WHERE ti.dag_id = ? AND ti.state = 'success' AND ti.task_id LIKE 'ingest_%'
                 AND (dr.partition_key = ? OR date(dr.logical_date) = ?)""",
            (dag_id, day, day),
        ).fetchall()
    finally:
        con.close()
    return [r[0] for r in rows if r[0] is not None]


def bench_orchestration(rows: int | None = None, reps: int = 1) -> dict:
    from p13n.config import get_settings
    from p13n.runner import ensure_dataset

    customers = rows or DEFAULT_CUSTOMERS
    base = get_settings()
    base.data_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-orchestration-", dir=base.data_dir))
    figures: dict = {"customers": customers}
    try:
        seed_dir = work / "generated"
        settings = base.model_copy(update={"data_dir": seed_dir})
        t0 = time.monotonic()
        dates = ensure_dataset(settings, customers, 2, 42, echo=lambda m: print(m, flush=True))
        figures["generate_s"] = round(time.monotonic() - t0, 1)
        for arm, flag in (("scheduler", ["--scheduler"]), ("in_process", ["--in-process"])):
            data = work / arm
            shutil.copytree(seed_dir, data, ignore=shutil.ignore_patterns("lake", "airflow", "logs"))
            log = work / f"{arm}.log"
            print(f"{arm}: p13n run {' '.join(flag)} (log {log})", flush=True)
            with _PeakUsed() as memory:
                code, seconds = _p13n(["run", *flag], data, log)
                record = _last_record(data)
                empty_code, empty_s = _p13n(
                    ["run", *flag, "--date", EMPTY_DATE, "--dag", "ingest_sources"], data, log
                )
            stages = record.get("stages", [])
            night = [
                s
                for s in stages
                if s["date"] == dates[-1] and s["dag"] != "stream_events" and s["dag"] != "lake_maintenance"
            ]
            empty = _task_seconds(data, "ingest_sources", EMPTY_DATE)
            figures.update(
                {
                    f"{arm}_succeeded": code == 0 and empty_code == 0,
                    f"{arm}_run_s": round(seconds, 1),
                    f"{arm}_onboarding_night_s": round(
                        sum(s["seconds"] for s in stages if s["date"] == dates[0]), 1
                    ),
                    f"{arm}_ordinary_night_s": round(sum(s["seconds"] for s in night), 1),
                    f"{arm}_empty_day_ingest_s": round(empty_s, 1),
                    f"{arm}_empty_task_median_s": round(statistics.median(empty), 2)
                    if empty
                    else float("nan"),
                    f"{arm}_peak_used_gb": round(memory.peak / 2**30, 2),
                }
            )
            print(json.dumps({k: v for k, v in figures.items() if k.startswith(arm)}), flush=True)
        if figures.get("in_process_ordinary_night_s"):
            figures["ordinary_night_ratio"] = round(
                figures["scheduler_ordinary_night_s"] / figures["in_process_ordinary_night_s"], 2
            )
        return figures
    finally:
        if not os.environ.get("P13N_BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
