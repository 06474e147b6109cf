"""Configuration: layering, overrides, and errors that name the key, where it was set and why."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from p13n.config import REPO_ROOT, ConfigError, load_settings


@pytest.fixture
def conf(tmp_path):
    shutil.copytree(REPO_ROOT / "conf", tmp_path / "conf")
    return tmp_path / "conf"


def test_overlay_and_environment_override(conf):
    s = load_settings("prod", conf, environ={"P13N__SPARK__SHUFFLE_PARTITIONS": "128"})
    assert s.spark.master == "spark://spark-master:7077"  # from prod.yaml
    assert s.spark.shuffle_partitions == 128  # from the environment
    assert s.spark.app_name == "p13n"  # from base.yaml
    assert s.spark.conf["spark.executor.cores"] == "2"  # YAML int made a Spark string


def test_local_defaults_are_embedded(conf):
    s = load_settings("local", conf, environ={"P13N_DATA_DIR": "/srv/p13n"})
    assert s.lake_root == "/srv/p13n/lake"
    assert s.mlflow_uri == "sqlite:////srv/p13n/mlflow/mlflow.db"
    assert s.mlflow_artifacts == "file:///srv/p13n/mlflow/artifacts"
    assert str(s.airflow_home) == "/srv/p13n/airflow"
    assert s.spark.master.startswith("local")


def test_bad_value_names_key_file_and_expectation(conf):
    (conf / "local.yaml").write_text("spark:\n  shuffle_partitions: lots\n")
    with pytest.raises(ConfigError) as err:
        load_settings("local", conf, environ={})
    assert "spark.shuffle_partitions: Input should be a valid integer" in str(err.value)
    assert f"got 'lots' (set in {conf / 'local.yaml'})" in str(err.value)


def test_bad_env_override_names_the_variable(conf):
    with pytest.raises(
        ConfigError,
        match=r"spark.driver_memory: Value error, expected a JVM memory size such as 4g or 512m, "
        r"got 'lots'.*\(set in environment variable P13N__SPARK__DRIVER_MEMORY\)",
    ):
        load_settings("local", conf, environ={"P13N__SPARK__DRIVER_MEMORY": "lots"})


def test_unknown_key_is_reported(conf):
    (conf / "local.yaml").write_text("spark:\n  mastr: local[1]\n")
    with pytest.raises(ConfigError, match=rf"spark.mastr: unknown key \(set in {conf / 'local.yaml'}\)"):
        load_settings("local", conf, environ={})


def test_secrets_are_refused_in_files(conf):
    (conf / "local.yaml").write_text("lake:\n  storage_options:\n    AWS_SECRET_ACCESS_KEY: hunter2\n")
    with pytest.raises(
        ConfigError, match="holds a credential .*; credentials may only come from the environment"
    ):
        load_settings("local", conf, environ={})


@pytest.mark.parametrize(
    "text",
    [
        "serving:\n  redis_url: redis://:hunter2@cache:6379/0\n",
        "lake:\n  root: s3://AKIAABCDEFGHIJKLMNOP@bucket/lake\n",
        "sources:\n  kafka_bootstrap: 'https://u:pw@k:9092'\n",
    ],
)
def test_credentials_in_values_are_refused_whatever_the_key(conf, text):
    (conf / "local.yaml").write_text(text)
    with pytest.raises(ConfigError, match="holds a credential") as err:
        load_settings("local", conf, environ={})
    assert "hunter2" not in str(err.value) and "pw@" not in str(err.value)


def test_config_output_and_validation_errors_never_show_a_credential(conf):
    import json
    import subprocess
    import sys

    env = {
        "P13N_CONF_DIR": str(conf),
        "P13N__SERVING__REDIS_URL": "redis://app:hunter2@cache:6379/0",
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run(
        [sys.executable, "-m", "p13n.cli", "config"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert (
        "hunter2" not in out.stdout
        and json.loads(out.stdout)["serving"]["redis_url"] == "redis://app:***@cache:6379/0"
    )
    bad = {"P13N__SERVING__API__PORT": "redis://app:hunter2@x/0"}  # a credential where a number goes
    with pytest.raises(ConfigError) as err:
        load_settings("local", conf, environ=bad)
    assert "hunter2" not in str(err.value) and "a str of 23 characters" in str(err.value)


def test_storage_options_come_from_the_environment_verbatim(conf):
    s = load_settings(
        "local",
        conf,
        environ={
            "P13N__LAKE__STORAGE_OPTIONS__AWS_REGION": "eu-west-1",
            "P13N__LAKE__STORAGE_OPTIONS__AWS_SECRET_ACCESS_KEY": "0123",
        },
    )
    assert s.lake.storage_options == {"AWS_REGION": "eu-west-1", "AWS_SECRET_ACCESS_KEY": "0123"}


def test_unknown_environment_lists_the_known_ones(conf):
    with pytest.raises(
        ConfigError, match=r"P13N_ENV='staging': no overlay .*; known environments: local, prod, test"
    ):
        load_settings("staging", conf, environ={})


def test_cli_help_lists_the_commands():
    out = subprocess.run(
        [str(Path(sys.executable).parent / "p13n"), "--help"], capture_output=True, text=True, check=True
    )
    for command in ("run", "airflow", "bench", "config", "lake"):
        assert f"    {command}" in out.stdout


def test_cli_config_masks_secrets():
    env = {
        "P13N__LAKE__STORAGE_OPTIONS__AWS_SECRET_ACCESS_KEY": "hunter2",
        "PATH": "/usr/bin:/bin",
        "P13N_ENV": "test",
    }
    out = subprocess.run(
        [str(Path(sys.executable).parent / "p13n"), "config"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert "hunter2" not in out.stdout
    assert '"AWS_SECRET_ACCESS_KEY": "***"' in out.stdout


def test_cli_reports_config_errors_plainly(tmp_path):
    env = {"P13N_CONF_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [str(Path(sys.executable).parent / "p13n"), "config"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 2
    assert (
        out.stderr.strip()
        == f"p13n: {tmp_path / 'base.yaml'}: missing; it holds the base configuration (set P13N_CONF_DIR?)"
    )


def test_base_yaml_and_the_typed_defaults_agree():
    """Every setting of conf/base.yaml that also has a typed default equals it, so the two copies
    cannot drift. Settings held only by base.yaml (entries of mappings: deadlines, audiences,
    triggers …) have one copy; the exceptions are this retailer's deployment data, whose typed
    default is empty (none)."""
    import yaml

    from p13n.config import REPO_ROOT, Settings

    deployment = {
        "airflow.preload_modules",
        "identity.one_per_customer",
        "identity.source_priority",
        "data_dir",
    }
    base = yaml.safe_load((REPO_ROOT / "conf" / "base.yaml").read_text())
    typed, documented = (
        Settings().model_dump(mode="json"),
        Settings.model_validate(base).model_dump(mode="json"),
    )

    def leaves(d, path=()):
        for k, v in d.items():
            yield from leaves(v, (*path, k)) if isinstance(v, dict) and v else [(path + (k,))]

    def at(d, path):
        for k in path:
            d = d.get(k, "<no default>") if isinstance(d, dict) else "<no default>"
        return d

    paths = list(leaves(base))
    both = [p for p in paths if at(typed, p) != "<no default>"]
    differ = [
        ".".join(p) for p in both if at(typed, p) != at(documented, p) and ".".join(p) not in deployment
    ]
    assert len(paths) > 250 and len(both) > 150
    assert differ == []
    assert [at(typed, p.split(".")) for p in sorted(deployment - {"data_dir"})] == [[], [], []]
