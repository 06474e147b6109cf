"""A PostgreSQL server p13n starts itself for Airflow's metadata database, as production keeps it
(docker/compose.yaml): Debian's `postgresql` package (`make services` installs it), a cluster of its
own in a data directory, on loopback, trusting local connections. Stopped with the process that started it.

PostgreSQL refuses to run as root: as root, the server runs as the `postgres` user the package creates.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from p13n.services.kafka import free_port


def postgres_bin_dir() -> Path:
    """Debian's PostgreSQL binaries (the newest installed version)."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    if not versions:
        raise RuntimeError("PostgreSQL is not installed: `make services` installs Debian's postgresql")
    return versions[-1].parent


class PostgresServer:
    """`postgres` on 127.0.0.1:<port> over its own cluster in `data_dir`, with a database `db`."""

    def __init__(self, data_dir: Path, port: int | None = None, db: str = "airflow", user: str = "airflow"):
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.db, self.user = db, user
        self.proc: subprocess.Popen | None = None
        self.as_root = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{self.db}"

    def _as_owner(self, args: list[str]) -> list[str]:
        if not self.as_root:
            return args
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        return [runuser, "-u", "postgres", "--", *args]

    @property
    def cluster(self) -> Path:
        """The cluster's folder. As root it is a folder of the `postgres` user under the temp directory
        (one per data directory): the server must reach it, and a root-owned tree is closed to it."""
        if not self.as_root:
            return self.data_dir / "pgdata"
        import hashlib
        import tempfile

        tag = hashlib.sha1(str(self.data_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"p13n-pgdata-{tag}"

    def start(self, timeout: float = 60.0) -> PostgresServer:
        bin_dir = postgres_bin_dir()
        cluster = self.cluster
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not (cluster / "PG_VERSION").exists():
            cluster.mkdir(parents=True, exist_ok=True)
            if self.as_root:
                shutil.chown(cluster, "postgres", "postgres")
            os.chmod(cluster, 0o700)
            subprocess.run(
                self._as_owner(
                    [
                        str(bin_dir / "initdb"),
                        "-D",
                        str(cluster),
                        "-U",
                        self.user,
                        "--auth=trust",
                        "--encoding=UTF8",
                        "--no-instructions",
                    ]
                ),
                check=True,
                capture_output=True,
                text=True,
            )
        log = self.data_dir / "postgres.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                self._as_owner(
                    [
                        str(bin_dir / "postgres"),
                        "-D",
                        str(cluster),
                        "-p",
                        str(self.port),
                        "-c",
                        "listen_addresses=127.0.0.1",
                        "-c",
                        f"unix_socket_directories={cluster}",
                        "-c",
                        "max_connections=200",
                        "-c",
                        "fsync=off",
                    ]
                ),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"postgres exited with code {self.proc.returncode}: {log.read_text()[-1500:]}"
                )
            if self._create_db():
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"postgres did not accept connections on {self.port} within {timeout:.0f}s")

    def _create_db(self) -> bool:
        import psycopg2

        try:
            con = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="postgres")
        except psycopg2.OperationalError:
            return False
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.db,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{self.db}"')
        con.close()
        return True

    def remove(self) -> None:
        """Stop and delete the cluster (tests)."""
        self.stop()
        shutil.rmtree(self.cluster, ignore_errors=True)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()
