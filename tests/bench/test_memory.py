"""The bench's peak memory, and what held it: the process tree's RSS summed by kind of process."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from p13n.bench.memory import PeakMemory, process_label, tree_memory_by_process


@pytest.mark.parametrize(
    ("name", "cmdline", "label"),
    [
        (
            "java",
            [
                "/usr/lib/jvm/bin/java",
                "-cp",
                "jars/*",
                "org.apache.spark.deploy.SparkSubmit",
                "--class",
                "org.apache.spark.sql.connect.service.SparkConnectServer",
            ],
            "Spark Connect server (JVM)",
        ),
        ("java", ["java", "-cp", "x", "org.apache.spark.deploy.master.Master"], "other JVMs"),
        ("python3.11", ["/venv/bin/python", "-m", "pyspark.daemon"], "Spark Python workers"),
        ("airflow", ["airflow worker -- 0199f6a0-1c2b-7d1e-8f00-123456789abc"], "Airflow task processes"),
        ("airflow", ["airflow worker -- LocalExecutor: <idle>"], "Airflow (executor and other processes)"),
        ("airflow", ["airflow supervisor: 0199f6a0-1c2b"], "Airflow task supervisors"),
        ("airflow", ["/venv/bin/python", "/venv/bin/airflow", "scheduler"], "Airflow scheduler"),
        ("airflow", ["airflow api_server -- host:127.0.0.1 port:8080"], "Airflow api-server"),
        ("redis-server", ["redis-server *:6379"], "Redis"),
        (
            "p13n",
            ["/venv/bin/python", "/venv/bin/p13n", "run", "--customers", "100000"],
            "p13n (the run's own process)",
        ),
        ("bash", ["bash", "-c", "sleep 1"], "bash"),
    ],
)
def test_each_process_of_the_nightly_is_named_by_what_it_is(name, cmdline, label):
    assert process_label(name, cmdline) == label


def test_the_peak_says_which_processes_held_it_and_counts_a_forked_childs_shared_pages_once():
    # 300 MB allocated and touched (bytearray zeroes them), then a fork: the child shares every page.
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys, time; b = bytearray(300 << 20); pid = os.fork(); "
            "time.sleep(0.2) if pid else None; print(1, flush=True) if pid else None; time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout.readline() == b"1\n"
        pair = tree_memory_by_process(child.pid)  # the process and its fork, nothing else
        with PeakMemory(interval=0.05) as mem:
            time.sleep(0.3)
    finally:
        for p in psutil.Process(child.pid).children():
            p.kill()
        child.kill()
        child.wait()
    assert sum(mem.peak_by_process.values()) == mem.peak_bytes
    # the RSS sum counts the 300 MB in both processes; PSS once
    assert mem.peak_rss_sum_bytes >= mem.peak_bytes + (250 << 20)
    ((rss, pss),) = pair.values()
    assert rss >= 600 << 20 and 300 << 20 <= pss < 400 << 20
