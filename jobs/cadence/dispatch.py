"""Dispatch: each scheduled message of the contact ledger handed to its platform once it is due.

The ledger says when every trigger and journey message goes out (`scheduled_at`: the customer's best
hour, out of their quiet hours). `stream_events` runs every five minutes; its `dispatch` task takes
the messages due by then that were never dispatched and hands them over:

* **email and SMS** to Klaviyo as events of the metric `Message Due (p13n)` (bulk jobs of 1,000), each
  with the message's program, step, channel and template as properties and its ledger id as the
  event's unique id, so a Klaviyo flow on that metric sends it; the profile is named by the channel's
  address only (the email, or the number in E.164);
* without a Klaviyo key (`activation.without_key: csv`, as the exports do): to an outbox file per run
  under `<data>/exports/outbox/` (owner-only: it holds addresses);
* **push** is recorded undeliverable: the lake holds no push registration tokens (the app's events
  carry device ids only).

`ops.dispatches` records each message once (sent, outbox, undeliverable or without an address);
a message recorded is never handed over again, so a rerun or a retry after a failed batch sends only
what is left. Audience messages are not dispatched here: the platforms receive their lists nightly.
"""

from __future__ import annotations

import datetime as dt
import os

import pandas as pd
import pyarrow as pa

from p13n.cadence.ledger import SCHEDULED
from p13n.lake.tables import OPS_CONTACT_LEDGER, OPS_DISPATCHES, RESTRICTED_CUSTOMER_PROFILES

METRIC = "Message Due (p13n)"
LOOKBACK_DAYS = 14  # a message due longer ago than this is not sent late
SCHEMA = pa.schema(
    [
        ("message_id", pa.string()),
        ("customer_id", pa.string()),
        ("channel", pa.string()),
        ("program_type", pa.string()),
        ("program", pa.string()),
        ("step", pa.string()),
        ("scheduled_at", pa.timestamp("us", tz="UTC")),
        ("destination", pa.string()),  # klaviyo | outbox | none
        ("status", pa.string()),  # sent | outbox | undeliverable
        ("detail", pa.string()),
        ("dispatched_at", pa.timestamp("us", tz="UTC")),
        ("dispatch_date", pa.date32()),
    ]
)


def due(settings, con, now: dt.datetime) -> pd.DataFrame:
    """The trigger and journey messages scheduled by `now` and never dispatched, with the address
    their channel needs (read from the restricted zone for these customers only)."""
    from p13n.lake.duck import scan, table_exists

    root = settings.lake_root
    if not table_exists(root, OPS_CONTACT_LEDGER):
        return pd.DataFrame()
    done = (
        f"AND message_id NOT IN (SELECT message_id FROM {scan(root, OPS_DISPATCHES)})"
        if table_exists(root, OPS_DISPATCHES)
        else ""
    )
    contacts = (
        f"LEFT JOIN (SELECT customer_id, email, phone FROM {scan(root, RESTRICTED_CUSTOMER_PROFILES)}) r "
        "USING (customer_id)"
        if table_exists(root, RESTRICTED_CUSTOMER_PROFILES)
        else "LEFT JOIN (SELECT NULL::VARCHAR AS customer_id, NULL AS email, NULL AS phone) r "
        "USING (customer_id)"
    )
    return con.execute(
        f"""SELECT l.message_id, l.customer_id, l.channel, l.program_type, l.program, l.step,
                   l.scheduled_at, r.email, r.phone
            FROM {scan(root, OPS_CONTACT_LEDGER)} l {contacts}
            WHERE l.status = ? AND l.program_type IN ('trigger', 'journey') AND l.scheduled_at <= ?
              AND l.ledger_date >= ? {done}
            ORDER BY l.scheduled_at, l.message_id""",
        [SCHEDULED, now, now.date() - dt.timedelta(days=LOOKBACK_DAYS)],
    ).df()


def _template(program_type: str, program: str, step: str) -> str:
    if program_type == "journey":
        from p13n.journeys.model import journeys

        journey = journeys().get(program)
        if journey is not None:
            try:
                return journey.step(step).template or step
            except KeyError:
                return step
    return program  # a trigger's template is its name


def _records(rows: pd.DataFrame, destination: str, status: str, detail: str, now: dt.datetime) -> list[dict]:
    return [
        {
            "message_id": r.message_id,
            "customer_id": r.customer_id,
            "channel": r.channel,
            "program_type": r.program_type,
            "program": r.program,
            "step": r.step,
            "scheduled_at": r.scheduled_at,
            "destination": destination,
            "status": status,
            "detail": detail,
            "dispatched_at": now,
            "dispatch_date": now.date(),
        }
        for r in rows.itertuples(index=False)
    ]


def dispatch(settings, now: dt.datetime | None = None, client=None, progress=print) -> dict[str, int]:
    """Hand every message due by `now` (UTC) to its platform and record it; returns counts by status."""
    from p13n.activation.sync import chunks
    from p13n.lake.duck import duckdb_connection, write_arrow

    now = now or dt.datetime.now(dt.UTC)
    rows = due(settings, duckdb_connection(settings=settings), now)
    counts: dict[str, int] = {}
    if rows.empty:
        progress(f"dispatch at {now:%Y-%m-%d %H:%M}: nothing due")
        return counts

    def record(part: pd.DataFrame, destination: str, status: str, detail: str = "") -> None:
        if part.empty:
            return
        table = pa.Table.from_pylist(_records(part, destination, status, detail, now), schema=SCHEMA)
        write_arrow(settings, OPS_DISPATCHES, table, partition_by=["dispatch_date"])
        counts[status] = counts.get(status, 0) + len(part)

    record(
        rows[rows["channel"] == "push"],
        "none",
        "undeliverable",
        "no push platform: the lake holds no push registration tokens",
    )
    messages = rows[rows["channel"].isin(["email", "sms"])].copy()
    address = messages["phone"].where(messages["channel"] == "sms", messages["email"])
    record(messages[address.isna()], "none", "undeliverable", "no address for the channel")
    messages = messages[address.notna()]
    messages["template"] = [
        _template(t, p, s)
        for t, p, s in zip(messages["program_type"], messages["program"], messages["step"], strict=True)
    ]
    cfg = settings.activation.klaviyo
    if client is None and os.environ.get(cfg.credential_env):
        from p13n.activation.klaviyo import Klaviyo

        client = Klaviyo(settings, os.environ[cfg.credential_env])
    if client is not None:
        for part in chunks(messages.to_dict("records"), 1000):
            events = [
                r
                | {
                    "at": pd.Timestamp(r["scheduled_at"]).isoformat(),
                    "properties": {
                        k: r[k]
                        for k in ("program_type", "program", "step", "channel", "template", "message_id")
                    },
                }
                for r in part
            ]
            client.send_events(METRIC, events)  # a failure raises: nothing of this batch is recorded
            record(pd.DataFrame(part), "klaviyo", "sent")
    elif len(messages):
        path = settings.data_dir / "exports" / "outbox" / f"{now:%Y-%m-%d}" / f"{now:%H%M%S}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        cols = ["message_id", "customer_id", "channel", "email", "phone", "program_type", "program", "step"]
        with os.fdopen(fd, "w", newline="") as f:
            messages.assign(send_at=messages["scheduled_at"])[[*cols, "template", "send_at"]].to_csv(
                f, index=False
            )
        record(messages, "outbox", "outbox", str(path))
    progress(
        f"dispatch at {now:%Y-%m-%d %H:%M}: "
        + ", ".join(f"{n:,} {status}" for status, n in sorted(counts.items()))
    )
    return counts
