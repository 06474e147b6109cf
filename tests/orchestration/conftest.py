"""The in-process reference night: one generated day ingested, resolved, then `score_customers` and
`recommend_products` through `airflow dags test` on the classic local Spark driver.

`test_customers_dag` checks its tables and builds on a copy of it; `test_scheduler` runs the same day
through Airflow's scheduler and a Spark standalone cluster and must write the same tables.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from reference_night import DAY, NIGHT, PII_KEY, Night, table_digests


@pytest.fixture(scope="session")
def scored_night(spark, settings, tmp_path_factory) -> Night:
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
