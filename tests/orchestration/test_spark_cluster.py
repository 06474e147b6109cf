"""The pipeline on a real Spark cluster: a standalone master and two workers from the pyspark wheel
(separate JVMs; executors are processes of their own), behind the project's Spark Connect server, as
production runs it. Ingestion and identity on a generated day must write exactly the tables the
in-process local driver writes.

Marked slow (`make test-all`): in CI, `test_scheduler` runs its night on a standalone cluster and
compares every table with the in-process reference night. Measured by hand:
ingestion of all 32 sources, identity and customer features for 300 customers gave 121 of 122
tables identical to the local run's, the other being `ops.identity_runs` (its timings).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from reference_night import table_digests

pytestmark = [pytest.mark.slow]

# One night, in a process of its own: a Spark Connect client (SPARK_REMOTE) and a classic driver cannot
# share a process.
NIGHT = """
import datetime as dt, json, sys
from pathlib import Path
from p13n.config import get_settings
from p13n.generate.retail import generate
from p13n.identity.pipeline import resolve_identities
from p13n.session import lake as session_lake
from p13n.sources.catalog import load_catalog
from p13n.sources.ingest import ingest_batch
from p13n.sources.simulate import load_warehouse

day, s, catalog = dt.date(2024, 3, 1), get_settings(), load_catalog()
generate(catalog, s.data_dir, customers=200, days=1, seed=7, start=day, bad_rate=0.005, history_days=30)
load_warehouse(s, catalog)
lake = session_lake()
for name in s.identity.sources:
    ingest_batch(lake, s, catalog, catalog[name], day, b"k")
resolve_identities(lake, s, day, b"k")
Path(sys.argv[1]).write_text(json.dumps({"spark": type(lake.spark).__module__, "lake": s.lake_root}))
"""


def _night(data_dir, remote: str | None = None) -> tuple[str, dict]:
    """The Spark session's module and `table_digests` of the lake the night wrote."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("P13N__SPARK__REMOTE", "SPARK_REMOTE"))}
    env["P13N_DATA_DIR"] = str(data_dir)
    if remote:
        env["P13N__SPARK__REMOTE"] = remote
    out = data_dir.parent / f"{data_dir.name}.json"
    done = subprocess.run(
        [sys.executable, "-c", NIGHT, str(out)], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ran = json.loads(out.read_text())
    return ran["spark"], table_digests(ran["lake"])


@pytest.mark.timeout(1800)
def test_ingestion_and_identity_on_a_standalone_cluster_write_the_local_runs_tables(settings, tmp_path):
    from p13n.services.spark_cluster import SparkStandaloneCluster
    from p13n.services.spark_connect import SparkConnectServer

    local_spark, local = _night(tmp_path / "local")
    with SparkStandaloneCluster(tmp_path / "cluster", workers=2, cores=1, memory="1g") as cluster:
        on_cluster = settings.model_copy(
            update={"spark": settings.spark.model_copy(update={"master": cluster.url, "server_memory": "2g"})}
        )
        with SparkConnectServer(on_cluster, log_path=tmp_path / "cluster" / "logs" / "connect.log") as server:
            got_spark, got = _night(tmp_path / "remote", remote=server.url)
        executors = list((tmp_path / "cluster").glob("worker-*/app-*/*/stderr"))
    assert "connect" not in local_spark and got_spark == "pyspark.sql.connect.session"
    assert len(executors) >= 2  # executors ran in the workers' processes, not the driver's
    local.pop("ops.identity_runs")  # its timings differ
    assert len(local) > 20 and "gold.customer_profiles" in local
    assert {t: got.get(t) for t in local} == local
