"""`p13n bench scale`'s report: the table in docs/scale.md is rewritten from the results file."""

from __future__ import annotations

from p13n.bench import scale


def _result(n, nightly, when, commit, ok=True):
    return {
        "customers": n,
        "days": 2,
        "measured_at": f"{when}T10:00:00+00:00",
        "commit": commit,
        "succeeded": ok,
        "wall_seconds": nightly * 2,
        "generate_seconds": 40.0,
        "nightly_seconds": nightly,
        "stages": [
            {"dag": "ingest_sources", "date": "2024-03-01", "seconds": 200.0, "succeeded": True},
            {"dag": "ingest_sources", "date": "2024-03-02", "seconds": nightly, "succeeded": True},
        ],
        "peak_memory_gb": 6.0,
        "outputs": {"lake_gb": 0.2},
    }


def test_the_scale_table_shows_the_newest_figures_and_the_earlier_nightlies(tmp_path, monkeypatch):
    report = tmp_path / "scale.md"
    report.write_text(
        "# Scale\n\nintro\n<!-- scale-table:start -->\nold\n<!-- scale-table:end -->\n\nfindings\n"
    )
    monkeypatch.setattr(scale, "REPORT", report)
    scale.write_report(
        [
            _result(20_000, 603.0, "2026-11-22", "5bcb257"),
            _result(100_000, 1111.0, "2026-11-22", None),
            _result(20_000, 9999.0, "2026-11-23", "deadbee", ok=False),  # a failed run is no baseline
            _result(20_000, 266.0, "2026-11-23", "abc1234"),
        ]
    )
    text = report.read_text()
    assert text.startswith(
        "# Scale\n\nintro\n<!-- scale-table:start -->\n|  | 20,000 customers | 100,000 customers |"
    )
    assert text.endswith("<!-- scale-table:end -->\n\nfindings\n") and "old" not in text
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("|")}
    nightly = "**the nightly: the last night, ingestion to exports (s)**"
    assert rows[nightly] == f"| {nightly} | **266** | **1,111** |"
    assert rows["nights run (the last one is the nightly measured)"].endswith(" | 2 | 2 |")
    assert "how it was measured" not in rows  # only when a result carries a note
    assert "at that peak, by process (PSS, GB)" not in rows  # only when a result has the breakdown
    scale.write_report([_result(20_000, 300.0, "2026-11-23", "abc1234", ok=False)])
    assert f"| {nightly} | failed after 300 |" in report.read_text()  # a failed run is no nightly figure
    scale.write_report([{**_result(20_000, 266.0, "2026-11-23", "abc1234"), "note": "resumed after a fix"}])
    assert "| how it was measured | resumed after a fix |" in report.read_text()
    by_process = {"Spark Connect server (JVM)": 8.1, "Airflow task processes": 5.25}
    pss = {"peak_pss_gb": 14.2, "peak_memory_by_process_gb": by_process}
    scale.write_report([{**_result(20_000, 266.0, "2026-11-23", "abc1234"), **pss}])
    text = report.read_text()
    assert "| peak memory, whole process tree (GB) | 6.0 |" in text
    assert "| peak memory, shared pages counted once (PSS, GB) | 14.2 |" in text
    assert (
        "| at that peak, by process (PSS, GB) | Spark Connect server (JVM) 8.1; Airflow task processes 5.25 |"
    ) in text
    assert rows["the nightly, earlier measurements (s)"] == (
        "| the nightly, earlier measurements (s) | 603 (5bcb257) |  |"
    )
