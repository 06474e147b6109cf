"""Activation entry points for the CLI (`p13n export`, `p13n warehouse sync`) and the DAGs."""

from __future__ import annotations

import datetime as dt
import time

from p13n.config import get_settings
from p13n.lake.tables import OPS_WAREHOUSE_SYNCS
from p13n.orchestration import progress


def audiences_for(schedule: str | None = None) -> list[tuple[str, str]]:
    """(audience, destination) pairs declared in config, optionally those of one schedule."""
    settings = get_settings()
    return [
        (name, dest)
        for name, a in sorted(settings.activation.audiences.items())
        if schedule is None or a.schedule == schedule
        for dest in sorted(a.destinations)
    ]


def export(audience: str, to: str, as_of: str | dt.date, out: str | None = None) -> dict:
    """One audience to one destination (klaviyo, mailchimp) or to a CSV file (csv, csv-klaviyo,
    csv-mailchimp); returns the run summary as a dict."""
    import os
    from pathlib import Path

    settings = get_settings()
    day = as_of if isinstance(as_of, dt.date) else dt.date.fromisoformat(as_of)
    platform = getattr(settings.activation, to, None) if to in ("klaviyo", "mailchimp") else None
    if platform and not os.environ.get(platform.credential_env) and settings.activation.without_key == "csv":
        progress(
            f"{audience}: no ${platform.credential_env}, so {to}'s import file instead "
            "(activation.without_key: csv)"
        )
        to = f"csv-{to}"
    if to.startswith("csv"):
        from p13n.activation.files import export_csv

        fmt = to.split("-", 1)[1] if "-" in to else _csv_format(settings, audience)
        t0 = time.perf_counter()
        path, rows = export_csv(settings, audience, day, fmt, Path(out) if out else None)
        progress(f"{audience}: {rows:,} customers written to {path} ({fmt}'s import format)")
        record_file_export(settings, audience, f"csv-{fmt}", day, rows, time.perf_counter() - t0)
        return {"audience": audience, "destination": f"csv-{fmt}", "rows": rows, "path": str(path)}
    from p13n.activation.sync import sync

    summary = sync(settings, audience, to, day, progress=progress)
    row = summary.row()
    return row | {"finished_at": row["finished_at"].isoformat()}


def export_all(schedule: str, as_of: str) -> list[dict]:
    """Every (audience, destination) of a schedule; one failing does not stop the others, and the task
    fails at the end naming every failure."""
    from p13n.activation.sync import SyncError

    done, failed = [], []
    for audience, dest in audiences_for(schedule):
        try:
            done.append(export(audience, dest, as_of))
        except SyncError as e:
            failed.append(f"{dest} · {audience}: {e}")
    if failed:
        raise RuntimeError("audience syncs failed: " + " | ".join(failed))
    return done


def _csv_format(settings, audience: str) -> str:
    dests = (
        settings.activation.audiences[audience].destinations
        if audience in settings.activation.audiences
        else {}
    )
    return "mailchimp" if "mailchimp" in dests and "klaviyo" not in dests else "klaviyo"


def record_file_export(
    settings, audience: str, destination: str, as_of: dt.date, rows: int, seconds: float
) -> None:
    """A file export's row in `ops.export_runs`, shaped like a platform sync's (all rows are adds)."""
    import uuid

    from p13n.activation.sync import RunSummary, record_run

    summary = RunSummary(
        destination,
        audience,
        as_of.isoformat(),
        uuid.uuid4().hex[:12],
        eligible=rows,
        added=rows,
        seconds=round(seconds, 2),
        status="succeeded",
    )
    record_run(settings, summary)


def warehouse_sync(as_of: str) -> dict:
    """Sync the gold tables to Snowflake and record each table's counts in `ops.warehouse_syncs`."""
    from p13n.activation.snowflake import sync_tables
    from p13n.lake.duck import append_rows

    settings = get_settings()
    day = dt.date.fromisoformat(as_of)
    out = sync_tables(settings, day, progress=progress)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    append_rows(
        settings,
        OPS_WAREHOUSE_SYNCS,
        [{"as_of_date": day, "table_name": t, **v, "synced_at": now} for t, v in out.items()],
    )
    return out


def export_task(audience: str, to: str, ds: str) -> dict:
    """The DAGs' export: a configuration problem (no key, no such list) fails without retries;
    throttling, 5xx and timeouts that outlast the client's own retries are retried by Airflow, and
    the retry resumes from the confirmed state."""
    from p13n.activation.audiences import AudienceError
    from p13n.activation.sync import SyncError

    try:
        return export(audience, to, ds)
    except (SyncError, AudienceError) as exc:
        if isinstance(exc, SyncError) and exc.retryable:
            raise
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(str(exc)) from None
