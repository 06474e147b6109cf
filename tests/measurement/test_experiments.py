"""Measurement: holdouts, the send and exposure logs, and the estimators of gold.experiment_results."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable, write_deltalake

from p13n.config import load_settings
from p13n.lake.tables import GOLD_EXPERIMENT_RESULTS, SILVER_EXPOSURES, SILVER_SENDS
from p13n.measurement import experiments, simulate, stats
from p13n.measurement.exposures import land_exposures
from p13n.measurement.sends import Sends, in_holdout, record_many, record_sends

DAY = dt.date(2024, 3, 1)
T = pd.Timestamp


@pytest.fixture
def own(tmp_path):
    return load_settings("test", environ={"P13N_DATA_DIR": str(tmp_path / "data")})


def _read(settings, table) -> pd.DataFrame:
    from p13n.lake.duck import table_uri

    return DeltaTable(table_uri(settings.lake_root, table)).to_pandas()


# --- the estimators ---------------------------------------------------------------------------------


def _gbstats(a, b, **kw):
    from gbstats.frequentist.tests import FrequentistConfig, TwoSidedTTest

    return TwoSidedTTest(a, b, FrequentistConfig(**kw)).compute_result()


def test_lift_interval_and_p_value_are_gbstats_own():
    from gbstats.models.statistics import ProportionStatistic, SampleMeanStatistic

    a, b = stats.Mean(1000, 520.0, 2900.0), stats.Mean(1100, 640.0, 3500.0)
    ours = stats.compare(a, b)
    ref = _gbstats(
        SampleMeanStatistic(n=1000, sum=520.0, sum_squares=2900.0),
        SampleMeanStatistic(n=1100, sum=640.0, sum_squares=3500.0),
    )
    assert ours.lift == pytest.approx(640 / 1100 / 0.52 - 1, rel=1e-12)
    assert [ours.lift, ours.ci_low, ours.ci_high, ours.p_value] == pytest.approx(
        [ref.expected, *ref.ci, ref.p_value], rel=1e-9
    )
    conv = stats.compare(stats.Mean(4000, 400, 400, True), stats.Mean(4000, 460, 460, True))
    ref = _gbstats(ProportionStatistic(n=4000, sum=400), ProportionStatistic(n=4000, sum=460))
    assert [conv.lift, conv.ci_low, conv.ci_high, conv.p_value] == pytest.approx(
        [0.15, *ref.ci, ref.p_value], rel=1e-9
    )
    assert conv.p_value < 0.05 < stats.compare(a, a).p_value


def test_degenerate_arms_say_why_instead_of_dividing_by_zero():
    zero = stats.Mean(100, 0.0, 0.0)
    assert stats.compare(zero, stats.Mean(100, 5.0, 9.0)).note == "the baseline's mean is 0"
    assert (
        stats.compare(stats.Mean(1, 1.0, 1.0), stats.Mean(5, 1.0, 1.0)).note == "fewer than 2 units in an arm"
    )
    same = stats.Mean(10, 10.0, 10.0)  # every unit 1: no variance
    assert stats.compare(same, same).lift is None


def test_sample_ratio_mismatch_is_caught():
    assert (
        stats.sample_ratio_p({"holdout": 1000, "treatment": 9000}, {"holdout": 0.1, "treatment": 0.9}) > 0.5
    )
    assert (
        stats.sample_ratio_p({"holdout": 5000, "treatment": 5000}, {"holdout": 0.1, "treatment": 0.9}) < 1e-9
    )
    assert stats.sample_ratio_p({"treatment": 10}, {"treatment": 1.0}) is None


def test_intervals_cover_a_planted_lift_at_their_nominal_rate_and_cuped_narrows_them(settings):
    truth = simulate.true_lifts(0.1, 14, 0.6, 0.02)
    hits, widths = {m: 0 for m in truth}, []
    runs = 60
    for seed in range(runs):
        frame = experiments.results(
            settings, experiments.arm_sums(simulate.units(5000, seed=seed, lift=0.1)), DAY
        )
        for r in frame.itertuples():
            hits[r.metric] += r.ci_low <= truth[r.metric] <= r.ci_high
            if r.metric == "revenue":
                widths.append((r.cuped_ci_high - r.cuped_ci_low) / (r.ci_high - r.ci_low))
    for metric, n in hits.items():
        assert 0.85 <= n / runs <= 1.0, (metric, n)
    assert np.mean(widths) < 0.99
    # the sequential interval is wider than the fixed-horizon one: the price of looking every night
    assert (frame["seq_ci_high"] - frame["seq_ci_low"] > frame["ci_high"] - frame["ci_low"]).all()


def test_each_api_arm_is_measured_against_control_for_its_own_planted_lift(settings):
    """Arms split by the API's own hash, each planted its lift: every arm's interval covers its lift
    relative to control (not to zero), and an arm planted like control is not called significant."""
    lifts = {"control": 0.0, "als": 0.30, "same": 0.0}
    units = simulate.units(30_000, seed=4, lift=lifts, experiment="api:simulated")
    counts = units["arm"].value_counts()
    assert set(counts.index) == set(lifts) and counts.min() > 9_500  # three even arms
    frame = experiments.results(settings, experiments.arm_sums(units), DAY).set_index(["arm", "metric"])
    assert set(frame.index.get_level_values("arm")) == {"als", "same"}  # control is the baseline
    for arm in ("als", "same"):
        truth = simulate.true_lifts(lifts[arm], 14, 0.6, 0.02)
        for metric in ("conversion", "orders", "revenue"):
            r = frame.loc[(arm, metric)]
            assert r["ci_low"] <= truth[metric] <= r["ci_high"], (arm, metric)
    assert frame.loc[("als", "orders"), "ci_low"] > 0.1
    assert frame.loc[("same", "orders"), "p_value"] > 0.05


# --- holdouts and sends -----------------------------------------------------------------------------


def test_holdout_is_a_stable_share_of_customers():
    ids = [f"C{i:08d}" for i in range(20_000)]
    held = [in_holdout("audience:x", 0.1, c) for c in ids]
    assert abs(np.mean(held) - 0.1) < 0.01
    assert held == [in_holdout("audience:x", 0.1, c) for c in ids]  # same customers every time
    other = [in_holdout("audience:y", 0.1, c) for c in ids]
    assert np.mean(np.array(held) & np.array(other)) < 0.02  # another program, other customers
    assert not any(in_holdout("audience:x", 0.0, c) for c in ids[:100])


def test_candidates_hold_out_the_global_and_the_audience_share(own):
    from p13n.activation.audiences import hold_out

    frame = pd.DataFrame({"customer_id": [f"C{i:06d}" for i in range(4000)], "exclude_reason": None})
    frame.loc[:99, "exclude_reason"] = "no email consent"
    cfg = own.model_copy(update={"activation": own.activation.model_copy(update={"global_holdout": 0.05})})
    out = hold_out(frame.copy(), cfg, "vip", 0.2)
    reasons = out["exclude_reason"].value_counts()
    assert reasons["no email consent"] == 100  # not eligible: not a holdout either
    assert 0.04 < reasons["global holdout"] / 3900 < 0.06
    assert 0.17 < reasons["held out"] / 3900 < 0.23


def test_sends_log_first_entries_and_a_rerun_writes_the_same_rows(own):
    def record(day, sent, held):
        return record_sends(
            own,
            program_type="audience",
            program="vip",
            destination="klaviyo",
            channel="email",
            as_of=day,
            sent=sent,
            held_out=held,
            cost_per_send=0.25,
        )

    assert record(DAY, ["A", "B"], ["C"]) == {"sent": 2, "held_out": 1}
    first = _read(own, SILVER_SENDS).sort_values("customer_id")
    assert record(DAY, ["A", "B"], ["C"]) == {"sent": 2, "held_out": 1}  # a rerun of the date
    again = _read(own, SILVER_SENDS).sort_values("customer_id")
    pd.testing.assert_frame_equal(first.reset_index(drop=True), again.reset_index(drop=True))
    nxt = DAY + dt.timedelta(days=1)
    assert record(nxt, ["A", "B", "D"], ["C", "E"]) == {"sent": 1, "held_out": 1}  # only newcomers
    rows = _read(own, SILVER_SENDS)
    assert sorted(zip(rows["customer_id"], rows["status"], rows["send_date"].astype(str), strict=True)) == [
        ("A", "sent", "2024-03-01"),
        ("B", "sent", "2024-03-01"),
        ("C", "held_out", "2024-03-01"),
        ("D", "sent", "2024-03-02"),
        ("E", "held_out", "2024-03-02"),
    ]
    assert (rows["sent_at"] == pd.Timestamp("2024-03-02", tz="UTC"))[rows["send_date"] == DAY].all()
    assert rows.groupby("status")["cost"].sum().to_dict() == {"held_out": 0.0, "sent": 0.75}


def test_many_programs_are_recorded_in_one_commit_as_one_at_a_time_would(own, tmp_path):
    """A journey night logs twenty programs and destinations: one read and one commit, the rows
    `record_sends` writes for each, and a program of the same name elsewhere is not mixed in."""
    one_by_one = load_settings("test", environ={"P13N_DATA_DIR": str(tmp_path / "apart")})
    nights = [
        Sends("journey", "welcome", "journey", "any", held_out=["C"], entered=["A", "B"]),
        Sends("journey", "welcome", "email", "email", sent=["A"]),
        Sends("journey", "win_back", "sms", "sms", sent=["B", "D"], cost_per_send=0.01),
        Sends("audience", "welcome", "email", "email", sent=["E"]),
    ]
    nxt = DAY + dt.timedelta(days=1)
    for day, entered in ((DAY, ["A", "B"]), (nxt, ["A", "F"])):
        nights[0] = Sends("journey", "welcome", "journey", "any", held_out=["C"], entered=entered)
        together = record_many(own, day, nights)
        apart = [
            record_sends(
                one_by_one,
                program_type=n.program_type,
                program=n.program,
                destination=n.destination,
                channel=n.channel,
                as_of=day,
                sent=n.sent,
                held_out=n.held_out,
                entered=n.entered,
                cost_per_send=n.cost_per_send,
            )
            for n in nights
        ]
        assert together == apart
    assert together == [{"sent": 0, "held_out": 0, "entered": 1}] + [{"sent": 0, "held_out": 0}] * 3
    key = ["send_date", "program_type", "program", "destination", "status", "customer_id"]
    got, want = (_read(s, SILVER_SENDS).sort_values(key).reset_index(drop=True) for s in (own, one_by_one))
    pd.testing.assert_frame_equal(got, want)
    assert len(got) == 8 and set(got.loc[got["customer_id"] == "F", "status"]) == {"entered"}
    from p13n.lake.duck import table_uri

    assert DeltaTable(table_uri(own.lake_root, SILVER_SENDS)).version() == 1  # a commit a night
    record_many(own, nxt, nights)  # a rerun of the date
    pd.testing.assert_frame_equal(_read(own, SILVER_SENDS).sort_values(key).reset_index(drop=True), got)


# --- units from the lake ----------------------------------------------------------------------------


def _orders_lake(root: str) -> None:
    keys = [
        ("shopify_customer_id", "SH1", "A"),
        ("shopify_customer_id", "SH2", "B"),
        ("loyalty_id", "L3", "C"),
    ]
    frames = {
        "gold/identity_keys": pd.DataFrame(keys, columns=["key_type", "key_value", "customer_id"]),
        "silver/shopify_orders": pd.DataFrame(
            {
                "order_id": ["1", "2", "3", "4", "5"],
                "customer_id": ["SH1", "SH1", "SH1", "SH2", "SH2"],
                # A: one order 30 days before entry, two after it (one past the 14-day window);
                # B: one after entry, one after the as-of date (not yet known).
                "created_at": [
                    T("2024-01-31"),
                    T("2024-03-02 10:00"),
                    T("2024-03-20"),
                    T("2024-03-05"),
                    T("2024-04-01"),
                ],
                "channel": ["web"] * 5,
                "total_usd": [40.0, 25.0, 99.0, 10.0, 5.0],
            }
        ),
        "silver/square_transactions": pd.DataFrame(
            {
                "transaction_id": ["S1"],
                "created_at": [T("2024-03-03 12:00")],  # C, held out, buys in store
                "loyalty_id": ["L3"],
                "total": [60.0],
                "customer_email_hmac": pd.Series([None], dtype="string"),
            }
        ),
        "silver/legacy_pos_sales": pd.DataFrame(
            {"receipt_no": ["R1"], "sold_at": [T("2023-01-01")], "loyalty_id": ["L9"], "amount": [1.0]}
        ),
    }
    for path, frame in frames.items():
        write_deltalake(f"{root}/{path}", frame)


def test_unit_outcomes_count_the_window_and_the_pre_period_from_every_sales_system(own):
    _orders_lake(own.lake_root)
    record_sends(
        own,
        program_type="audience",
        program="vip",
        destination="klaviyo",
        channel="email",
        as_of=DAY,
        sent=["A", "B"],
        held_out=["C"],
    )
    units = experiments.unit_outcomes(own, DAY + dt.timedelta(days=30)).set_index("customer_id")
    assert units.loc["A", ["orders", "revenue", "pre_orders", "pre_revenue"]].tolist() == [1, 25.0, 1, 40.0]
    assert units.loc["B", ["orders", "revenue", "converted", "pre_converted"]].tolist() == [1, 10.0, 1, 0]
    assert units.loc["C", ["arm", "orders", "revenue"]].tolist() == ["holdout", 1, 60.0]
    assert set(units["experiment"]) == {"audience:vip"}
    early = experiments.unit_outcomes(own, dt.date(2024, 3, 4)).set_index("customer_id")
    assert early.loc["B", "orders"] == 0  # 5 March is after the as-of date
    assert early.loc["A", "window_share"] == pytest.approx(3 / 14)  # entered 2 March 00:00, 3 days seen


def test_the_global_holdout_is_every_known_customer_split_by_the_apis_own_hash(own):
    from p13n.measurement.sends import GLOBAL_SALT, in_holdout

    _orders_lake(own.lake_root)
    ids = ["A", "B", "C", *[f"C{i:05d}" for i in range(2000)], "NEW", "LATER"]
    # NEW joined in the window (it enters then); LATER after the as-of date (not a unit yet)
    first_seen = [T("2023-06-01")] * (len(ids) - 2) + [T("2024-03-25"), T("2024-04-02")]
    write_deltalake(
        f"{own.lake_root}/gold/customer_profiles",
        pd.DataFrame({"customer_id": ids, "first_seen_at": first_seen}),
    )
    s = own.model_copy(update={"activation": own.activation.model_copy(update={"global_holdout": 0.1})})
    as_of = dt.date(2024, 3, 31)
    units = experiments.unit_outcomes(s, as_of).set_index("customer_id")
    assert set(units["experiment"]) == {"global:holdout"} and "LATER" not in units.index
    assert (units["arm"] == "holdout").to_dict() == {c: in_holdout(GLOBAL_SALT, 0.1, c) for c in ids[:-1]}
    assert units.loc["NEW", "entered_at"] == pd.Timestamp("2024-03-25") and units.loc["A", "entered_at"] == (
        pd.Timestamp("2024-03-18")
    )
    assert abs((units["arm"] == "holdout").mean() - 0.1) < 0.02
    # the window is the last 14 days: A's order of 20 March counts, B's of 5 March is pre-period
    assert units.loc["A", ["orders", "revenue"]].tolist() == [1, 99.0]
    assert units.loc["B", ["orders", "pre_orders"]].tolist() == [0, 1]
    results = experiments.results(s, experiments.arm_sums(units.reset_index()), as_of)
    assert set(results["experiment"]) == {"global:holdout"} and set(results["baseline_arm"]) == {"holdout"}
    assert results["expected_share"].iloc[0] == pytest.approx(0.9)


def test_the_results_suite_accepts_every_kind_of_experiment():
    import json

    from p13n.config import REPO_ROOT

    suite = json.loads((REPO_ROOT / "expectations" / "gold.experiment_results.json").read_text())
    (kinds,) = [
        e["kwargs"]["value_set"]
        for e in suite["expectations"]
        if e["type"] == "expect_column_values_to_be_in_set" and e["kwargs"]["column"] == "kind"
    ]
    assert sorted(kinds) == sorted(experiments.KINDS)


def test_measure_writes_the_dates_results_and_a_rerun_replaces_them(own):
    _orders_lake(own.lake_root)
    record_sends(
        own,
        program_type="audience",
        program="vip_win_back",
        destination="klaviyo",
        channel="email",
        as_of=DAY,
        sent=["A", "B"],
        held_out=["C"],
    )
    first = experiments.measure(own, DAY + dt.timedelta(days=20))
    again = experiments.measure(own, DAY + dt.timedelta(days=20))
    stored = _read(own, GOLD_EXPERIMENT_RESULTS)
    assert len(stored) == len(again) == len(first) == 4  # treatment vs holdout, four metrics
    revenue = stored.set_index("metric").loc["revenue"]
    assert (revenue["units"], revenue["baseline_units"], revenue["mean"], revenue["baseline_mean"]) == (
        2,
        1,
        17.5,
        60.0,
    )
    assert revenue["note"] == "fewer than 2 units in an arm" and pd.isna(revenue["lift"])
    assert revenue["expected_share"] == pytest.approx(1 - (0.02 + 0.98 * 0.1))


# --- exposures --------------------------------------------------------------------------------------


def test_exposures_land_once_known_customers_only_and_leave_the_stream(own, redis_url):
    import redis

    write_deltalake(
        f"{own.lake_root}/gold/customer_profiles", pd.DataFrame({"customer_id": ["A", "B"], "x": [1, 2]})
    )
    write_deltalake(
        f"{own.lake_root}/ops/erasures", pd.DataFrame({"customer_id": ["B"], "request_id": ["r"]})
    )
    client = redis.Redis.from_url(redis_url)
    ts = dt.datetime(2024, 3, 2, 9, tzinfo=dt.UTC).timestamp()
    for i, c in enumerate(["A", "B", "Z", "A"]):  # B was erased since; Z is no customer
        client.xadd(
            "p13n:exposures",
            {
                "experiment": "e",
                "arm": "control",
                "customer_id": c,
                "list_type": "popular",
                "version": "v1",
                "ts": f"{ts + i}",
            }
            | ({"items": "S1,S2", "fallback": ""} if i == 0 else {}),  # the last: logged before items were
        )
    out = land_exposures(own, client, "p13n:exposures", batch=2)
    assert (out.read, out.landed, out.unknown) == (4, 2, 2)
    rows = _read(own, SILVER_EXPOSURES).sort_values("exposed_at")
    assert rows["customer_id"].tolist() == ["A", "A"]
    assert [None if x is None else list(x) for x in rows["items"]] == [["S1", "S2"], None]
    assert rows["exposure_date"].astype(str).unique().tolist() == ["2024-03-02"]
    assert client.xlen("p13n:exposures") == 0

    class CrashBeforeTrim:  # the landing is killed between its commit and the trim
        def __init__(self, inner):
            self.inner = inner

        def xrange(self, *a, **kw):
            return self.inner.xrange(*a, **kw)

        def xtrim(self, *a, **kw):
            raise RuntimeError("killed")

    client.xadd("p13n:exposures", {"experiment": "e", "arm": "treatment", "customer_id": "A", "ts": f"{ts}"})
    with pytest.raises(RuntimeError, match="killed"):
        land_exposures(own, CrashBeforeTrim(client), "p13n:exposures")
    assert client.xlen("p13n:exposures") == 1 and len(_read(own, SILVER_EXPOSURES)) == 3
    again = land_exposures(own, client, "p13n:exposures")  # starts after the committed entry
    assert (again.read, again.landed) == (0, 0) and len(_read(own, SILVER_EXPOSURES)) == 3
    assert client.xlen("p13n:exposures") == 0


def test_exposures_land_beside_rows_of_a_table_from_before_items(own, redis_url):
    import pyarrow as pa
    import redis

    from p13n.measurement.exposures import SCHEMA

    write_deltalake(f"{own.lake_root}/gold/customer_profiles", pd.DataFrame({"customer_id": ["A"]}))
    old = pa.schema([f for f in SCHEMA if f.name not in ("items", "fallback")])
    at = dt.datetime(2024, 3, 1, 9, tzinfo=dt.UTC)
    write_deltalake(
        f"{own.lake_root}/silver/exposures",
        pa.Table.from_pylist(
            [{"exposure_id": "1-0", "customer_id": "A", "exposed_at": at, "exposure_date": at.date()}],
            schema=old,
        ),
        partition_by=["exposure_date"],
    )
    client = redis.Redis.from_url(redis_url)
    client.xadd("p13n:exposures", {"experiment": "e", "customer_id": "A", "items": "S9", "ts": "1709370000"})
    assert land_exposures(own, client, "p13n:exposures").landed == 1
    rows = _read(own, SILVER_EXPOSURES).sort_values("exposure_id")
    assert [None if x is None else list(x) for x in rows["items"]] == [None, ["S9"]]


def test_experiments_report_prints_the_lift_and_says_what_is_missing(tmp_path, monkeypatch, capsys):
    from p13n.cli import main
    from p13n.config import get_settings

    monkeypatch.setenv("P13N_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear() if hasattr(get_settings, "cache_clear") else None
    settings = get_settings()
    assert main(["experiments", "report"]) == 1
    assert "gold.experiment_results does not exist yet" in capsys.readouterr().err
    import pyarrow as pa

    from p13n.lake.duck import write_arrow

    held = 0.02 + 0.98 * 0.1  # the global holdout, then the audience's own: as configured
    units = simulate.units(20_000, seed=2, lift=0.3, holdout=held, experiment="audience:vip_win_back")
    sums = experiments.arm_sums(units)
    frame = experiments.results(settings, sums, DAY).astype({"note": "string"})
    write_arrow(
        settings, GOLD_EXPERIMENT_RESULTS, pa.Table.from_pandas(frame, schema=experiments.result_schema())
    )
    assert main(["experiments", "report", "--experiment", "audience:vip_win_back"]) == 0
    out = capsys.readouterr().out
    revenue = frame.set_index("metric").loc["revenue"]
    assert f"{revenue['lift']:+.1%} [{revenue['ci_low']:+.1%}, {revenue['ci_high']:+.1%}]" in out
    assert "audience:vip_win_back · 2024-03-01: treatment" in out
    assert "SAMPLE RATIO MISMATCH" not in out
    frame.loc[frame["arm"] == "treatment", "sample_ratio_mismatch"] = True  # a broken split is said
    frame["as_of_date"] = DAY + dt.timedelta(days=1)
    write_arrow(
        settings, GOLD_EXPERIMENT_RESULTS, pa.Table.from_pandas(frame, schema=experiments.result_schema())
    )
    assert main(["experiments", "report"]) == 0
    assert "SAMPLE RATIO MISMATCH" in capsys.readouterr().out
    assert main(["experiments", "report", "--experiment", "api:nope"]) == 1
    assert (
        "no experiment 'api:nope' on 2024-03-02 (measured: audience:vip_win_back)" in capsys.readouterr().err
    )
