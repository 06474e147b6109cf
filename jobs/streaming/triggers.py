"""Behavioural triggers from the event stream: who should get which journey message now.

`evaluate` is pure (events, consents, history and lapsed customers in; triggered rows out):

* **abandoned_cart**: items added since the last purchase and still in the cart, the latest add
  older than `abandoned_cart_minutes`;
* **browse_abandonment**: a session with `browse_min_views` product views or more, no cart add or
  purchase, idle for `browse_idle_minutes`;
* **post_purchase**: a purchase `post_purchase_days` ago;
* **win_back**: a customer the nightly lifecycle calls lapsed, with no event in `winback_days`.

Each trigger has a deterministic id (its customer, kind and anchor: the cart's last add, the session,
the order, the month), so an evaluation repeated on the same events triggers nothing new. A trigger
is `sent` only if the customer consented to its channel and is under the frequency cap (per day and
per week, all triggers together, counting what was sent before); otherwise it is recorded
`suppressed` with the reason, so marketing can see what the cap and consent held back.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow as pa

from p13n.config import TriggerSettings

PRIORITY = ("abandoned_cart", "browse_abandonment", "post_purchase", "win_back")
COLUMNS = [
    "trigger_id",
    "customer_id",
    "trigger",
    "channel",
    "anchor_sku",
    "event_at",
    "triggered_at",
    "trigger_date",
    "status",
    "reason",
]
# The table's types, whatever a batch holds (a batch of win-backs has no anchor item and no event time:
# left to inference, such a column would be written as Delta's `void`, which readers refuse).
SCHEMA = pa.schema(
    [
        ("trigger_id", pa.string()),
        ("customer_id", pa.string()),
        ("trigger", pa.string()),
        ("channel", pa.string()),
        ("anchor_sku", pa.string()),
        ("event_at", pa.timestamp("us", tz="UTC")),
        ("triggered_at", pa.timestamp("us", tz="UTC")),
        ("trigger_date", pa.date32()),
        ("status", pa.string()),
        ("reason", pa.string()),
    ]
)


def _rows(df: pd.DataFrame, kind: str, anchor: str, at: str, sku: str | None) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "trigger_id": kind + ":" + df["customer_id"] + ":" + df[anchor].astype(str),
            "customer_id": df["customer_id"],
            "trigger": kind,
            "anchor_sku": df[sku] if sku else None,
            "event_at": df[at],
        }
    )


def abandoned_carts(events: pd.DataFrame, now: dt.datetime, minutes: int) -> pd.DataFrame:
    e = events.sort_values("event_at")
    last_purchase = e[e["event_type"] == "purchase"].groupby("customer_id")["event_at"].max()
    e = e.join(last_purchase.rename("last_purchase"), on="customer_id")
    since = e[e["last_purchase"].isna() | (e["event_at"] > e["last_purchase"])]
    cart = since[since["event_type"].isin(["add_to_cart", "remove_from_cart"])]
    latest = cart.groupby(["customer_id", "sku"]).tail(1)  # each item's latest cart event
    held = latest[latest["event_type"] == "add_to_cart"]
    last_add = held.groupby("customer_id").tail(1)  # events are in time order
    due = last_add[last_add["event_at"] <= now - dt.timedelta(minutes=minutes)]
    return _rows(
        due.assign(anchor=due["event_at"].map(lambda t: t.isoformat())),
        "abandoned_cart",
        "anchor",
        "event_at",
        "sku",
    )


def browse_abandonments(
    events: pd.DataFrame, now: dt.datetime, min_views: int, idle_minutes: int
) -> pd.DataFrame:
    s = events[events["session_id"].notna()]
    g = s.groupby(["customer_id", "session_id"])
    summary = pd.DataFrame(
        {
            "views": g["event_type"].agg(lambda t: int((t == "product_view").sum())),
            "intent": g["event_type"].agg(
                lambda t: bool(t.isin(["add_to_cart", "purchase", "checkout_start"]).any())
            ),
            "last_at": g["event_at"].max(),
        }
    ).reset_index()
    top = (
        s[s["event_type"] == "product_view"]
        .groupby(["customer_id", "session_id", "sku"])
        .size()
        .rename("n")
        .reset_index()
        .sort_values(["n", "sku"], ascending=[False, True])
        .drop_duplicates(["customer_id", "session_id"])
    )
    summary = summary.merge(
        top[["customer_id", "session_id", "sku"]], on=["customer_id", "session_id"], how="left"
    )
    due = summary[
        (summary["views"] >= min_views)
        & ~summary["intent"]
        & (summary["last_at"] <= now - dt.timedelta(minutes=idle_minutes))
    ]
    return _rows(due, "browse_abandonment", "session_id", "last_at", "sku")


def post_purchases(events: pd.DataFrame, now: dt.datetime, days: int) -> pd.DataFrame:
    p = events[(events["event_type"] == "purchase") & (events["event_at"] <= now - dt.timedelta(days=days))]
    return _rows(p, "post_purchase", "event_id", "event_at", "sku")


def win_backs(lapsed: pd.DataFrame, events: pd.DataFrame, now: dt.datetime, days: int) -> pd.DataFrame:
    recent = set(events.loc[events["event_at"] > now - dt.timedelta(days=days), "customer_id"])
    due = lapsed[~lapsed["customer_id"].isin(recent)].copy()
    due["month"] = f"{now:%Y-%m}"
    due["event_at"] = now
    return _rows(due, "win_back", "month", "event_at", None)


def evaluate(
    events: pd.DataFrame,
    now: dt.datetime,
    settings: TriggerSettings,
    consents: pd.DataFrame,
    history: pd.DataFrame,
    lapsed: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """New triggers (sent or suppressed, with the reason), none that `history` already holds.

    `events`: customer_id, event_id, event_type, sku, session_id, event_at (UTC, tz-aware);
    `consents`: customer_id, consent_<channel> ('granted' or not); `history`: earlier rows of COLUMNS."""
    found = pd.concat(
        [
            abandoned_carts(events, now, settings.abandoned_cart_minutes),
            browse_abandonments(events, now, settings.browse_min_views, settings.browse_idle_minutes),
            post_purchases(events, now, settings.post_purchase_days),
            win_backs(
                lapsed if lapsed is not None else pd.DataFrame(columns=["customer_id"]),
                events,
                now,
                settings.winback_days,
            ),
        ],
        ignore_index=True,
    )
    found = found[~found["trigger_id"].isin(set(history["trigger_id"]))].copy()
    if found.empty:
        return pd.DataFrame(columns=COLUMNS)
    found["channel"] = found["trigger"].map(settings.channels)
    found["priority"] = found["trigger"].map(PRIORITY.index)
    found = found.sort_values(["customer_id", "priority", "event_at"]).reset_index(drop=True)
    consent = consents.set_index("customer_id")
    sent_before = history[history["status"] == "sent"].copy()
    sent_before["trigger_date"] = pd.to_datetime(
        sent_before["trigger_date"]
    ).dt.date  # read back as timestamps
    today, week_start = now.date(), now - dt.timedelta(days=7)
    statuses, reasons = [], []
    count_day: dict[str, int] = (
        sent_before[sent_before["trigger_date"] == today].groupby("customer_id").size().to_dict()
    )
    count_week: dict[str, int] = (
        sent_before[pd.to_datetime(sent_before["triggered_at"], utc=True) > week_start]
        .groupby("customer_id")
        .size()
        .to_dict()
    )
    for row in found.itertuples():
        column = f"consent_{row.channel}"
        granted = (
            row.customer_id in consent.index
            and column in consent
            and consent.at[row.customer_id, column] == "granted"
        )
        if not granted:
            statuses.append("suppressed")
            reasons.append(f"no {row.channel} consent")
        elif count_day.get(row.customer_id, 0) >= settings.max_per_day:
            statuses.append("suppressed")
            reasons.append(f"frequency cap: {settings.max_per_day} a day")
        elif count_week.get(row.customer_id, 0) >= settings.max_per_week:
            statuses.append("suppressed")
            reasons.append(f"frequency cap: {settings.max_per_week} a week")
        else:
            statuses.append("sent")
            reasons.append("")
            count_day[row.customer_id] = count_day.get(row.customer_id, 0) + 1
            count_week[row.customer_id] = count_week.get(row.customer_id, 0) + 1
    found["status"], found["reason"] = statuses, reasons
    found["triggered_at"], found["trigger_date"] = now, today
    return found[COLUMNS]
