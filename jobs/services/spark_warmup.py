"""Warm a freshly started Spark Connect server before the night's first tasks reach it.

A new server's JVM loads and compiles the classes of ingestion's plans on the first queries it gets:
on `make run`'s first night the first ingestion tasks took 20-27 s where the same sources take 3 s on
the second. `p13n run` runs this in a process of its own while the dataset is generated and Airflow
starts: a few hundred generated customers, one day, ingested for the sources the night starts with,
in a scratch data directory that is deleted afterwards (nothing reaches the real lake).

`python -m p13n.services.spark_warmup DIR` with `P13N__SPARK__REMOTE` naming the server.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

# The night's first tasks, and the three formats most sources come in (API JSON, JSON lines, CSV).
SOURCES = ("shopify_customers", "shopify_orders", "square_transactions")
DAY = dt.date(2024, 3, 1)


def start(remote: str, work: Path, log: Path, env: dict[str, str]) -> subprocess.Popen:
    """The warm-up as a process of its own against `remote`, in `work` (emptied first), output in `log`."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, mode=0o700)
    child = {**env, "P13N_DATA_DIR": str(work), "P13N__SPARK__REMOTE": remote}
    child.pop("P13N_PII_KEY", None)  # scratch data: a scratch key
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "p13n.services.spark_warmup", str(work)],
            env=child,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def finish(proc: subprocess.Popen, work: Path, timeout: float = 120.0) -> str:
    """Wait for the warm-up (stopped past `timeout`: it only saves time), delete its data; a line to show."""
    t0 = time.monotonic()
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    waited = time.monotonic() - t0
    if code == 0:
        return f"Spark Connect server warmed up (waited {waited:.0f}s for it)"
    how = f"stopped after {timeout:.0f}s" if code is None else f"failed (exit {code})"
    return f"Spark Connect warm-up {how}: the night runs anyway"


def main(work: str) -> int:
    from p13n.config import get_settings
    from p13n.generate.retail import generate
    from p13n.sources.catalog import catalog
    from p13n.sources.tasks import ingest_task

    settings = get_settings()
    if Path(work).resolve() != settings.data_dir.resolve():
        raise SystemExit(f"spark_warmup: P13N_DATA_DIR must be the scratch directory {work}")
    t0 = time.monotonic()
    generate(catalog(), settings.landing_dir.parent, 300, 1, 7, DAY, history_days=30)
    for name in SOURCES:
        t1 = time.monotonic()
        ingest_task(name, DAY.isoformat())
        print(f"  {name}: {time.monotonic() - t1:.1f}s", flush=True)
    print(f"warm-up done in {time.monotonic() - t0:.1f}s (pid {os.getpid()})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
