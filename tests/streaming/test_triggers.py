"""Behavioural triggers: exact cases on a few inline events (pure pandas, no services)."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from p13n.config import TriggerSettings
from p13n.streaming.triggers import COLUMNS, evaluate

NOW = dt.datetime(2024, 3, 10, 12, 0, tzinfo=dt.UTC)


def _events(rows):
    df = pd.DataFrame(
        rows, columns=["customer_id", "event_id", "event_type", "sku", "session_id", "minutes_ago"]
    )
    df["event_at"] = NOW - pd.to_timedelta(df.pop("minutes_ago"), unit="min")
    return df


def _consents(*ids, email="granted"):
    return pd.DataFrame({"customer_id": list(ids), "consent_email": email})


NONE = pd.DataFrame(columns=COLUMNS)
S = TriggerSettings(
    abandoned_cart_minutes=60,
    browse_min_views=3,
    browse_idle_minutes=30,
    post_purchase_days=3,
    winback_days=120,
    max_per_day=1,
    max_per_week=3,
)


def test_each_trigger_fires_on_its_case_and_not_on_the_near_misses():
    events = _events(
        [
            # C1: added two items 90 min ago, removed one: abandoned cart anchored on the item still held.
            ("C1", "e1", "add_to_cart", "A", "s1", 95),
            ("C1", "e2", "add_to_cart", "B", "s1", 90),
            ("C1", "e3", "remove_from_cart", "B", "s1", 85),
            # C2: added then bought: no abandoned cart. Bought 5 days ago: a post-purchase follow-up.
            ("C2", "e4", "add_to_cart", "A", "s2", 7300),
            ("C2", "e5", "purchase", "A", "s2", 7200),
            # C3: added 20 minutes ago: not yet abandoned.
            ("C3", "e6", "add_to_cart", "C", "s3", 20),
            # C4: three views of D in a session idle for 40 minutes, no cart: browse abandonment.
            ("C4", "e7", "product_view", "D", "s4", 50),
            ("C4", "e8", "product_view", "E", "s4", 45),
            ("C4", "e9", "product_view", "D", "s4", 40),
            # C5: three views but still browsing (10 minutes ago): nothing yet.
            ("C5", "e10", "product_view", "D", "s5", 12),
            ("C5", "e11", "product_view", "D", "s5", 11),
            ("C5", "e12", "product_view", "D", "s5", 10),
        ]
    )
    lapsed = pd.DataFrame({"customer_id": ["C6", "C4"]})  # C4 is active in the stream: no win-back
    out = evaluate(events, NOW, S, _consents("C1", "C2", "C3", "C4", "C5", "C6"), NONE, lapsed)
    got = sorted(
        zip(out["customer_id"], out["trigger"], out["anchor_sku"].fillna("-"), out["status"], strict=True)
    )
    assert got == [
        ("C1", "abandoned_cart", "A", "sent"),
        ("C2", "post_purchase", "A", "sent"),
        ("C4", "browse_abandonment", "D", "sent"),
        ("C6", "win_back", "-", "sent"),
    ]

    # The same events again: nothing new (deterministic ids against the history).
    assert evaluate(events, NOW, S, _consents("C1", "C2", "C4", "C6"), out, lapsed).empty


def test_consent_and_frequency_caps_suppress_with_the_reason():
    events = _events(
        [
            ("C1", "e1", "add_to_cart", "A", "s1", 90),
            ("C1", "e2", "product_view", "B", "s0", 300),
            ("C1", "e3", "product_view", "B", "s0", 299),
            ("C1", "e4", "product_view", "B", "s0", 298),
            ("C2", "e5", "add_to_cart", "A", "s2", 90),
        ]
    )
    consents = pd.concat([_consents("C1"), _consents("C2", email="revoked")])
    out = evaluate(events, NOW, S, consents, NONE).set_index(["customer_id", "trigger"])
    # C1: the cart (higher priority) is sent, the browse abandonment hits the 1-a-day cap.
    assert out.loc[("C1", "abandoned_cart"), "status"] == "sent"
    assert tuple(out.loc[("C1", "browse_abandonment"), ["status", "reason"]]) == (
        "suppressed",
        "frequency cap: 1 a day",
    )
    assert tuple(out.loc[("C2", "abandoned_cart"), ["status", "reason"]]) == (
        "suppressed",
        "no email consent",
    )

    # Three sent this week already (none today): the weekly cap holds the next one back.
    history = pd.DataFrame(
        {
            "trigger_id": ["x1", "x2", "x3"],
            "customer_id": ["C1"] * 3,
            "trigger": ["post_purchase"] * 3,
            "channel": ["email"] * 3,
            "anchor_sku": [None] * 3,
            "event_at": [NOW] * 3,
            "triggered_at": [NOW - dt.timedelta(days=d) for d in (1, 2, 3)],
            "trigger_date": [(NOW - dt.timedelta(days=d)).date() for d in (1, 2, 3)],
            "status": ["sent"] * 3,
            "reason": [""] * 3,
        }
    )
    capped = evaluate(events[events["customer_id"] == "C1"], NOW, S, consents, history)
    assert set(capped["reason"]) == {"frequency cap: 3 a week"}


def test_a_batch_of_win_backs_writes_a_table_readers_accept(tmp_path):
    """No anchor item and no event time in the batch: the columns keep their types (not Delta's void)."""
    import datetime as dt

    import pandas as pd
    import pyarrow as pa
    from deltalake import write_deltalake

    from p13n.lake.duck import duckdb_connection
    from p13n.streaming.triggers import COLUMNS, SCHEMA

    now = dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC)
    batch = pd.DataFrame(
        [
            {
                "trigger_id": "win_back:C1:2024-03-01",
                "customer_id": "C1",
                "trigger": "win_back",
                "channel": "email",
                "anchor_sku": None,
                "event_at": None,
                "triggered_at": now,
                "trigger_date": now.date(),
                "status": "sent",
                "reason": None,
            }
        ]
    )
    write_deltalake(
        str(tmp_path / "t"), pa.Table.from_pandas(batch[COLUMNS], schema=SCHEMA, preserve_index=False)
    )
    rows = (
        duckdb_connection()
        .execute(f"SELECT trigger, anchor_sku, event_at FROM delta_scan('{tmp_path / 't'}')")
        .fetchall()
    )
    assert rows == [("win_back", None, None)]


def test_a_past_days_stream_triggers_are_evaluated_once(settings, tmp_path, monkeypatch):
    """A replayed past day (a rerun of its night) adds no trigger: identity, consents and stages have
    moved on since the day, and the night's journeys read the day's triggers."""
    from p13n.lake.duck import duckdb_connection, scan
    from p13n.lake.tables import GOLD_TRIGGERED_AUDIENCES
    from p13n.streaming import tasks

    s = settings.model_copy(update={"data_dir": tmp_path})
    monkeypatch.setattr(tasks, "get_settings", lambda: s)
    monkeypatch.setattr(tasks, "with_cadence", lambda settings, con, new, now: new)
    evaluated = []

    def evaluate_now(settings, con, now):  # what the day's events trigger when evaluated at `now`
        evaluated.append(now)
        c = f"C{len(evaluated)}"
        at = pd.Timestamp(now)
        row = [f"{c}-cart", c, "abandoned_cart", "email", "SKU-1", at, at, now.date(), "sent", None]
        return pd.DataFrame([row], columns=COLUMNS)

    monkeypatch.setattr(tasks, "evaluate_triggers", evaluate_now)
    assert tasks.triggers_task(day="2024-03-02") == {"triggered": 1, "suppressed": 0}
    assert tasks.triggers_task(day="2024-03-02") == {"triggered": 0, "suppressed": 0}
    assert evaluated == [dt.datetime(2024, 3, 2, 23, 59, 59, tzinfo=dt.UTC)]
    assert tasks.triggers_task(day="2024-03-03") == {"triggered": 1, "suppressed": 0}
    rows = duckdb_connection().execute(
        f"SELECT customer_id, trigger_date FROM {scan(s.lake_root, GOLD_TRIGGERED_AUDIENCES)} ORDER BY 2"
    )
    assert rows.fetchall() == [("C1", dt.date(2024, 3, 2)), ("C2", dt.date(2024, 3, 3))]
