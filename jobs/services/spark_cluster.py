"""A Spark standalone cluster on this machine, from the pyspark wheel's own launcher: a master and
workers, each a JVM of its own, whose executors are processes of their own too.

Production runs Spark on a cluster; the project's Spark Connect server (`p13n.services.spark_connect`)
stands in front of it (`spark.master: spark://…`). This cluster is that setting in miniature, on
loopback: what only worked because the driver and the executors shared one process (driver-side
globals, the driver's temp paths, its Python environment) fails here as it would on a real cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from p13n.services.kafka import free_port
from p13n.services.spark_connect import listening, spark_home, stop_group


class SparkStandaloneCluster:
    """`spark-class …Master` and `workers` × `spark-class …Worker`, stopped together."""

    def __init__(self, work_dir: Path, workers: int = 2, cores: int = 1, memory: str = "2g"):
        self.work_dir = Path(work_dir)
        self.workers, self.cores, self.memory = workers, cores, memory
        self.port = free_port()
        self.procs: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        from p13n.spark import ensure_java

        return {
            **os.environ,
            "JAVA_HOME": ensure_java(),
            "SPARK_HOME": str(spark_home()),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "PYSPARK_PYTHON": sys.executable,
            "SPARK_LOG_DIR": str(self.work_dir / "logs"),
            "SPARK_NO_DAEMONIZE": "1",
        }

    def _launch(self, name: str, *args: str) -> subprocess.Popen:
        log = self.work_dir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [str(spark_home() / "bin" / "spark-class"), *args],
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def start(self, timeout: float = 90.0) -> SparkStandaloneCluster:
        master = "org.apache.spark.deploy.master.Master"
        self._launch("master", master, "--host", "127.0.0.1", "--port", str(self.port), "--webui-port", "0")
        self._wait_for(lambda: listening("127.0.0.1", self.port), timeout, "the master did not listen")
        for i in range(self.workers):
            work = self.work_dir / f"worker-{i}"
            work.mkdir(parents=True, exist_ok=True)
            self._launch(
                f"worker-{i}",
                "org.apache.spark.deploy.worker.Worker",
                "--host",
                "127.0.0.1",
                "--cores",
                str(self.cores),
                "--memory",
                self.memory,
                "--webui-port",
                "0",
                "--work-dir",
                str(work),
                self.url,
            )
        logs = [self.work_dir / "logs" / f"worker-{i}.log" for i in range(self.workers)]
        self._wait_for(
            lambda: all("Successfully registered with master" in _read(p) for p in logs),
            timeout,
            "the workers did not register with the master",
        )
        return self

    def _wait_for(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                self.stop()
                raise RuntimeError(
                    f"Spark standalone: a process exited ({dead[0].args[1]}); logs in {self.work_dir}"
                )
            if ready():
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(
            f"Spark standalone: {what} within {timeout:.0f} s; logs in {self.work_dir / 'logs'}"
        )

    def stop(self) -> None:
        for proc in reversed(self.procs):  # workers first, then the master
            stop_group(proc)
        self.procs.clear()

    def __enter__(self) -> SparkStandaloneCluster:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
