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


def _lake_with_keys(tmp_path, key_type: str, keys: dict[str, str]):
    """Test settings over an empty lake whose identity graph holds `keys` (key value -> customer)."""
    from deltalake import write_deltalake

    from p13n.config import load_settings

    s = load_settings("test", environ={"P13N_DATA_DIR": str(tmp_path / "data")})
    frame = pd.DataFrame({"key_type": key_type, "key_value": list(keys), "customer_id": list(keys.values())})
    write_deltalake(f"{s.lake_root}/gold/identity_keys", frame)
    return s


def test_the_night_writes_its_triggers_once_through_the_ledger_and_a_rerun_writes_the_same(tmp_path):
    from deltalake import write_deltalake

    from p13n.journeys.triggers import run_nightly_triggers
    from p13n.lake.duck import duckdb_connection, scan
    from p13n.lake.tables import GOLD_TRIGGERED_AUDIENCES, OPS_CONTACT_LEDGER

    s = _lake_with_keys(tmp_path, "shopify_customer_id", {"S1": "A", "S2": "B"})
    root = s.lake_root
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


def test_loyalty_anniversaries_from_the_second_year_on():
    members = pd.DataFrame(
        {
            "customer_id": ["A", "B", "C", "D"],
            "enrolled_at": [
                pd.Timestamp("2022-03-05 09:00", tz="UTC"),
                pd.Timestamp("2024-03-05 01:00", tz="UTC"),  # enrolled that very day: no anniversary
                pd.Timestamp("2020-02-29 12:00", tz="UTC"),
                None,
            ],
        }
    )
    assert ids(tr.anniversaries(members, DAY, 0)) == ["loyalty_anniversary:A:2024"]
    assert ids(tr.anniversaries(members, dt.date(2023, 2, 28), 0)) == ["loyalty_anniversary:C:2023"]
    assert ids(tr.anniversaries(members, dt.date(2024, 2, 22), 7)) == ["loyalty_anniversary:C:2024"]


def test_points_expiring_warn_members_holding_points_within_the_window():
    last = pd.Timestamp(DAY, tz="UTC") - pd.Timedelta(days=340)  # expires in 25 days
    members = pd.DataFrame(
        {
            "customer_id": ["A", "B", "C", "D", "E"],
            "points_balance": [1200, 0, 800, 500, None],
            "last_activity": [
                last + pd.Timedelta(hours=15),
                last,  # no points to lose
                last + pd.Timedelta(days=10),  # expires in 35 days: not yet
                last - pd.Timedelta(days=30),  # expired 5 days ago: too late to warn
                last,
            ],
        }
    )
    found = tr.points_expiring(members, DAY, 365, 30)
    assert ids(found) == ["points_expiring:A:2024-03-30"]
    # the day before the window opens nothing; a new activity moves the expiry and warns again later
    assert tr.points_expiring(members, DAY - dt.timedelta(days=1), 365, 25).empty


def test_tier_moves_up_and_down_against_the_latest_earlier_tier():
    before = pd.DataFrame(
        {"loyalty_id": ["L1", "L2", "L3", "L4"], "tier": ["member", "gold", "silver", "gold"]}
    )
    now = pd.DataFrame(
        {
            "customer_id": ["A", "B", "C", "E"],
            "loyalty_id": ["L1", "L2", "L3", "L5"],  # L5 is new: no move
            "tier": ["gold", "silver", "silver", "gold"],
        }
    )
    found = tr.tier_changes(before, now, ("member", "silver", "gold", "platinum"), DAY)
    assert ids(found) == ["tier_downgrade:B:silver@2024-03-05", "tier_upgrade:A:gold@2024-03-05"]


def test_the_loyalty_triggers_read_the_lake(tmp_path):
    from deltalake import write_deltalake

    from p13n.lake.duck import duckdb_connection

    s = _lake_with_keys(tmp_path, "loyalty_id", {"L1": "A", "L2": "B", "L3": "C"})
    root = s.lake_root
    utc = lambda x: pd.Timestamp(x, tz="UTC")  # noqa: E731
    write_deltalake(
        f"{root}/silver/loyalty_members",
        pd.DataFrame(
            {
                "loyalty_id": ["L1", "L2", "L3"],
                "tier": ["gold", "silver", "member"],
                "points_balance": [900, 300, 50],
                # L1's enrolment anniversary; L2 enrolled 350 days ago and did nothing since
                "enrolled_at": [
                    utc("2021-03-05 08:00"),
                    utc(DAY) - pd.Timedelta(days=350),
                    utc("2022-06-01"),
                ],
            }
        ),
    )
    write_deltalake(
        f"{root}/silver/loyalty_points_ledger",
        pd.DataFrame(
            {
                "entry_id": ["E1", "E2"],
                "loyalty_id": ["L3", "L3"],
                # L3's points would expire on 2024-03-20, but a redemption after the day does not count
                "posted_at": [utc("2023-03-21 10:00"), utc("2024-03-07 10:00")],
                "points": [100, -50],
            }
        ),
    )
    bronze = pd.DataFrame(
        {
            "loyalty_id": ["L1", "L1", "L2", "L1"],
            "tier": ["silver", "Gold ", "gold", "platinum"],
            "updated_at": ["2024-03-01T00:00:00Z", "2024-03-05T09:00:00Z", "2024-03-05T09:00:00Z", "x"],
            "_batch_date": [dt.date(2024, 3, 1), DAY, DAY, DAY + dt.timedelta(days=1)],
        }
    )
    write_deltalake(f"{root}/bronze/loyalty_members", bronze)
    found = tr.find(s, duckdb_connection(settings=s), DAY)
    assert ids(found) == [
        "loyalty_anniversary:A:2024",
        "points_expiring:B:2024-03-20",
        "points_expiring:C:2024-03-20",
        "tier_upgrade:A:gold@2024-03-05",  # silver on 1 March; L2 has no earlier tier
    ]
