"""Spark as a service: a Spark Connect server started from the pyspark wheel (its jar and launcher ship
in it), in front of `spark.master` (local threads here, a standalone or Kubernetes cluster elsewhere).

Under Airflow's scheduler every task is a process of its own; each starting a Spark driver JVM cost
about 7 s a task and oversubscribed the machine. With the server running, a task is a thin client
(`spark.remote`, about a second to connect) and the one driver keeps its JVM, caches and Python
workers warm across tasks. Production runs the same server (docker/compose.yaml) in front of its cluster.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from p13n.config import Settings
from p13n.services.kafka import free_port

# Settings of the server's own JVM and session defaults: everything `p13n.spark.spark_conf` sets for an
# in-process driver applies to the server's driver, plus its port and loopback binding.


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


class SparkConnectServer:
    """`start-connect-server.sh --wait` in the foreground of a process p13n owns (stopped with it)."""

    def __init__(
        self,
        settings: Settings,
        port: int | None = None,
        log_path: Path | None = None,
        host: str = "127.0.0.1",
    ):
        """`host`: the address clients reach it on (loopback here; 0.0.0.0 in a container)."""
        self.settings = settings
        self.host = host
        self.port = port or free_port()
        self.log_path = log_path or settings.logs_dir / "spark-connect.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"sc://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        from p13n.spark import spark_conf

        conf = spark_conf(self.settings)
        conf.update(
            {
                "spark.connect.grpc.binding.address": self.host,
                "spark.connect.grpc.binding.port": str(self.port),
                # Tasks of several Airflow task processes share this driver: FAIR lets a short task's
                # jobs run beside a long one's instead of queueing behind it.
                "spark.scheduler.mode": "FAIR",
                # A finished task's session (its local checkpoints) is released within minutes, not the
                # default hour: task processes end with os._exit and cannot always say goodbye. Frames
                # it cached stay (the cache is the application's): the recommendations DAG's last task
                # clears them (`p13n.recommend.tasks.release_cache`).
                "spark.connect.session.manager.defaultSessionTimeout": "5min",
                "spark.default.parallelism": str(max(2, os.cpu_count() or 2)),
            }
        )
        args = [
            str(spark_home() / "sbin" / "start-connect-server.sh"),
            "--wait",
            "--master",
            self.settings.spark.master,
            "--name",
            "p13n Spark Connect",
            "--driver-memory",
            self.settings.spark.server_memory,
        ]
        for key, value in conf.items():
            if key in ("spark.driver.memory",):
                continue
            args += ["--conf", f"{key}={value}"]
        return args

    def env(self) -> dict[str, str]:
        from p13n.spark import ensure_java

        env = dict(os.environ)
        if self.settings.spark.master.startswith("local"):
            env["SPARK_LOCAL_IP"] = "127.0.0.1"  # every port on loopback (spark_conf binds the driver there)
        env.update(
            {
                "JAVA_HOME": ensure_java(),
                "SPARK_HOME": str(spark_home()),
                "PYSPARK_PYTHON": sys.executable,
                "PYSPARK_DRIVER_PYTHON": sys.executable,
                "SPARK_LOG_DIR": str(self.log_path.parent),
                "SPARK_PID_DIR": str(self.log_path.parent),
                "SPARK_NO_DAEMONIZE": "1",
            }
        )
        # glibc gives each thread that allocates natively an arena of its own (up to 8 per core) and
        # rarely returns their free pages; Hadoop and YARN cap them the same way for long-lived JVMs.
        # A precaution: not measured on its own here (the server's growth past its heap seen at 100k
        # was its fork for a Python worker counted twice, see p13n.bench.memory).
        env.setdefault("MALLOC_ARENA_MAX", "2")
        return env

    def serve(self) -> int:
        """Run in the foreground until SIGTERM or Ctrl-C (`p13n spark-connect`, a container's command)."""
        import signal

        stopping: list[int] = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
        signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
        self.start()
        print(
            f"Spark Connect on {self.url} in front of {self.settings.spark.master}; log {self.log_path}",
            flush=True,
        )
        while not stopping and self.proc is not None and self.proc.poll() is None:
            time.sleep(1)
        code = self.proc.poll() if self.proc is not None else 0
        self.stop()
        return 0 if stopping else (code or 1)

    def start(self, timeout: float = 90.0) -> SparkConnectServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                self.command(),
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:  # the server leads a session of its own: Ctrl-C does not reach it, so a start cut short stops it
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    tail = self.log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(
                        f"the Spark Connect server exited with code {self.proc.returncode}:\n{tail}"
                    )
                if listening("127.0.0.1" if self.host in ("0.0.0.0", "") else self.host, self.port):
                    return self
                time.sleep(0.5)
            raise RuntimeError(
                f"the Spark Connect server did not listen on {self.port} within {timeout:.0f}s"
            )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)

    def __enter__(self) -> SparkConnectServer:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()


def listening(host: str, port: int) -> bool:
    """Whether something accepts connections on host:port."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def stop_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the process group a `start_new_session` child leads; SIGKILL it after `timeout` s."""
    import signal

    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
