"""The customer models on small, exact inputs: RFM, lifecycle, personas, churn, send time, and the
champion/challenger gate on a real (temporary) MLflow registry."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from p13n.models import churn, segments, sendtime
from p13n.models.registry import GateRule, decide


def _features(**cols) -> pd.DataFrame:
    n = len(next(iter(cols.values())))
    base = {c: [0.0] * n for c in churn.FEATURES}
    base |= {"customer_id": [f"C{i}" for i in range(n)], "top_category": ["grocery"] * n}
    return pd.DataFrame(base | cols)


def test_rfm_scores_and_names():
    f = _features(
        recency_days=[1, 5, 200, 300, 20, np.nan],
        orders_365d=[12, 1, 9, 1, 4, 0],
        orders_total=[12, 1, 9, 1, 4, 0],
        revenue_365d=[900, 30, 700, 20, 200, 0],
        revenue_total=[900, 30, 700, 20, 200, 0],
    )
    out = segments.rfm(f)
    # Scores are quintiles among the five buyers (1 day ago is the best recency: 5; ties share).
    assert list(out["rfm_score"]) == ["555", "422", "244", "121", "333", "000"]
    assert list(out["rfm_segment"]) == [
        "Champions",
        "Potential Loyalists",
        "At Risk",
        "Hibernating",
        "Need Attention",
        "Prospect",
    ]


def test_lifecycle_uses_each_customers_cadence_and_the_models():
    f = _features(
        orders_total=[0, 1, 6, 6, 6, 6, 6],
        tenure_days=[np.nan, 10, 400, 400, 400, 400, 400],
        recency_days=[np.nan, 10, 20, 50, 100, 20, 15],
        cadence_days=[np.nan, np.nan, 30, 30, 30, 30, 30],
        previous_gap_days=[np.nan, np.nan, 30, 30, 30, 30, 200],
    )
    p_alive = [np.nan, 1.0, 0.9, 0.9, 0.9, 0.1, 0.9]
    band = [None, None, "low", "low", "low", "low", "low"]
    out = segments.lifecycle(f, p_alive, band, new_days=30)
    assert list(out["lifecycle_stage"]) == [
        "prospect",
        "new",
        "active",
        "at_risk",
        "lapsed",
        "lapsed",
        "reactivated",
    ]
    # The same recency is "active" for a customer who buys every 60 days, "at risk" at 30.
    slow = segments.lifecycle(f.assign(cadence_days=60.0), p_alive, band)
    assert slow["lifecycle_stage"][3] == "active"


def test_personas_describe_what_sets_a_cluster_apart():
    rng = np.random.default_rng(3)
    n = 300
    big = rng.random(n) < 0.3
    f = _features(
        orders_total=np.where(big, 20, 2),
        orders_365d=np.where(big, 20, 2),
        revenue_365d=np.where(big, 3000, 60) * rng.lognormal(0, 0.1, n),
        recency_days=np.where(big, 5, 120) + rng.integers(0, 5, n),
        avg_order_value=np.full(n, 50.0),
        share_app=np.where(big, 0.9, 0.05),
        share_web=np.where(big, 0.1, 0.95),
    )
    pipe, k, scores = segments.train_clusters(f, k_range=(2, 4))
    assert k == 2 and scores[2] > 0.5
    clusters = segments.assign_clusters(pipe, f)
    named = segments.personas(f, clusters)
    heavy = named[int(clusters[np.argmax(big)])]
    assert heavy["size"] == int(big.sum())
    assert (
        "high spend" in heavy["persona"]
        or "frequent buyers" in heavy["persona"]
        or "app-first" in heavy["persona"]
    )
    assert named[-1]["persona"] == "Prospects"


def _churn_data(n: int, seed: int) -> pd.DataFrame:
    """Customers who churn when they are long overdue against their own cadence."""
    rng = np.random.default_rng(seed)
    cadence = rng.uniform(10, 90, n)
    recency = rng.uniform(0, 300, n)
    f = _features(
        cadence_days=cadence, recency_days=recency, orders_total=rng.integers(2, 20, n).astype(float)
    )
    p = 1 / (1 + np.exp(-(recency / cadence - 2.5) * 2))
    f["churned"] = (rng.random(n) < p).astype(int)
    return f


def test_churn_model_learns_and_is_calibrated():
    train, test = _churn_data(3000, 1), _churn_data(2000, 2)
    model = churn.train_churn(train, train["churned"])
    m = churn.evaluate_churn(test["churned"], churn.predict_churn(model, test))
    assert m["roc_auc"] > 0.85 and m["pr_auc"] > 0.8 and m["ece"] < 0.05
    assert m["lift_top_decile"] > 1.3
    assert list(churn.risk_band(np.array([0.1, 0.5, 0.9]), 0.4, 0.7)) == ["low", "medium", "high"]


def test_churn_needs_both_outcomes():
    f = _churn_data(100, 3)
    with pytest.raises(ValueError, match="both outcomes"):
        churn.train_churn(f, pd.Series(np.zeros(len(f), dtype=int)))


def test_send_time_falls_back_from_customer_to_segment_to_global():
    def at(day, hour):
        return pd.Timestamp(f"2024-03-{day:02d} {hour:02d}:10", tz="UTC")

    rows = [("A", at(d, 9), "sent") for d in range(4, 11)]
    rows += [("A", at(d, 21), "open") for d in (4, 5, 6, 7, 11)]  # A opens at 21h, Mondays most
    rows += [("A", at(4, 21) + pd.Timedelta(days=7 * w), "open") for w in (1, 2)]
    rows += [("B", at(5, 9), "sent"), ("B", at(5, 13), "open")]  # one open: too few of B's own
    rows += [(f"S{i}", at(5 + i % 3, 6), "sent") for i in range(40)]
    rows += [(f"S{i}", at(5 + i % 3, 7), "open") for i in range(40)]  # segment "x" opens at 7h
    msgs = pd.DataFrame(rows, columns=["customer_id", "at", "event"])
    seg = pd.Series({"A": "x", "B": "x", **{f"S{i}": "x" for i in range(40)}, "C": "y"})
    out = sendtime.best_send_times(msgs, seg, pd.Series(["A", "B", "C"]), min_segment_opens=30).set_index(
        "customer_id"
    )
    assert out.loc["A", ["best_hour", "best_weekday", "basis", "opens"]].tolist() == [
        21,
        "Monday",
        "customer",
        7,
    ]
    assert out.loc["B", ["best_hour", "basis"]].tolist() == [7, "segment"]
    assert out.loc["C", "basis"] == "global"
    assert sendtime.hour_accuracy(pd.Series([23, 5, 12]), pd.Series([0, 7, 12])) == pytest.approx(2 / 3)


def test_gate_decisions():
    rules = {"roc_auc": GateRule(True, 0.01, floor=0.6), "mae": GateRule(False, 0.0)}
    assert decide({"roc_auc": 0.7, "mae": 1.0}, None, rules)[0]
    ok, why = decide({"roc_auc": 0.55, "mae": 1.0}, None, rules)
    assert not ok and "roc_auc 0.55 fails the floor 0.6" in why
    ok, why = decide({"roc_auc": 0.795, "mae": 1.0}, {"roc_auc": 0.8, "mae": 1.0}, rules)
    assert ok  # within tolerance
    ok, why = decide({"roc_auc": 0.8, "mae": 1.2}, {"roc_auc": 0.8, "mae": 1.0}, rules)
    assert not ok and "mae 1.2 worse than the champion's 1" in why


def test_worse_challenger_is_not_promoted(tmp_path):
    """On a real MLflow registry: the first good model becomes champion; a worse one is registered
    but the alias stays, and the decision with its reasons is logged."""
    import mlflow
    from mlflow import MlflowClient

    from p13n.models.registry import champion_version, load_champion, log_sklearn, register_and_gate

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_experiment("gate-test")
    train, test = _churn_data(1500, 1), _churn_data(1000, 2)
    rules = {"roc_auc": GateRule(True, 0.01, floor=0.6)}
    good = churn.train_churn(train, train["churned"])
    # The challenger never saw the customers' cadences: it learns from recency alone.
    bad = churn.train_churn(train.assign(cadence_days=45.0), train["churned"])

    def auc(model):
        return {"roc_auc": churn.evaluate_churn(test["churned"], churn.predict_churn(model, test))["roc_auc"]}

    decisions = []
    for model in (good, bad):
        current = champion_version("churn-test")
        champ = auc(load_champion("churn-test")) if current else None
        with mlflow.start_run() as run:
            info = log_sklearn(model)
            decisions.append(register_and_gate("churn-test", info.model_uri, auc(model), champ, rules))
            run_id = run.info.run_id
    first, second = decisions
    assert first.promoted and first.version == "1"
    assert not second.promoted and second.champion_version == "1"
    assert second.reasons[0].startswith("roc_auc") and "worse than the champion's" in second.reasons[0]
    assert str(champion_version("churn-test").version) == "1"
    client = MlflowClient()
    assert client.get_model_version("churn-test", "2").tags["gate"] == "failed"
    assert client.get_run(run_id).data.tags["gate.decision"] == "rejected"
    logged = mlflow.artifacts.load_dict(f"runs:/{run_id}/gate.json")
    assert logged["promoted"] is False and logged["champion"]["roc_auc"] > logged["challenger"]["roc_auc"]


def test_a_rerun_keeps_its_first_runs_version(tmp_path):
    import mlflow

    from p13n.models.registry import log_sklearn, register_and_gate

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_experiment("rerun-test")
    train = _churn_data(800, 1)
    model = churn.train_churn(train, train["churned"])
    rules = {"roc_auc": GateRule(True, 0.01)}
    versions = []
    for _attempt in range(2):
        with mlflow.start_run():
            info = log_sklearn(model)
            versions.append(
                register_and_gate(
                    "rerun-test", info.model_uri, {"roc_auc": 0.8}, None, rules, "2024-03-01:abc"
                )
            )
    assert [d.version for d in versions] == ["1", "1"] and all(d.promoted for d in versions)
    assert "rerun of 2024-03-01:abc" in versions[1].reasons[0]
    assert len(mlflow.MlflowClient().search_model_versions("name='rerun-test'")) == 1


def test_saving_and_loading_a_model_in_an_airflow_task_logs_no_moved_name_warnings(tmp_path, monkeypatch):
    """When skops is first imported (by the first model saved or loaded in a process) it looks each
    scipy ufunc up in every loaded module; in an Airflow task each read of an Airflow module's moved
    name warns: 1,160 lines in each churn task's log, where loading the champion imported it."""
    import sys
    import types
    import warnings

    import mlflow

    from p13n.models.registry import load_champion, log_sklearn, register_and_gate

    class DeprecatedImportWarning(FutureWarning):  # Airflow's, a FutureWarning
        pass

    moved = types.ModuleType("airflow_like_moves")

    def __getattr__(name):  # what airflow.utils.timezone & co. do for each moved name
        message = f"The `airflow.utils.timezone.{name}` attribute is deprecated."
        warnings.warn(message, DeprecatedImportWarning, 2)
        raise AttributeError(name)

    moved.__getattr__ = __getattr__
    monkeypatch.setitem(sys.modules, moved.__name__, moved)
    for name in [m for m in sys.modules if m == "skops" or m.startswith("skops.")]:
        monkeypatch.delitem(sys.modules, name)  # imported afresh, as in a task's process
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_experiment("quiet-test")
    train = _churn_data(400, 1)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with mlflow.start_run():
            info = log_sklearn(churn.train_churn(train, train["churned"]))
            register_and_gate("quiet-test", info.model_uri, {"roc_auc": 0.8}, None, {})
        loaded = load_champion("quiet-test")
    assert loaded.predict_proba is not None
    assert [str(w.message) for w in seen if "airflow." in str(w.message)] == []


def test_clusters_keep_yesterdays_persona_names_unless_their_members_changed():
    from p13n.models.segments import keep_names

    today = {
        0: {"persona": "Big spenders, in store", "size": 4},
        1: {"persona": "Frequent, app", "size": 4},
        2: {"persona": "Lapsed", "size": 2},
    }
    clusters = pd.Series([0, 0, 0, 0, 1, 1, 1, 1, 2, 2], index=list("abcdefghij"))
    # a-d were "High value" yesterday (the words changed, not the group); e-h split from two groups
    yesterday = pd.Series(
        ["High value"] * 4 + ["Weekly", "Weekly", "Casual", "Casual"] + ["Gone"] * 2, index=list("abcdefghij")
    )
    out = keep_names(today, clusters, yesterday)
    assert out[0]["persona"] == "High value" and out[0]["described_as"] == "Big spenders, in store"
    assert out[1]["persona"] == "Frequent, app"  # half of it from each: a new group, new words
    assert out[2]["persona"] == "Gone"
    assert keep_names(today, clusters, None)[0]["persona"] == "Big spenders, in store"


def test_churn_model_does_not_depend_on_the_order_of_its_rows():
    """A Spark job returns the training customers in no fixed order (it changed under load and failed the
    scheduler test's comparison with the reference night); the calibration folds are runs of rows."""
    train, test = _churn_data(600, 1), _churn_data(300, 2)
    shuffled = train.sample(frac=1.0, random_state=5)
    p = churn.predict_churn(churn.train_churn(train, train["churned"]), test)
    q = churn.predict_churn(churn.train_churn(shuffled, shuffled["churned"]), test)
    assert np.array_equal(p, q)
    other_seed = churn.predict_churn(churn.train_churn(train, train["churned"], seed=14), test)
    assert not np.array_equal(p, other_seed)
