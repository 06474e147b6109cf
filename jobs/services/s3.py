"""A local S3 endpoint: moto's server (a PyPI dependency) in a process of its own, on loopback.

For the lake's and the broker's tests on object storage, and to try `lake.root: s3://…` on one machine.
It runs in its own process, not in a thread of the caller's: delta-rs and DuckDB hold the caller's
GIL while they wait for S3, so a server in the same interpreter could never answer them.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from p13n.services.kafka import free_port
from p13n.services.spark_connect import stop_group

# moto accepts any credentials; these only have to be the same on every client.
LOCAL_KEY = "p13n-local"
REGION = "us-east-1"


class LocalS3:
    def __init__(self, port: int | None = None, log_path: Path | None = None):
        self.port = port or free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def storage_options(self) -> dict[str, str]:
        """delta-rs's storage options for this endpoint (what `lake.storage_options` takes)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": LOCAL_KEY,
            "AWS_SECRET_ACCESS_KEY": LOCAL_KEY,
            "AWS_REGION": REGION,
            "AWS_ALLOW_HTTP": "true",
        }

    def create_bucket(self, name: str) -> str:
        import boto3

        boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=LOCAL_KEY,
            aws_secret_access_key=LOCAL_KEY,
            region_name=REGION,
        ).create_bucket(Bucket=name)
        return name

    def start(self, timeout: float = 60.0) -> LocalS3:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            if self.log_path:
                out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the local S3 server (moto) exited with code {self.proc.returncode}{self._log_tail()}"
                )
            if self._answers():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"the local S3 server (moto) did not answer on {self.endpoint} within {timeout:.0f}s"
            + self._log_tail()
        )

    def _answers(self) -> bool:
        """Whether moto itself answers S3's ListBuckets here (not merely something on the port)."""
        import urllib.error
        import urllib.request

        try:  # a closed port fails the request too (OSError)
            with urllib.request.urlopen(self.endpoint, timeout=2) as reply:
                return b"ListAllMyBucketsResult" in reply.read()
        except (OSError, urllib.error.URLError):
            return False

    def _log_tail(self, lines: int = 15) -> str:
        if not self.log_path or not Path(self.log_path).exists():
            return ""
        tail = Path(self.log_path).read_text(errors="replace").splitlines()[-lines:]
        return f"; its log ({self.log_path}) ends:\n" + "\n".join(tail) if tail else ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, timeout=10)

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()
