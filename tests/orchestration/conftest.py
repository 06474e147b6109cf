"""The in-process reference night: one generated day ingested, resolved, then `score_customers` and
`recommend_products` through `airflow dags test` on the classic local Spark driver.

`test_customers_dag` checks its tables and builds on a copy of it; `test_scheduler` runs the same day
through Airflow's scheduler and a Spark standalone cluster and must write the same tables
(`reference_digests`): under `make test` the two run at once, in two processes (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from filelock import FileLock
from reference_night import DAY, NIGHT, PII_KEY, Night, table_digests


def _digests_file(tmp_path_factory) -> Path:
    """Where the night's digests are kept for the session's other test processes: beside their base
    temporary directories under pytest-xdist, in this run's own otherwise."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "reference-night-digests.json"


@pytest.fixture(scope="session")
def reference_digests(request, tmp_path_factory) -> dict[str, tuple[int, str]]:
    """The reference night's table digests: read from the file of the process that built the night
    (waiting while it builds it), else built here."""
    path = _digests_file(tmp_path_factory)
    with FileLock(f"{path}.lock"):
        if path.exists():
            return {table: tuple(digest) for table, digest in json.loads(path.read_text()).items()}
    return request.getfixturevalue("scored_night").digests


@pytest.fixture(scope="session")
def scored_night(spark, settings, tmp_path_factory) -> Night:
    path = _digests_file(tmp_path_factory)
    with FileLock(f"{path}.lock"):  # the other process's `reference_digests` waits for it
        night = _build_night(spark, settings, tmp_path_factory)
        path.write_text(json.dumps(night.digests))
    return night


def _build_night(spark, settings, tmp_path_factory) -> Night:
    from p13n.customers.pipeline import INPUTS
    from p13n.generate.retail import generate
    from p13n.identity.pipeline import resolve_identities
    from p13n.lake import Lake
    from p13n.orchestration import airflow_env
    from p13n.runner import ensure_airflow_db, run_dag
    from p13n.services.kafka import EmbeddedBroker
    from p13n.sources.catalog import load_catalog
    from p13n.sources.ingest import ingest_batch
    from p13n.sources.simulate import load_warehouse, replay_topics

    root = tmp_path_factory.mktemp("scored-night")
    s = settings.model_copy(update={"data_dir": root})
    catalog = load_catalog()
    generate(catalog, root, **NIGHT)
    load_warehouse(s, catalog)
    lake = Lake(spark, s.lake, s.lake_root)
    # The sources identity, scoring and recommendations read.
    needed = set(s.identity.sources) | {"wishlists", "inventory_snapshots"}
    needed |= {t.split(".", 1)[1] for t in INPUTS.values() if t.startswith("silver.")}
    broker = EmbeddedBroker().start()
    try:
        s = s.model_copy(
            update={"sources": s.sources.model_copy(update={"kafka_bootstrap": broker.bootstrap})}
        )
        replay_topics(s, catalog, broker.bootstrap)
        # Three batches at a time: each is a string of small Spark jobs and Delta commits on its own
        # tables, so the shared session overlaps them.
        with ThreadPoolExecutor(3) as pool:
            list(
                pool.map(
                    lambda name: ingest_batch(lake, s, catalog, catalog[name], DAY, PII_KEY.encode()),
                    sorted(needed),
                )
            )
    finally:
        broker.stop()
    resolve_identities(lake, s, DAY, PII_KEY.encode())
    env = airflow_env(s) | {"P13N_PII_KEY": PII_KEY}
    log = root / "airflow.log"
    ensure_airflow_db(env, log)
    lines: list[str] = []
    for dag_id, echo in (("score_customers", lines.append), ("recommend_products", lambda _line: None)):
        ok, _ = run_dag(dag_id, DAY.isoformat(), env, log, echo=echo)
        assert ok, log.read_text()[-4000:]
    return Night(settings=s, lines=lines, digests=table_digests(s.lake_root))
