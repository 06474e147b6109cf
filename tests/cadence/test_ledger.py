"""The contact ledger's decisions on hand-made customers (pure: `allocate`, no lake)."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from p13n.cadence.ledger import CAPPED, COLUMNS, NO_CONSENT, SCHEDULED, allocate, ledger_date
from p13n.cadence.zones import zone_name
from p13n.config import CadenceSettings

CFG = CadenceSettings()
UTC = dt.UTC
NIGHT = dt.datetime(2024, 3, 5, tzinfo=UTC)  # the end of 2024-03-04: that night's decisions
CUSTOMERS = pd.DataFrame(
    {
        "customer_id": ["C1", "C2"],
        "state": ["CA", "ny "],
        "consent_email": ["granted", "granted"],
        "consent_sms": ["granted", "revoked"],
        "consent_push": ["granted", "granted"],
        "best_hour": [17, None],  # UTC hours: 17 is 09:00 in California
        "best_weekday": [None, None],
    }
)


def msg(customer, channel, ptype, program, step="s"):
    return {
        "customer_id": customer,
        "channel": channel,
        "program_type": ptype,
        "program": program,
        "step": step,
    }


def run(cands, ledger, at):
    return allocate(pd.DataFrame(cands), ledger, CUSTOMERS, CFG, at)


def by_program(rows):
    return {r.program: (r.status, r.reason) for r in rows.itertuples()}


def test_caps_hold_across_a_nightly_audience_a_journey_step_and_two_triggers():
    # The night of 2024-03-04: a journey step by SMS and an audience email, both for the next day.
    night = run(
        [msg("C1", "email", "audience", "vip_win_back"), msg("C1", "sms", "journey", "win_back", "offer")],
        pd.DataFrame(columns=COLUMNS),
        NIGHT,
    )
    assert (night["status"] == SCHEDULED).all()
    assert set(night["scheduled_at"]) == {dt.datetime(2024, 3, 5, 17, tzinfo=UTC)}  # 09:00 local
    assert set(night["local_date"]) == {dt.date(2024, 3, 5)}
    ledger = night
    # The next morning the stream fires an email trigger and a push trigger for the same customer.
    for at, channel, name in ((10, "email", "abandoned_cart"), (11, "push", "browse_abandonment")):
        rows = run([msg("C1", channel, "trigger", name)], ledger, NIGHT.replace(hour=at))
        ledger = pd.concat([ledger, rows], ignore_index=True)
    decided = by_program(ledger)
    assert decided["abandoned_cart"] == (CAPPED, "cap over all channels: 2 a day")
    assert decided["browse_abandonment"] == (CAPPED, "cap over all channels: 2 a day")
    assert decided["vip_win_back"][0] == decided["win_back"][0] == SCHEDULED
    # The whole day holds two messages, one per channel at most.
    sent = ledger[ledger["status"] == SCHEDULED]
    assert len(sent) == 2 and sent["channel"].is_unique
    # Without the SMS step, the email trigger meets the email cap and the push trigger goes out.
    ledger = night[night["program"] == "vip_win_back"]
    for at, channel, name in ((10, "email", "abandoned_cart"), (11, "push", "browse_abandonment")):
        rows = run([msg("C1", channel, "trigger", name)], ledger, NIGHT.replace(hour=at))
        ledger = pd.concat([ledger, rows], ignore_index=True)
    decided = by_program(ledger)
    assert decided["abandoned_cart"] == (CAPPED, "email cap: 1 a day")
    assert decided["browse_abandonment"] == (SCHEDULED, "quiet hours: moved to 08:00 America/Los_Angeles")


def test_a_higher_priority_program_of_the_same_night_takes_the_slot():
    rows = run(
        [msg("C1", "email", "audience", "vip_win_back"), msg("C1", "email", "journey", "welcome")],
        pd.DataFrame(columns=COLUMNS),
        NIGHT,
    )
    assert by_program(rows) == {"welcome": (SCHEDULED, ""), "vip_win_back": (CAPPED, "email cap: 1 a day")}
    assert rows.set_index("program")["priority"].to_dict() == {"welcome": 1, "vip_win_back": 2}


def test_a_rerun_decides_the_same_whatever_was_decided_after_it():
    first = run([msg("C1", "email", "journey", "welcome")], pd.DataFrame(columns=COLUMNS), NIGHT)
    later = run([msg("C1", "push", "trigger", "abandoned_cart")], first, NIGHT + dt.timedelta(hours=9))
    lower = run([msg("C1", "email", "audience", "vip_win_back")], first, NIGHT)  # same night, lower priority
    ledger = pd.concat([first, later, lower], ignore_index=True)
    again = run([msg("C1", "email", "journey", "welcome")], ledger, NIGHT)
    pd.testing.assert_frame_equal(again.reset_index(drop=True), first.reset_index(drop=True))
    assert by_program(lower) == {"vip_win_back": (CAPPED, "email cap: 1 a day")}


def test_the_weekly_cap_counts_the_seven_local_days_to_the_message():
    ledger = pd.DataFrame(columns=COLUMNS)
    statuses = []
    for day in range(4):
        at = NIGHT + dt.timedelta(days=day)
        rows = run([msg("C1", "email", "journey", f"j{day}")], ledger, at)
        ledger = pd.concat([ledger, rows], ignore_index=True)
        statuses.append((rows["status"].iloc[0], rows["reason"].iloc[0]))
    assert statuses == [(SCHEDULED, "")] * 3 + [(CAPPED, "email cap: 3 a week")]
    # a week after the first, there is room again
    rows = run([msg("C1", "email", "journey", "j7")], ledger, NIGHT + dt.timedelta(days=7))
    assert rows["status"].iloc[0] == SCHEDULED


def test_quiet_hours_move_a_message_to_the_morning_of_the_customers_zone():
    # decided at 03:00 UTC: 19:00 in California (sent now), 22:00 in New York (quiet: 08:00 tomorrow)
    at = dt.datetime(2024, 3, 5, 3, tzinfo=UTC)
    rows = run(
        [msg("C1", "push", "trigger", "t"), msg("C2", "push", "trigger", "t")],
        pd.DataFrame(columns=COLUMNS),
        at,
    )
    r = rows.set_index("customer_id")
    assert r.at["C1", "scheduled_at"] == at and r.at["C1", "reason"] == ""
    assert r.at["C2", "time_zone"] == "America/New_York"
    assert r.at["C2", "scheduled_at"] == dt.datetime(2024, 3, 5, 13, tzinfo=UTC)  # 08:00 EST
    assert r.at["C2", "reason"] == "quiet hours: moved to 08:00 America/New_York"
    assert r.at["C2", "local_date"] == dt.date(2024, 3, 5)


def test_consent_is_per_channel():
    rows = run(
        [
            msg("C2", "sms", "journey", "win_back"),
            msg("C2", "email", "journey", "welcome"),
            msg("C9", "email", "audience", "a"),
        ],
        pd.DataFrame(columns=COLUMNS),
        NIGHT,
    )
    decided = {(r.customer_id, r.channel): (r.status, r.reason) for r in rows.itertuples()}
    assert decided[("C2", "sms")] == (NO_CONSENT, "no sms consent")
    assert decided[("C2", "email")][0] == SCHEDULED
    assert decided[("C9", "email")] == (
        NO_CONSENT,
        "no email consent",
    )  # unknown customer: no consent on record
    assert rows.loc[rows["status"] == NO_CONSENT, "scheduled_at"].isna().all()


def test_best_weekday_and_hour_for_audiences():
    customers = CUSTOMERS.assign(best_weekday=["Friday", None])
    rows = allocate(
        pd.DataFrame([msg("C1", "email", "audience", "a")]),
        pd.DataFrame(columns=COLUMNS),
        customers,
        CFG,
        NIGHT,
    )
    # 2024-03-05 is a Tuesday: the Friday after, at 17:00 UTC
    assert rows["scheduled_at"].iloc[0] == dt.datetime(2024, 3, 8, 17, tzinfo=UTC)
    assert rows["ledger_date"].iloc[0] == dt.date(2024, 3, 4) == ledger_date(NIGHT)


@pytest.mark.parametrize(
    ("state", "zone"),
    [("TX", "America/Chicago"), (" wa", "America/Los_Angeles"), ("ZZ", "UTC"), (None, "UTC")],
)
def test_zone_of_a_state(state, zone):
    assert zone_name(state, "UTC") == zone


def test_the_lake_ledger_holds_one_days_messages_from_every_program_and_a_rerun_rewrites_them(tmp_path):
    """Through `plan` on a lake: a journey step and an audience the night before, then two triggers;
    the ledger table holds each decision, and rerunning the night changes nothing."""
    from deltalake import write_deltalake

    from p13n.cadence.ledger import candidates_frame, plan
    from p13n.config import load_settings
    from p13n.lake.duck import duckdb_connection, scan
    from p13n.lake.tables import OPS_CONTACT_LEDGER

    s = load_settings("test", environ={"P13N_DATA_DIR": str(tmp_path / "data")})
    write_deltalake(
        f"{s.lake_root}/gold/customer_profiles",
        CUSTOMERS.drop(columns=["best_hour", "best_weekday"]).assign(household_id="h"),
    )
    write_deltalake(  # 17:00 UTC, 09:00 in California: the night's messages go out on the 5th
        f"{s.lake_root}/gold/send_times",
        pd.DataFrame({"customer_id": ["C1"], "best_hour": [17], "best_weekday": [""]}).assign(
            as_of_date=ledger_date(NIGHT)
        ),
    )

    def decide(channel, ptype, program, at):
        return plan(s, candidates_frame(["C1"], [channel], ptype, [program], ["s"]), at)

    decide("sms", "journey", "win_back", NIGHT)
    decide("email", "audience", "vip_win_back", NIGHT)
    decide("email", "trigger", "abandoned_cart", NIGHT.replace(hour=10))
    decide("push", "trigger", "browse_abandonment", NIGHT.replace(hour=11))
    table = scan(s.lake_root, OPS_CONTACT_LEDGER)
    read = f"SELECT program, status, reason FROM {table} ORDER BY decided_at, program"
    first = duckdb_connection(settings=s).execute(read).fetchall()
    assert first == [
        ("vip_win_back", SCHEDULED, ""),
        ("win_back", SCHEDULED, ""),
        ("abandoned_cart", CAPPED, "cap over all channels: 2 a day"),
        ("browse_abandonment", CAPPED, "cap over all channels: 2 a day"),
    ]
    decide("sms", "journey", "win_back", NIGHT)  # the night rerun, after the day's triggers
    decide("email", "audience", "vip_win_back", NIGHT)
    assert duckdb_connection(settings=s).execute(read).fetchall() == first

    # Two programs decided in one call (the nightly triggers): the second is capped by the first,
    # and a rerun, which finds the first run's rows of both, names the same cap.
    later = NIGHT + dt.timedelta(days=3)
    both = candidates_frame(
        ["C1", "C1"], ["email", "email"], "trigger", ["birthday", "replenishment"], ["s", "s"]
    )
    night = f"SELECT program, status, reason FROM {table} WHERE decided_at = ? ORDER BY program"
    for _ in range(2):
        plan(s, both, later)
        assert duckdb_connection(settings=s).execute(night, [later]).fetchall() == [
            ("birthday", SCHEDULED, ""),
            ("replenishment", CAPPED, "email cap: 1 a day"),
        ]


def test_an_open_case_or_a_refund_gone_wrong_suppresses_every_message():
    rows = allocate(
        pd.DataFrame([msg("C1", "email", "trigger", "t"), msg("C2", "push", "journey", "j")]),
        pd.DataFrame(columns=COLUMNS),
        CUSTOMERS,
        CFG,
        NIGHT,
        suppressed={"C1": "open service case 5001 (billing)"},
    )
    decided = rows.set_index("customer_id")
    assert decided.at["C1", "status"] == "suppressed"
    assert decided.at["C1", "reason"] == "open service case 5001 (billing)"
    assert pd.isna(decided.at["C1", "scheduled_at"])
    assert decided.at["C2", "status"] == SCHEDULED


def test_suppressions_are_read_from_cases_and_refunds_through_the_identity_keys(tmp_path):
    from deltalake import write_deltalake

    from p13n.cadence.ledger import read_suppressions
    from p13n.config import load_settings
    from p13n.lake.duck import duckdb_connection

    s = load_settings("test", environ={"P13N_DATA_DIR": str(tmp_path / "data")})
    root = s.lake_root
    t = pd.Timestamp("2024-03-04 12:00", tz="UTC")
    write_deltalake(
        f"{root}/gold/identity_keys",
        pd.DataFrame(
            {
                "key_type": [
                    "crm_contact_id",
                    "crm_contact_id",
                    "shopify_customer_id",
                    "shopify_customer_id",
                ],
                "key_value": ["K1", "K2", "S3", "S4"],
                "customer_id": ["C1", "C2", "C3", "C4"],
            }
        ),
    )
    write_deltalake(
        f"{root}/silver/crm_cases",
        pd.DataFrame(
            {
                "case_id": ["5001", "5002", "5003"],
                "contact_id": ["K1", "K2", "K2"],
                "opened_at": [t, t - pd.Timedelta(days=30), t + pd.Timedelta(days=2)],
                "status": ["open", "closed", "new"],  # C2: closed, and one opened after the decision
                "topic": ["billing", "delivery", "return"],
            }
        ),
    )
    write_deltalake(
        f"{root}/silver/shopify_orders", pd.DataFrame({"order_id": ["O3", "O4"], "customer_id": ["S3", "S4"]})
    )
    write_deltalake(
        f"{root}/silver/shopify_refunds",
        pd.DataFrame(
            {
                "refund_id": ["R3", "R4", "R5"],
                "order_id": ["O3", "O4", "O4"],
                "processed_at": [
                    t - pd.Timedelta(days=3),
                    t - pd.Timedelta(days=3),
                    t - pd.Timedelta(days=20),
                ],
                "reason": ["damaged", "changed_mind", "wrong_item"],  # C4: a plain return, and one too old
            }
        ),
    )
    found = read_suppressions(s, duckdb_connection(settings=s), ["C1", "C2", "C3", "C4"], NIGHT)
    assert found == {
        "C1": "open service case 5001 (billing)",
        "C3": "refund R3 (damaged) in the last 14 days",
    }
