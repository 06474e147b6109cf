"""Peak memory of this process and all its children (the Spark JVM, Python workers, brokers).

Two sums: RSS, what each process has resident, and PSS, where a page shared by several processes
counts a share in each, so the sum is the memory the tree really holds. They differ for forked
processes: Airflow's executor and task processes, and a JVM forking to start a Python worker, whose
child carries the JVM's whole RSS for the moment before it runs Python (seen at 100k customers: a
16.7 GB "JVM" in the RSS sum, an 8.4 GB server twice).
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import psutil


def tree_rss_bytes(pid: int | None = None) -> int:
    """Summed RSS of a process (this one by default) and its descendants; 0 when it is gone."""
    total = 0
    for proc in _tree(pid):
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


def _tree(pid: int | None) -> list[psutil.Process]:
    """A process and its descendants; empty when it is gone."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_memory_by_process(pid: int | None = None, pss: bool = True) -> dict[str, tuple[int, int]]:
    """(RSS, PSS) of a process (this one by default) and its descendants, summed by what each one is
    (`process_label`); empty when it is gone. PSS is 0 when not asked for or not readable."""
    out: dict[str, tuple[int, int]] = {}
    for proc in _tree(pid):
        with contextlib.suppress(psutil.Error):
            mem = proc.memory_full_info() if pss else proc.memory_info()
            label = process_label(proc.name(), proc.cmdline())
            rss, shared = out.get(label, (0, 0))
            out[label] = (rss + mem.rss, shared + getattr(mem, "pss", 0))
    return out


_AIRFLOW_PARTS = ("scheduler", "dag-processor", "triggerer", "api_server", "api-server", "serve-logs")
_SERVICES = {"redis": "Redis", "tansu": "Kafka broker (Tansu)", "postgres": "PostgreSQL"}


def process_label(name: str, cmdline: list[str]) -> str:
    """What a process of the nightly is, for a memory breakdown: the Spark Connect server, Spark's
    Python workers, Airflow's task processes or one of its components, Redis, ..."""
    line = " ".join(cmdline)
    if name == "java" or (cmdline and Path(cmdline[0]).name == "java"):
        return "Spark Connect server (JVM)" if "SparkConnectServer" in line else "other JVMs"
    if "pyspark.daemon" in line or "pyspark.worker" in line:
        return "Spark Python workers"
    # Airflow 3 titles a task's process `airflow worker -- <ti id>` and its parent `airflow supervisor:`
    if line.startswith("airflow worker -- ") and "Executor" not in line:
        return "Airflow task processes"
    if line.startswith("airflow supervisor:"):
        return "Airflow task supervisors"
    if "airflow" in line:
        part = next((p for p in _AIRFLOW_PARTS if p in line), None)
        return f"Airflow {part.replace('_', '-')}" if part else "Airflow (executor and other processes)"
    for key, label in _SERVICES.items():
        if key in name:
            return label
    if "p13n" in line:
        return "p13n (the run's own process)"
    return name


class PeakMemory:
    """Samples the process tree's memory in a background thread; use as a context manager.
    `peak_bytes`: the largest PSS sum (shared pages counted once), with `peak_by_process` its
    breakdown; `peak_rss_sum_bytes`: the largest RSS sum (what p13n's benches reported before
    2026-12-07, shared pages counted in each process)."""

    def __init__(self, interval: float = 0.25):
        self.interval = interval
        self.peak_bytes = 0
        self.peak_rss_sum_bytes = 0
        self.peak_by_process: dict[str, int] = {}  # the breakdown (PSS) of the peak sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        by_process = tree_memory_by_process()
        self.peak_rss_sum_bytes = max(self.peak_rss_sum_bytes, sum(r for r, _ in by_process.values()))
        total = sum(p for _, p in by_process.values())
        if total > self.peak_bytes:
            self.peak_bytes, self.peak_by_process = total, {k: p for k, (_, p) in by_process.items()}

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def peak_mb(self) -> float:
        """The peak PSS sum in MB."""
        return self.peak_bytes / 1e6

    @property
    def peak_rss_sum_mb(self) -> float:
        return self.peak_rss_sum_bytes / 1e6
