"""The nightly's operations: failure alerts through a real DAG run, deadline alerts, the webhook's
error handling, the backfill plan, and the run report on a small lake."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from p13n import alerts
from p13n.orchestration import airflow_env
from p13n.runner import NIGHTLY, DagSession, ensure_airflow_db, nightly_plan, run_dag


class Hook:
    """A local webhook receiver: records JSON bodies, answers with the queued statuses (then 200)."""

    def __init__(self, statuses: list[int] | None = None):
        self.bodies: list[dict] = []
        self.statuses = list(statuses or [])
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.bodies.append(json.loads(body))
                self.send_response(hook.statuses.pop(0) if hook.statuses else 200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/secret-token"

    def close(self):
        self.server.shutdown()


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.close()


def _with_alerts(settings, *channels):
    return settings.model_copy(
        update={"airflow": settings.airflow.model_copy(update={"alerts": list(channels)})}
    )


@pytest.mark.airflow
def test_a_failed_task_alerts_through_the_log_and_the_webhook(settings, hook, tmp_path):
    """A real `airflow dags test` run whose task fails (an injected fault, no retries left) calls the
    notifier: one alert in alerts.jsonl and one POST, both naming the DAG, task, run and the error."""
    env = airflow_env(settings)
    own = settings.model_copy(update={"data_dir": tmp_path / "data"})  # an empty lake of its own
    env |= {
        "P13N_DATA_DIR": str(own.data_dir),
        "P13N__AIRFLOW__RETRIES": "0",
        "P13N__AIRFLOW__ALERTS": "[log, webhook]",
        "P13N_ALERT_WEBHOOK_URL": hook.url,
    }
    log = tmp_path / "airflow.log"
    ensure_airflow_db(env, log)
    dags = DagSession(env, log, recycle_after=2)  # two runs per DAG process, as `p13n run` runs its plan
    ok, _ = dags.run(
        "run_report", "2024-03-02", echo=lambda _l: None, env={"P13N_FAULTS": "report.build:raise"}
    )
    assert not ok
    assert dags.last["error"] == "DagRun failed"
    (sent,) = hook.bodies
    assert (sent["kind"], sent["dag_id"], sent["task_id"]) == ("task_failed", "run_report", "report")
    assert sent["error"].startswith("FaultInjected: fault injected at report.build")
    assert sent["run_id"] and sent["text"].startswith("p13n: run_report.report failed (run ")
    (logged,) = alerts.read_alerts(own)
    assert logged == sent
    assert hook.url not in log.read_text()  # the webhook URL is a secret: never in a log

    # Without the fault the same DAG writes the report (on an empty lake: every section "not run yet");
    # run_report has a deadline, which `airflow dags test` of Airflow 3.3 cannot take (apache/airflow#73428):
    # the run succeeding here shows the runner parses DAGs without them.
    # The fault was armed for the first run only; the second runs in the same process.
    first = dags.last["pid"]
    with dags:
        ok, _ = dags.run("run_report", "2024-03-02", echo=lambda _l: None)
        assert ok, log.read_text()[-3000:]
        assert dags.last["pid"] == first
        ok, _ = dags.run("run_report", "2024-03-02", echo=lambda _l: None)  # a third: a new process
        assert ok and dags.last["pid"] != first
        second, dags.max_rss_gb = dags.last["pid"], 0.01  # a process left above its memory limit goes too
        ok, _ = dags.run("run_report", "2024-03-02", echo=lambda _l: None)
        assert ok and dags.last["pid"] == second and dags.proc is None
        assert "===== the DAG process holds " in log.read_text()
    page = (own.data_dir / "reports" / "2024-03-02" / "index.html").read_text()
    assert page.count("has not run for this date yet") == 10
    assert "run_report.report failed" in page  # the day's alert is on the page
    assert len(hook.bodies) == 1


@pytest.mark.airflow
def test_a_failed_export_fails_the_run_but_still_announces_the_exports(settings, tmp_path):
    """No platform key (the test overlay fails without one): every export task fails and alerts once;
    the warehouse sync and the measurement still run, `announce` still updates the Asset the run
    report waits for, and the watcher fails the DAG run without a second alert."""
    import subprocess

    from p13n.orchestration import airflow_bin

    env = airflow_env(settings)
    own = settings.model_copy(update={"data_dir": tmp_path / "data"})
    env |= {"P13N_DATA_DIR": str(own.data_dir), "P13N__AIRFLOW__RETRIES": "0"}
    log = tmp_path / "airflow.log"
    ensure_airflow_db(env, log)
    ok, _ = run_dag("export_audiences", "2024-03-02", env, log, echo=lambda _l: None)
    assert not ok
    sent = alerts.read_alerts(own)
    assert [a["task_id"] for a in sent] == ["export"] * 4  # vip_win_back ×2, high_churn_risk, new_customers
    (run_id,) = {a["run_id"] for a in sent}
    out = subprocess.run(
        [airflow_bin(), "tasks", "states-for-dag-run", "export_audiences", run_id, "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    states: dict[str, set] = {}
    for ti in json.loads(out.stdout[out.stdout.index("[") :]):
        states.setdefault(ti["task_id"], set()).add(ti["state"])
    assert states == {
        "audiences": {"success"},
        "export": {"failed"},
        "warehouse": {"success"},
        "triggers": {"success"},
        "journeys": {"success"},
        "measure": {"success"},  # the holdouts are measured whatever the exports did
        "announce": {"success"},
        "watcher": {"failed"},
    }


def test_deadline_alerts_are_configured_and_sent(settings, hook, monkeypatch):
    monkeypatch.setenv("P13N_ALERT_WEBHOOK_URL", hook.url)
    monkeypatch.setattr(alerts, "get_settings", lambda: _with_alerts(settings, "webhook"))
    alert = alerts.deadline("ingest_sources", settings)
    assert alert.interval == dt.timedelta(minutes=settings.airflow.deadlines_minutes["ingest_sources"])
    assert alerts.deadline("lake_maintenance", settings) is None  # no budget configured
    out = asyncio.run(
        alerts.deadline_missed(**alert.callback.kwargs, context={"dag_run": {"dag_run_id": "r1"}})
    )
    assert out == {"webhook": True}
    (sent,) = hook.bodies
    assert (sent["kind"], sent["dag_id"], sent["run_id"]) == ("deadline_missed", "ingest_sources", "r1")
    assert (
        sent["text"]
        == "p13n: ingest_sources missed its deadline (run r1): not finished 120 minutes after it was queued"
    )


def test_webhook_retries_server_errors_and_never_raises(settings, monkeypatch, caplog):
    monkeypatch.setattr(alerts.time, "sleep", lambda _s: None)
    only_webhook = _with_alerts(settings, "webhook", "log")
    flaky = Hook([503, 502])
    monkeypatch.setenv("P13N_ALERT_WEBHOOK_URL", flaky.url)
    try:
        assert alerts.send(alerts.message("task_failed", "d"), only_webhook) == {"webhook": True, "log": True}
        assert len(flaky.bodies) == 3  # two 5xx, then delivered
    finally:
        flaky.close()
    refused = Hook([404, 404, 404])
    monkeypatch.setenv("P13N_ALERT_WEBHOOK_URL", refused.url)
    try:
        assert alerts.send(alerts.message("task_failed", "d"), only_webhook) == {
            "webhook": False,
            "log": True,
        }
        assert len(refused.bodies) == 1  # a refusal is not retried
    finally:
        refused.close()
    monkeypatch.delenv("P13N_ALERT_WEBHOOK_URL")
    assert alerts.send(alerts.message("task_failed", "d"), only_webhook) == {"webhook": False, "log": True}
    assert "P13N_ALERT_WEBHOOK_URL is not set" in caplog.text
    assert "secret-token" not in caplog.text


def test_backfill_plan_runs_each_night_then_the_rest_on_the_last_date():
    dates = ["2024-03-01", "2024-03-02"]
    assert nightly_plan(dates) == [
        ("ingest_sources", "2024-03-01"),
        ("resolve_identities", "2024-03-01"),
        ("score_customers", "2024-03-01"),
        ("ingest_sources", "2024-03-02"),
        ("resolve_identities", "2024-03-02"),
        ("score_customers", "2024-03-02"),
        ("recommend_products", "2024-03-02"),
        ("publish_serving", "2024-03-02"),
        ("export_audiences", "2024-03-02"),
    ]
    # `p13n backfill` runs every DAG it is given for every date, in the nightly's order
    assert nightly_plan(dates, NIGHTLY[2:4], every_night=NIGHTLY[2:4]) == [
        ("score_customers", "2024-03-01"),
        ("recommend_products", "2024-03-01"),
        ("score_customers", "2024-03-02"),
        ("recommend_products", "2024-03-02"),
    ]


def test_the_dataset_generated_beside_the_servers_hands_back_its_dates_or_its_error_and_never_holds_exit():
    import threading

    from p13n.runner import _in_background

    started = threading.Event()

    def generate():
        started.set()
        return ["2024-03-01", "2024-03-02"]

    assert _in_background(generate, "generate").result(timeout=10) == ["2024-03-01", "2024-03-02"]
    assert started.is_set()

    def fails():
        raise OSError("No space left on device: landing/shopify_orders")

    with pytest.raises(OSError, match="No space left"):
        _in_background(fails, "generate").result(timeout=10)
    # A daemon thread: Ctrl-C during generation stops the run without waiting for it.
    hold = threading.Event()
    _in_background(hold.wait, "generate-held")
    (held,) = [t for t in threading.enumerate() if t.name == "generate-held"]
    assert held.daemon
    hold.set()
