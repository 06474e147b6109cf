"""The Spark Connect warm-up `p13n run` starts beside the dataset's generation: it only ever saves time,
so a slow or failing one is stopped and said, and its scratch data never outlives it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from p13n.services import spark_warmup


def test_a_warm_up_past_its_time_is_stopped_and_its_scratch_data_deleted(tmp_path):
    work = tmp_path / "warm"
    work.mkdir()
    (work / "landing.csv").write_text("a,b\n")
    slow = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    line = spark_warmup.finish(slow, work, timeout=1)
    assert line == "Spark Connect warm-up stopped after 1s: the night runs anyway"
    assert slow.returncode is not None and not work.exists()


def test_a_failed_warm_up_is_said_with_its_exit_code(tmp_path):
    failed = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    line = spark_warmup.finish(failed, tmp_path / "warm")
    assert line == "Spark Connect warm-up failed (exit 3): the night runs anyway"


def test_the_warm_up_refuses_to_run_outside_its_scratch_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("P13N_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(SystemExit, match="must be the scratch directory"):
        spark_warmup.main(str(tmp_path / "elsewhere"))
