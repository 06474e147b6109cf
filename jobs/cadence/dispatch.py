"""Dispatch: each scheduled message of the contact ledger handed to its platform once it is due.

The ledger says when every trigger and journey message goes out (`scheduled_at`: the customer's best
hour, out of their quiet hours). `stream_events` runs every five minutes; its `dispatch` task takes
the messages due by then that were never dispatched and hands them over:

* **email and SMS** to Klaviyo as events of the metric `Message Due (p13n)` (bulk jobs of 1,000), each
  with the message's program, step, channel and template as properties and its ledger id as the
  event's unique id, so a Klaviyo flow on that metric sends it; the profile is named by the channel's
  address only (the email, or the number in E.164);
* with `cadence.email_platform: mailchimp`, **email** to Mailchimp instead: each template's Customer
  Journey API-trigger step (`activation.mailchimp.journey_steps`) started per contact, who is added to
  the journey's audience first when not a member (never resubscribed when Mailchimp holds them as
  unsubscribed);
* without a key (`activation.without_key: csv`, as the exports do): to an outbox file per run
  under `<data>/exports/outbox/` (owner-only: it holds addresses);
* **push** to Firebase Cloud Messaging (HTTP v1, `p13n.activation.fcm`), one message per device of
  the customer: the app's device ids (the app reports its FCM registration token as its device id)
  seen in `app_events` within `activation.fcm.device_days`, the latest `max_devices`, tied to the
  customer through the identity graph. The notification is the template's (`activation.fcm.templates`)
  and the data carry the message's ids. A message is `sent` when one device took it; the detail counts
  the devices FCM refused (a token it no longer knows: `unregistered`). Without credentials, push
  messages go to the outbox with their device tokens.

`ops.dispatches` records each message once (sent, outbox, or undeliverable: no address, no device);
a message recorded is never handed over again, so a rerun or a retry after a failed batch sends only
what is left. Audience messages are not dispatched here: the platforms receive their lists nightly.
"""

from __future__ import annotations

import datetime as dt
import os

import pandas as pd
import pyarrow as pa

from p13n.activation.sync import SyncError
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


def devices(settings, con, customers: list[str], now: dt.datetime) -> pd.DataFrame:
    """customer_id, devices (`;`-joined, the latest first): each customer's app device ids seen in
    `app_events` within `activation.fcm.device_days` before `now`, at most `max_devices`."""
    from p13n.lake.duck import scan, table_exists
    from p13n.lake.tables import GOLD_IDENTITY_KEYS, silver_table

    cfg, root = settings.activation.fcm, settings.lake_root
    events = silver_table("app_events")
    if not customers or not (table_exists(root, events) and table_exists(root, GOLD_IDENTITY_KEYS)):
        return pd.DataFrame(columns=["customer_id", "devices"])
    con.register("_push_customers", pd.DataFrame({"customer_id": customers}))
    try:
        return con.execute(
            f"""WITH seen AS (
                    SELECT k.customer_id, e.device_id, max(CAST(e.event_at AS TIMESTAMP)) AS last_seen
                    FROM {scan(root, events)} e
                    JOIN {scan(root, GOLD_IDENTITY_KEYS)} k
                      ON k.key_type = ? AND k.key_value = e.{settings.stream.customer_fields["app_events"]}
                    WHERE k.customer_id IN (SELECT customer_id FROM _push_customers)
                      AND e.device_id IS NOT NULL
                      AND CAST(e.event_at AS TIMESTAMP) BETWEEN ? AND ?
                    GROUP BY 1, 2)
                SELECT customer_id, string_agg(device_id, ';' ORDER BY last_seen DESC, device_id)
                       FILTER (WHERE n <= ?) AS devices
                FROM (SELECT *, row_number() OVER (PARTITION BY customer_id
                                                   ORDER BY last_seen DESC, device_id) AS n FROM seen)
                GROUP BY 1""",
            [
                settings.stream.customer_key_type,
                (now - dt.timedelta(days=cfg.device_days)).replace(tzinfo=None),
                now.replace(tzinfo=None),
                cfg.max_devices,
            ],
        ).df()
    finally:
        con.unregister("_push_customers")


def _push_with_devices(settings, pushes: pd.DataFrame, now: dt.datetime) -> pd.DataFrame:
    """The push messages with their customer's devices (NaN: none) and templates."""
    from p13n.lake.duck import duckdb_connection

    if pushes.empty:
        return pushes.assign(devices=pd.Series(dtype=object), template=pd.Series(dtype=object))
    found = devices(settings, duckdb_connection(settings=settings), sorted(set(pushes["customer_id"])), now)
    out = pushes.merge(found, on="customer_id", how="left")
    out["template"] = [
        _template(t, p, s) for t, p, s in zip(out["program_type"], out["program"], out["step"], strict=True)
    ]
    return out


def _send_pushes(settings, client, pushes: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Send each message to each of its devices; per status, the messages with a detail saying how
    many devices took it and which tokens FCM refused."""
    from collections import Counter

    from p13n.activation.fcm import Result, payload

    templates = settings.activation.fcm.templates
    jobs, owners, refused = [], [], []
    for i, r in enumerate(pushes.itertuples(index=False)):
        note = templates.get(r.template)
        data = {
            "message_id": r.message_id,
            "program_type": r.program_type,
            "program": r.program,
            "step": r.step,
            "template": r.template,
        }
        for token in r.devices.split(";"):
            try:
                jobs.append(payload(token, data, note.title if note else "", note.body if note else ""))
                owners.append(i)
            except ValueError as e:
                refused.append((i, token, f"invalid: {e}"))
    results = client.send_all(jobs)
    per: dict[int, list] = {}
    for i, res in zip(owners, results, strict=True):
        per.setdefault(i, []).append(res)
    for i, token, why in refused:
        per.setdefault(i, []).append(Result(token, "invalid", why))
    status, detail = [], []
    for i in range(len(pushes)):
        got = per.get(i, [])
        sent = sum(r.status == "sent" for r in got)
        # counts only: a device's token is an identifier, and ops tables hold none
        bad = Counter(r.status for r in got if r.status != "sent")
        failed = bool(bad.get("failed"))
        status.append("sent" if sent else "failed" if failed else "undeliverable")
        detail.append(
            f"{sent} of {len(got)} devices" + "".join(f"; {n} {why}" for why, n in sorted(bad.items()))
        )
    out = pushes.assign(status=status, detail=detail)
    return {k: v for k, v in out.groupby("status", sort=False)}


def _mailchimp(settings, client):
    cfg = settings.activation.mailchimp
    if client is None and os.environ.get(cfg.credential_env):
        from p13n.activation.mailchimp import Mailchimp

        client = Mailchimp(settings, os.environ[cfg.credential_env])
    return client


def _send_mailchimp(settings, client, emails: pd.DataFrame):
    """Yield ((destination, status, detail), messages): each template's journey step started for its
    messages; a template with no step configured is undeliverable, saying so."""
    steps = settings.activation.mailchimp.journey_steps
    for template, part in emails.groupby("template", sort=True):
        step = steps.get(template)
        if step is None:
            why = f"no Mailchimp journey step for template {template!r} (activation.mailchimp.journey_steps)"
            yield ("none", "undeliverable", why), part
            continue
        outcome = client.trigger_journey(step, list(part["email"]))
        got = [outcome.get(e.lower(), ("rejected", "no answer")) for e in part["email"]]
        part = part.assign(_status=[g[0] for g in got], _detail=[g[1] for g in got])
        for (status, detail), group in part.groupby(["_status", "_detail"], sort=True):
            yield (
                (
                    ("mailchimp", "sent", detail)
                    if status == "sent"
                    else ("mailchimp", "undeliverable", f"{status}: {detail}")
                ),
                group.drop(columns=["_status", "_detail"]),
            )


def dispatch(
    settings,
    now: dt.datetime | None = None,
    client=None,
    progress=print,
    push_client=None,
    mailchimp_client=None,
) -> dict[str, int]:
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

    pushes = _push_with_devices(settings, rows[rows["channel"] == "push"], now)
    record(
        pushes[pushes["devices"].isna()],
        "none",
        "undeliverable",
        f"no push device: no app device id seen in {settings.activation.fcm.device_days} days",
    )
    pushes = pushes[pushes["devices"].notna()]
    fcm = settings.activation.fcm
    push_error: SyncError | None = None  # push's credentials or project wrong: email and SMS still go
    try:
        if push_client is None and len(pushes) and os.environ.get(fcm.credential_env):
            from p13n.activation.fcm import FCM

            push_client = FCM(settings, os.environ[fcm.credential_env])
        if push_client is not None and len(pushes):
            for status, part in _send_pushes(settings, push_client, pushes).items():
                if status == "failed":  # FCM never took it: not recorded, so the next dispatch retries
                    counts["failed"] = counts.get("failed", 0) + len(part)
                    continue
                for detail, group in part.groupby("detail", sort=False):
                    record(group, "fcm", status, detail)
    except SyncError as e:
        push_error, push_client = e, False  # False: not the outbox either; the next dispatch retries
        counts["failed"] = counts.get("failed", 0) + len(pushes)
    messages = rows[rows["channel"].isin(["email", "sms"])].copy()
    address = messages["phone"].where(messages["channel"] == "sms", messages["email"])
    record(messages[address.isna()], "none", "undeliverable", "no address for the channel")
    messages = messages[address.notna()]
    messages["template"] = [
        _template(t, p, s)
        for t, p, s in zip(messages["program_type"], messages["program"], messages["step"], strict=True)
    ]
    if settings.cadence.email_platform == "mailchimp":
        by_mailchimp = messages["channel"] == "email"
        mailchimp = _mailchimp(settings, mailchimp_client)
        if mailchimp is not None:
            for (destination, status, detail), part in _send_mailchimp(
                settings, mailchimp, messages[by_mailchimp]
            ):
                record(part, destination, status, detail)
            messages = messages[~by_mailchimp]
    cfg = settings.activation.klaviyo
    if client is None and os.environ.get(cfg.credential_env):
        from p13n.activation.klaviyo import Klaviyo

        client = Klaviyo(settings, os.environ[cfg.credential_env])
    if client is not None and len(messages):
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
        messages = messages.iloc[0:0]
    if push_client is None and len(pushes):  # no credentials: the outbox
        messages = pd.concat([messages, pushes], ignore_index=True)
    if len(messages):
        import uuid

        # a file per dispatch, never overwritten: two dispatches in one second (a retry, a rerun with
        # a given `now`) must not replace what the first handed over
        name = f"{now:%H%M%S}-{uuid.uuid4().hex[:8]}.csv"
        path = settings.data_dir / "exports" / "outbox" / f"{now:%Y-%m-%d}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        cols = [
            "message_id",
            "customer_id",
            "channel",
            "email",
            "phone",
            "devices",
            "program_type",
            "program",
        ]
        with os.fdopen(fd, "w", newline="") as f:
            messages.reindex(columns=[*cols, "step", "template", "scheduled_at"]).rename(
                columns={"scheduled_at": "send_at"}
            ).to_csv(f, index=False)
        record(messages, "outbox", "outbox", str(path))
    progress(
        f"dispatch at {now:%Y-%m-%d %H:%M}: "
        + ", ".join(f"{n:,} {status}" for status, n in sorted(counts.items()))
    )
    if push_error is not None:
        raise push_error  # the task fails and alerts, after the other channels went out
    return counts
