"""The nightly triggers from the batch sources, each on its case and its near misses (pure)."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from p13n.journeys import triggers as tr

DAY = dt.date(2024, 3, 5)
T = pd.Timestamp("2024-03-05 10:00")


def ids(frame):
    return sorted(frame["trigger_id"])


def test_a_checkout_with_no_order_after_it_is_abandoned():
    checkouts = pd.DataFrame(
        {
            "customer_id": ["A", "B", "C"],
            "checkout_id": ["K1", "K2", "K3"],
            "created_at": [T, T, T],
            "skus": ["S1,S2", "S3", None],
        }
    )
    orders = pd.DataFrame(
        {"customer_id": ["B", "C"], "ordered_at": [T + pd.Timedelta(minutes=5), T - pd.Timedelta(hours=1)]}
    )
    found = tr.checkout_abandonments(checkouts, orders)
    assert ids(found) == ["checkout_abandoned:A:K1", "checkout_abandoned:C:K3"]  # B ordered after it
    assert found.set_index("customer_id")["anchor_sku"].to_dict() == {"A": "S1", "C": None}


def test_birthdays_a_week_ahead_once_a_year_and_the_29th_of_february():
    people = pd.DataFrame(
        {
            "customer_id": ["A", "B", "C", "D"],
            "birth_date": [dt.date(1990, 3, 12), dt.date(1985, 3, 11), dt.date(2000, 2, 29), None],
        }
    )
    assert ids(tr.birthdays(people, DAY, 7)) == ["birthday:A:2024"]
    # 2025 is no leap year: 29 February birthdays are told on the 28th
    assert ids(tr.birthdays(people, dt.date(2025, 2, 21), 7)) == ["birthday:C:2025"]
    assert ids(tr.birthdays(people, dt.date(2024, 2, 22), 7)) == ["birthday:C:2024"]


def test_interest_is_the_latest_look_at_an_item_not_bought_since():
    views = pd.DataFrame(
        {
            "customer_id": ["A", "A", "B", "C"],
            "sku": ["S1", "S1", "S1", "S2"],
            "at": [T, T - pd.Timedelta(days=2), T, T],
        }
    )
    bought = pd.DataFrame(
        {
            "customer_id": ["B", "C"],
            "sku": ["S1", "S2"],
            "ordered_at": [T + pd.Timedelta(hours=1), T - pd.Timedelta(days=1)],
        }
    )
    got = tr.interested(views, bought)
    assert sorted(zip(got["customer_id"], got["sku"], strict=True)) == [("A", "S1"), ("C", "S2")]


def test_back_in_stock_and_price_drop_reach_the_interested():
    interest = pd.DataFrame({"customer_id": ["A", "B"], "sku": ["S1", "S2"], "at": [T, T]})
    before = pd.DataFrame({"sku": ["S1", "S2", "S3"], "on_hand": [0, 4, 0]})
    now = pd.DataFrame({"sku": ["S1", "S2", "S3"], "on_hand": [7, 4, 0]})
    assert ids(tr.back_in_stock(before, now, interest, DAY)) == ["back_in_stock:A:S1@2024-03-05"]
    promos = pd.DataFrame(
        {"promo_id": ["P1", "P2"], "sku": ["S1", "S2"], "promo_price": [8.0, 12.0], "starts_at": [T, T]}
    )
    prices = pd.Series({"S1": 10.0, "S2": 11.0})  # P2 is no drop
    assert ids(tr.price_drops(promos, prices, interest)) == ["price_drop:A:P1"]


def test_replenishment_when_a_repeat_item_is_due_tomorrow():
    def buys(customer, sku, days):
        return [
            {"customer_id": customer, "sku": sku, "ordered_at": pd.Timestamp(DAY) - pd.Timedelta(days=d)}
            for d in days
        ]

    lines = pd.DataFrame(
        buys("A", "S1", [59, 39, 19, 19])  # every 20 days, twice on one day counts once: due tomorrow
        + buys("B", "S1", [49, 29])  # two purchases only
        + buys("C", "S2", [60, 40, 20])  # due today, not tomorrow
    )
    assert ids(tr.replenishments(lines, DAY, 3)) == ["replenishment:A:S1@2024-03-06"]


def test_the_night_writes_its_triggers_once_through_the_ledger_and_a_rerun_writes_the_same(tmp_path):
    from deltalake import write_deltalake

    from p13n.config import load_settings
    from p13n.journeys.triggers import run_nightly_triggers
    from p13n.lake.duck import duckdb_connection, scan
    from p13n.lake.tables import GOLD_TRIGGERED_AUDIENCES, OPS_CONTACT_LEDGER

    s = load_settings("test", environ={"P13N_DATA_DIR": str(tmp_path / "data")})
    root = s.lake_root
    write_deltalake(
        f"{root}/gold/identity_keys",
        pd.DataFrame(
            {"key_type": "shopify_customer_id", "key_value": ["S1", "S2"], "customer_id": ["A", "B"]}
        ),
    )
    write_deltalake(
        f"{root}/gold/customer_profiles",
        pd.DataFrame({"customer_id": ["A", "B"], "state": "TX", "consent_email": ["granted", "revoked"]}),
    )
    write_deltalake(
        f"{root}/silver/shopify_abandoned_checkouts",
        pd.DataFrame(
            {
                "checkout_id": ["K1", "K2", "K0"],
                "customer_id": ["S1", "S2", "S1"],
                "created_at": [T, T, T - pd.Timedelta(days=1)],  # K0: the day before
                "skus": "X1",
            }
        ),
    )
    first = run_nightly_triggers(s, DAY)
    assert first["checkout_abandoned"] == {"sent": 1, "suppressed": 1}
    read = (
        f"SELECT trigger_id, status, reason FROM {scan(root, GOLD_TRIGGERED_AUDIENCES)} ORDER BY 1",
        f"SELECT customer_id, status, reason FROM {scan(root, OPS_CONTACT_LEDGER)} ORDER BY 1",
    )
    rows = [duckdb_connection(settings=s).execute(q).fetchall() for q in read]
    assert rows[0] == [
        ("checkout_abandoned:A:K1", "sent", ""),
        ("checkout_abandoned:B:K2", "suppressed", "no email consent"),
    ]
    assert rows[1] == [("A", "scheduled", ""), ("B", "no_consent", "no email consent")]
    assert run_nightly_triggers(s, DAY) == first
    assert [duckdb_connection(settings=s).execute(q).fetchall() for q in read] == rows
    # the next night fires nothing new for the same checkouts
    assert run_nightly_triggers(s, DAY + dt.timedelta(days=1))["checkout_abandoned"] == {}
