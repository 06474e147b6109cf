"""The production compose stack: `docker-compose config` accepts it, and the environment it gives each
p13n container loads as valid `prod` settings pointing at the stack's services."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from p13n.config import REPO_ROOT, load_settings

COMPOSE = ["docker-compose", "--env-file", "docker/.env.example", "-f", "docker/compose.yaml", "config"]


@pytest.fixture(scope="module")
def stack() -> dict:
    if not shutil.which("docker-compose"):
        pytest.fail("docker-compose is missing: `make services` installs it from Debian")
    out = subprocess.run(COMPOSE, cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return yaml.safe_load(out.stdout)


def test_the_stack_has_every_service(stack):
    assert set(stack["services"]) == {
        "postgres",
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "spark-connect",
        "spark-master",
        "spark-worker-1",
        "spark-worker-2",
        "kafka",
        "redis",
        "mlflow",
        "minio",
        "minio-init",
    }
    scheduler = stack["services"]["airflow-scheduler"]["environment"]
    assert scheduler["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert scheduler["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow:")
    assert scheduler["P13N__SPARK__REMOTE"] == "sc://spark-connect:15002"
    assert stack["services"]["spark-connect"]["command"][:2] == ["p13n", "spark-connect"]


def test_nothing_unauthenticated_is_published_on_the_host(stack):
    for name in ("redis", "mlflow", "postgres", "kafka"):
        assert not stack["services"][name].get("ports"), name
    redis = stack["services"]["redis"]["command"]
    assert (
        redis[redis.index("--requirepass") + 1] == "change-me-redis"
        and redis[redis.index("--appendonly") + 1] == "no"
    )


def test_the_example_secrets_fail_the_production_check(stack):
    from p13n.secrets import pii_key

    env = {k: str(v) for k, v in stack["services"]["airflow-scheduler"]["environment"].items()}
    s = load_settings(environ=env)
    import os

    old = os.environ.get("P13N_PII_KEY")
    os.environ["P13N_PII_KEY"] = env["P13N_PII_KEY"]
    try:
        with pytest.raises(RuntimeError, match="P13N_PII_KEY is a placeholder"):
            pii_key(s)
    finally:
        os.environ.pop("P13N_PII_KEY") if old is None else os.environ.__setitem__("P13N_PII_KEY", old)


@pytest.mark.parametrize("service", ["airflow-scheduler", "spark-worker-1", "mlflow"])
def test_each_p13n_container_loads_the_prod_settings(stack, service):
    env = {k: str(v) for k, v in stack["services"][service]["environment"].items()}
    s = load_settings(environ=env)
    assert (s.env, s.lake_root, s.spark.master) == (
        "prod",
        "s3://p13n-lake/lake",
        "spark://spark-master:7077",
    )
    assert (s.sources.kafka_bootstrap, s.serving.redis_url, s.mlflow_uri) == (
        "kafka:9092",
        "redis://:change-me-redis@redis:6379/0",
        "http://mlflow:5000",
    )
    assert s.spark.conf["spark.hadoop.fs.s3a.endpoint"] == "http://minio:9000"
    assert s.spark.conf["spark.hadoop.fs.s3.impl"] == "org.apache.hadoop.fs.s3a.S3AFileSystem"
