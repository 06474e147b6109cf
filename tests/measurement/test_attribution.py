"""Attribution: journeys from touches and orders, and each model's credit, worked out by hand and
checked against the `marketing-attribution-models` package on the same journeys."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from p13n.measurement import attribution as attr

pytestmark = pytest.mark.spark
T = pd.Timestamp
START, END = dt.date(2024, 3, 1), dt.date(2024, 3, 31)


@pytest.fixture(scope="module")
def frames(spark):
    touches = pd.DataFrame(
        [
            # A: email, then web, then buys (100); then email again and nothing yet.
            ("A", T("2024-03-02 09:00"), "email"),
            ("A", T("2024-03-03 10:00"), "web"),
            ("A", T("2024-03-20 08:00"), "email"),
            # B: web twice, store, buys (50); an email 40 days before is outside the 30-day lookback.
            ("B", T("2024-01-25 09:00"), "email"),
            ("B", T("2024-03-05 09:00"), "web"),
            ("B", T("2024-03-06 09:00"), "web"),
            ("B", T("2024-03-07 09:00"), "store"),
            # C: only an email, no order.
            ("C", T("2024-03-10 09:00"), "email"),
        ],
        columns=["customer_id", "at", "channel"],
    )
    orders = pd.DataFrame(
        [
            ("A", "o1", T("2024-03-04 12:00"), 100.0),
            ("B", "o2", T("2024-03-08 12:00"), 50.0),
            ("D", "o3", T("2024-03-09 12:00"), 20.0),  # D: no touch at all
            ("B", "o0", T("2024-02-01 12:00"), 10.0),  # before the period: closes B's earlier journey
        ],
        columns=["customer_id", "order_id", "at", "revenue"],
    )
    j = attr.journeys(spark.createDataFrame(touches), spark.createDataFrame(orders), START, END, 30)
    return j, j.toPandas().set_index("customer_id")


def test_journeys_end_at_conversions_within_the_lookback(frames):
    _, j = frames
    conv = j[j["converted"]]
    assert conv.loc["A", "channels"].tolist() == ["email", "web"]
    assert conv.loc["A", "hours_before"].tolist() == [51.0, 26.0]
    assert conv.loc["B", "channels"].tolist() == ["web", "web", "store"]  # January's email: outside
    assert "D" in conv.index and conv.loc["D", "channels"].tolist() == []  # unattributable
    assert "o0" not in set(j["journey_id"])  # February's order is before the period
    open_ = j[~j["converted"]]
    assert sorted(open_.index) == ["A", "C"]
    assert open_.loc["A", "channels"].tolist() == ["email"]


def test_each_model_credits_what_the_rules_say(frames):
    journeys, _ = frames
    out = attr.attribution(journeys).set_index(["model", "channel"])
    got = out["revenue"].round(6).to_dict()
    assert got[("first_touch", "email")] == 100.0 and got[("first_touch", "web")] == 50.0
    assert got[("last_touch", "web")] == 100.0 and got[("last_touch", "store")] == 50.0
    assert got[("linear", "web")] == pytest.approx(50 + 100 / 3)
    assert got[("position_based", "web")] == pytest.approx(50 + 50 * (0.4 + 0.2))
    assert got[("position_based", "store")] == pytest.approx(20.0)
    assert out.loc[("markov", "web"), "removal_effect"] == pytest.approx(1.0)  # every conversion passed web
    assert out.groupby("model")["conversions"].sum().round(9).eq(2.0).all()  # D's order is not credited


def test_the_models_agree_with_marketing_attribution_models(frames):
    from p13n.bench.experiments import attribution_diff, mam_credits

    journeys, j = frames
    ours = attr.attribution(journeys)
    paths = j[j["channels"].map(len) > 0].reset_index()
    reference = mam_credits(paths, 168.0)
    worst, compared = attribution_diff(ours, reference)
    # five rule-based models × three channels, less the two that earn nothing (no journey starts in
    # store, none ends with email), and three removal effects
    assert compared == 5 * 3 - 2 + 3
    assert worst < 1e-9


def test_markov_recovers_the_removal_effects_planted_in_a_known_chain(spark):
    """Journeys walked on a planted chain: switching a channel off loses a known share of conversions
    (value iteration on the chain itself); the Markov model, counting transitions in Spark, must find
    it from 20,000 journeys (standard errors here are 0.004-0.005)."""
    from p13n.measurement import simulate

    truth = simulate.true_removal_effects()
    assert truth["web"] > truth["email"] > truth["paid_search"] > truth["push"] > 0.05
    paths = simulate.markov_journeys(20_000, seed=7)
    ours = attr.attribution(spark.createDataFrame(paths))
    found = ours[ours["model"] == "markov"].set_index("channel")["removal_effect"]
    assert set(found.index) == set(truth)
    for channel, effect in truth.items():
        assert found[channel] == pytest.approx(effect, abs=0.02), channel
    # the period's conversions are split by the normalized effects
    markov = ours[ours["model"] == "markov"]
    assert markov["conversions"].sum() == pytest.approx(paths["converted"].sum())
