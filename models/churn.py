"""Churn: will a customer buy again within the horizon? A gradient-boosted classifier on the customer
features as of a cutoff, labelled by the window after it, calibrated, and evaluated on a later window.

Only behaviour-derived features are used: the loyalty tier is current state (not as of the cutoff)
and would leak the future into training.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

FEATURES = [
    "recency_days",
    "tenure_days",
    "orders_total",
    "revenue_total",
    "orders_365d",
    "revenue_365d",
    "orders_90d",
    "revenue_90d",
    "purchase_days",
    "avg_order_value",
    "cadence_days",
    "previous_gap_days",
    "share_web",
    "share_app",
    "share_store",
    "email_sent_90d",
    "email_open_rate_90d",
    "email_click_rate_90d",
    "sms_sent_90d",
    "sms_click_rate_90d",
    "returns_rate_365d",
    "days_since_web",
    "days_since_app",
    "product_views_30d",
]


NEVER_DAYS = 10_000.0


def design(features: pd.DataFrame) -> pd.DataFrame:
    """The model's inputs: the feature columns plus recency in units of the customer's own cadence."""
    x = features[FEATURES].astype(float)
    x["recency_to_cadence"] = x["recency_days"] / x["cadence_days"].clip(lower=1.0)
    # "Never" is a very long time ago; and a column with no value at all (no web history before the
    # cutoff, say) carries no information but would stop the histogram binning.
    for c in ("days_since_web", "days_since_app"):
        x[c] = x[c].fillna(NEVER_DAYS)
    return x.fillna({c: 0.0 for c in x.columns if x[c].isna().all()})


def label(features: pd.DataFrame, later_orders: pd.Series) -> pd.Series:
    """1 = churned: no order in the window after the cutoff (`later_orders`: orders per customer then)."""
    n = features["customer_id"].map(later_orders).fillna(0)
    return (n == 0).astype(int)


def train_churn(features: pd.DataFrame, y: pd.Series, seed: int = 13):
    """Gradient boosting (missing values handled natively), isotonic-calibrated on internal folds."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import HistGradientBoostingClassifier

    if y.nunique() < 2 or y.value_counts().min() < 10:
        raise ValueError(
            f"churn training needs both outcomes, at least 10 each; got {y.value_counts().to_dict()}"
        )
    base = HistGradientBoostingClassifier(
        max_iter=200, learning_rate=0.05, max_leaf_nodes=15, random_state=seed
    )
    model = CalibratedClassifierCV(base, method="isotonic", cv=3)
    # The calibration folds are runs of consecutive rows, so the rows are put in an order of their own:
    # sorted by their values, then shuffled by the seed. The model is a function of the customers and the
    # seed, not of the order a Spark job happened to return them in.
    x = design(features).assign(_label=np.asarray(y))
    x = x.sort_values(list(x.columns), kind="mergesort", ignore_index=True)
    x = x.sample(frac=1.0, random_state=seed, ignore_index=True)
    return model.fit(x.drop(columns="_label"), x["_label"])


def predict_churn(model, features: pd.DataFrame) -> np.ndarray:
    return model.predict_proba(design(features))[:, 1]


def evaluate_churn(y: pd.Series, p: np.ndarray, bins: int = 10) -> dict:
    """ROC-AUC, PR-AUC, Brier score, expected calibration error and the top-decile lift, plus the
    curves the plots are drawn from."""
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    y = np.asarray(y)
    order = np.argsort(-p)
    top = order[: max(1, len(p) // 10)]
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
    calibration = [
        {
            "bin": b,
            "predicted": float(p[which == b].mean()),
            "observed": float(y[which == b].mean()),
            "n": int((which == b).sum()),
        }
        for b in range(bins)
        if (which == b).any()
    ]
    ece = sum(c["n"] * abs(c["predicted"] - c["observed"]) for c in calibration) / len(p)
    gains = np.cumsum(y[order]) / max(y.sum(), 1)
    return {
        "customers": len(y),
        "churn_rate": round(float(y.mean()), 4),
        "roc_auc": round(float(roc_auc_score(y, p)), 4),
        "pr_auc": round(float(average_precision_score(y, p)), 4),
        "brier": round(float(brier_score_loss(y, p)), 4),
        "ece": round(float(ece), 4),
        "lift_top_decile": round(float(y[top].mean() / max(y.mean(), 1e-12)), 3),
        "calibration": calibration,
        "gains": [round(float(g), 4) for g in gains[:: max(1, len(gains) // 100)]],
    }


def risk_band(p: np.ndarray, medium: float, high: float) -> np.ndarray:
    return np.where(p >= high, "high", np.where(p >= medium, "medium", "low"))
