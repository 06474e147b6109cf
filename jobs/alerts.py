"""Failure and missed-deadline alerts: one message shape, sent to the channels `airflow.alerts` names.

* `log`: an ERROR line in the task's (or triggerer's) log, and one JSON line in
  `<data_dir>/logs/alerts.jsonl` (what `p13n run` and the run report show).
* `webhook`: the message POSTed as JSON to the URL in `$P13N_ALERT_WEBHOOK_URL` (a Slack or Teams
  incoming webhook, PagerDuty's events endpoint behind a relay, any HTTP receiver). The URL is a
  secret: it comes from the environment only and is never logged, not even its path.

Every DAG's tasks get `on_failure_callback=FailureNotifier()` (`orchestration.dag_defaults`), and the
nightly DAGs a `DeadlineAlert` whose callback is `deadline_missed`. Sending never raises: an alert that
cannot be delivered is logged, and the task's own outcome stands.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from typing import Any

from p13n.config import Settings, get_settings

log = logging.getLogger("p13n.alerts")
WEBHOOK_TIMEOUT_SECONDS = 10
WEBHOOK_ATTEMPTS = 3
MAX_ERROR_CHARS = 2000


def message(
    kind: str,
    dag_id: str,
    *,
    run_id: str | None = None,
    task_id: str | None = None,
    try_number: int | None = None,
    logical_date: str | None = None,
    error: str | None = None,
    detail: str | None = None,
) -> dict[str, Any]:
    """The alert every channel receives; `text` is the one line a chat channel shows."""
    where = dag_id + (f".{task_id}" if task_id else "")
    what = {"task_failed": "failed", "deadline_missed": "missed its deadline"}.get(kind, kind)
    text = f"p13n: {where} {what}" + (f" (run {run_id})" if run_id else "")
    if error:
        text += f": {(error.strip().splitlines() or [''])[0][:300]}"
    elif detail:
        text += f": {detail}"
    return {
        "kind": kind,
        "dag_id": dag_id,
        "task_id": task_id,
        "run_id": run_id,
        "try_number": try_number,
        "logical_date": logical_date,
        "error": error[:MAX_ERROR_CHARS] if error else None,
        "detail": detail,
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "text": text,
    }


def send(alert: dict[str, Any], settings: Settings | None = None) -> dict[str, bool]:
    """Deliver `alert` to every configured channel; returns channel → delivered. Never raises."""
    settings = settings or get_settings()
    delivered: dict[str, bool] = {}
    for channel in settings.airflow.alerts:
        try:
            if channel == "log":
                _to_log(alert, settings)
            elif channel == "webhook":
                _to_webhook(alert, settings)
            delivered[channel] = True
        except Exception as exc:  # an alert must never turn into a second failure
            log.error("p13n alert not delivered through %s: %s", channel, exc)
            delivered[channel] = False
    return delivered


def read_alerts(settings: Settings | None = None, since: dt.datetime | None = None) -> list[dict]:
    """The alerts the `log` channel recorded (newest last), optionally only those after `since`."""
    path = (settings or get_settings()).logs_dir / "alerts.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if since is not None:
        rows = [r for r in rows if dt.datetime.fromisoformat(r["at"]) >= since]
    return rows


def _to_log(alert: dict, settings: Settings) -> None:
    log.error("%s", alert["text"])
    path = settings.logs_dir / "alerts.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(json.dumps(alert, default=str) + "\n")


def _to_webhook(alert: dict, settings: Settings) -> None:
    import requests

    var = settings.airflow.alert_webhook_env
    url = os.environ.get(var)
    if not url:
        raise RuntimeError(f"the webhook channel is configured but ${var} is not set")
    last: Exception | None = None
    for attempt in range(WEBHOOK_ATTEMPTS):
        try:
            response = requests.post(url, json=alert, timeout=WEBHOOK_TIMEOUT_SECONDS)
            if response.status_code < 400:
                return
            last = RuntimeError(f"the webhook in ${var} answered HTTP {response.status_code}")
            if response.status_code < 500 and response.status_code != 429:
                break  # a refusal (bad URL, bad token) will not change on retry
        except requests.RequestException as exc:  # the message names the host only, not the URL's path
            last = RuntimeError(f"the webhook in ${var} did not answer: {type(exc).__name__}")
        time.sleep(0.5 * 2**attempt)
    raise last or RuntimeError("webhook failed")


def _failure_from_context(context: dict) -> dict:
    ti = context.get("ti") or context.get("task_instance")
    run = context.get("dag_run")
    error = context.get("exception")
    logical = context.get("logical_date")
    return message(
        "task_failed",
        getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "?"),
        run_id=getattr(run, "run_id", None) or context.get("run_id"),
        task_id=getattr(ti, "task_id", None),
        try_number=getattr(ti, "try_number", None),
        logical_date=logical.isoformat() if hasattr(logical, "isoformat") else logical,
        error=f"{type(error).__name__}: {error}" if error else None,
    )


def failure_notifier():
    """A task's `on_failure_callback` (Airflow's notifier interface): sends a `task_failed` alert."""
    from airflow.sdk import BaseNotifier

    class FailureNotifier(BaseNotifier):
        def notify(self, context) -> None:
            send(_failure_from_context(context))

    return FailureNotifier()


async def deadline_missed(dag_id: str, budget_minutes: int, context: dict | None = None) -> dict:
    """A `DeadlineAlert` callback (runs in Airflow's triggerer): sends a `deadline_missed` alert."""
    import asyncio

    # Airflow 3.3's scheduler passes the run as its REST representation (`dag_run_id`).
    run = (context or {}).get("dag_run") or {}
    if isinstance(run, dict):
        run_id = run.get("dag_run_id") or run.get("run_id")
    else:
        run_id = getattr(run, "run_id", None)
    alert = message(
        "deadline_missed",
        dag_id,
        run_id=run_id,
        detail=f"not finished {budget_minutes} minutes after it was queued",
    )
    return await asyncio.to_thread(send, alert)


def deadline(dag_id: str, settings: Settings | None = None):
    """The `deadline=` of a DAG whose runs must finish within `airflow.deadlines_minutes[dag_id]`
    minutes of being queued, or None when it has no budget."""
    settings = settings or get_settings()
    minutes = settings.airflow.deadlines_minutes.get(dag_id)
    if not minutes or not settings.airflow.deadline_alerts:
        return None
    from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference

    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=dt.timedelta(minutes=minutes),
        callback=AsyncCallback(deadline_missed, kwargs={"dag_id": dag_id, "budget_minutes": minutes}),
        name=f"{dag_id} within {minutes} min",
    )
