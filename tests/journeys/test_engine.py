"""The journey engine, night by night, on hand-made customers (pure: no lake)."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from p13n.journeys import engine
from p13n.journeys.model import Journey, JourneyError, load

D0 = dt.date(2024, 3, 1)
WIN_BACK = Journey(
    name="win_back",
    entry={"lifecycle_stage": ["lapsed"]},
    reentry_days=30,
    steps=[
        {"id": "reminder", "send": "email", "template": "t1"},
        {"id": "pause", "wait_days": 7},
        {"id": "valuable", "branch": {"if": "clv_tier = 'top'", "then": "offer", "else": "last"}},
        {"id": "offer", "send": "sms", "template": "t2", "then": "end"},
        {"id": "last", "send": "email", "template": "t3"},
    ],
)
PROFILES = pd.DataFrame(
    {
        "customer_id": ["A", "B", "C"],
        "consent_email": ["granted", "granted", "revoked"],
        "consent_sms": ["granted", "revoked", "granted"],
        "consent_push": ["unknown"] * 3,
    }
)
NO_ORDERS = pd.DataFrame(columns=["customer_id", "day"])


def _night(state, day, entrants=(), orders=NO_ORDERS, top=()):
    return engine.advance(
        WIN_BACK, state, list(entrants), PROFILES, orders, day, {"valuable": {c: True for c in top}}
    )


def test_a_customer_walks_the_steps_waits_and_branches():
    state, ev = _night(engine.empty_state(), D0, ["A", "B", "C"])
    assert sorted(zip(ev["customer_id"], ev["event"], strict=True)) == sorted(
        [(c, e) for c in "AB" for e in ("entered", "sent", "waiting")]
        + [("C", "entered"), ("C", "suppressed"), ("C", "waiting")]
    )
    assert ev.loc[(ev["customer_id"] == "C") & (ev["event"] == "suppressed"), "detail"].tolist() == [
        "no email consent"
    ]
    assert set(state["step"]) == {"pause"}
    for d in range(1, 7):  # the pause: nothing happens for six nights
        state, ev = _night(state, D0 + dt.timedelta(days=d), top=["A"])
        assert ev.empty
    state, ev = _night(state, D0 + dt.timedelta(days=7), top=["A"])
    got = {c: list(g["event"]) for c, g in ev.groupby("customer_id")}
    assert got == {
        "A": ["waited", "branched", "sent", "completed"],  # top CLV: the SMS offer
        "B": ["waited", "branched", "sent", "completed"],  # the last email
        "C": ["waited", "branched", "suppressed", "completed"],  # no email consent
    }
    assert ev[(ev["customer_id"] == "A") & (ev["event"] == "sent")]["channel"].tolist() == ["sms"]
    assert set(state["status"]) == {"completed"} and set(state["left"]) == {D0 + dt.timedelta(days=7)}


def test_an_order_ends_the_journey_and_reentry_waits_its_days():
    state, _ = _night(engine.empty_state(), D0, ["A"])
    orders = pd.DataFrame({"customer_id": ["A"], "day": [D0 + dt.timedelta(days=2)]})
    state, ev = _night(state, D0 + dt.timedelta(days=2), orders=orders)
    assert ev["event"].tolist() == ["converted"] and state["status"].tolist() == ["exited"]
    state, ev = _night(state, D0 + dt.timedelta(days=10), ["A"])  # lapsed again, too soon
    assert ev.empty
    state, ev = _night(state, D0 + dt.timedelta(days=32), ["A"])
    assert ev["event"].tolist() == ["entered", "sent", "waiting"]


def test_a_rerun_of_a_night_gives_the_same_rows_and_active_customers_do_not_reenter():
    state, _ = _night(engine.empty_state(), D0, ["A", "B"])
    one = _night(state, D0 + dt.timedelta(days=1), ["A", "C"])
    two = _night(state, D0 + dt.timedelta(days=1), ["A", "C"])
    pd.testing.assert_frame_equal(one[0], two[0])
    pd.testing.assert_frame_equal(one[1], two[1])
    assert one[1]["customer_id"].tolist() == ["C", "C", "C"]  # A is active already


def test_holdouts_are_stable_and_never_messaged():
    held = Journey(**(WIN_BACK.model_dump(by_alias=True) | {"holdout": 0.5}))
    ids = [f"C{i:05d}" for i in range(2000)]
    profiles = pd.DataFrame({"customer_id": ids, "consent_email": "granted", "consent_sms": "granted"})
    state, ev = engine.advance(held, engine.empty_state(), ids, profiles, NO_ORDERS, D0)
    out = set(state.loc[state["status"] == "held_out", "customer_id"])
    assert 0.45 < len(out) / len(ids) < 0.55
    assert not out & set(ev.loc[ev["event"] == "sent", "customer_id"])
    assert set(ev.loc[ev["event"] == "held_out", "customer_id"]) == out
    again, _ = engine.advance(held, engine.empty_state(), ids, profiles, NO_ORDERS, D0)
    assert again["status"].tolist() == state["status"].tolist()
    everyone, _ = engine.advance(held, engine.empty_state(), ids, profiles, NO_ORDERS, D0, global_holdout=0.2)
    assert (everyone["status"] == "held_out").mean() > (state["status"] == "held_out").mean()


def test_journey_files_are_checked_with_the_reason(tmp_path):
    bad = tmp_path / "journeys.yaml"
    bad.write_text(
        "journeys:\n  j:\n    entry: {trigger: [x]}\n    steps:\n"
        "      - {id: a, send: email, template: t, then: nowhere}\n"
    )
    with pytest.raises(JourneyError, match="journey j, step a: no step 'nowhere'"):
        load(bad)
    bad.write_text(
        "journeys:\n  j:\n    entry: {trigger: [x]}\n    steps:\n      - {id: a, wait_days: 2, send: sms}\n"
    )
    with pytest.raises(JourneyError, match="exactly one of send, wait_days, wait_for, branch"):
        load(bad)
    assert set(load()) == {
        "win_back",
        "welcome",
        "cart_recovery",
        "birthday",
        "points_reminder",
    }  # the shipped ones check
