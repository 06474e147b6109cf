"""Segments a marketer can read: RFM scores and names, k-means clusters with personas in words, and a
lifecycle stage per customer. Inputs are the `gold.customer_features` columns, as pandas."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

# The widely used RFM map, on the recency and frequency scores (1-5).
RFM_SEGMENTS = [
    (r"[1-2][1-2]", "Hibernating"),
    (r"[1-2][3-4]", "At Risk"),
    (r"[1-2]5", "Can't Lose Them"),
    (r"3[1-2]", "About to Sleep"),
    (r"33", "Need Attention"),
    (r"[3-4][4-5]", "Loyal Customers"),
    (r"41", "Promising"),
    (r"51", "New Customers"),
    (r"[4-5][2-3]", "Potential Loyalists"),
    (r"5[4-5]", "Champions"),
]
PROSPECT = "Prospect"  # never bought
# What k-means sees (transformed in `_cluster_matrix`), and how each reads in words (high, low).
CLUSTER_FEATURES = {
    "revenue_365d": ("high spend", "low spend"),
    "orders_365d": ("frequent buyers", "rare buyers"),
    "recency_days": ("long since last order", "bought recently"),
    "avg_order_value": ("big baskets", "small baskets"),
    "share_web": ("web shoppers", "seldom on the web"),
    "share_app": ("app-first", "seldom on the app"),
    "share_store": ("store shoppers", "online shoppers"),
    "email_open_rate_90d": ("email-engaged", "ignore email"),
    "returns_rate_365d": ("frequent returners", "rarely return"),
}
LOG_FEATURES = ("revenue_365d", "orders_365d", "recency_days", "avg_order_value")
STAGES = ("prospect", "new", "active", "at_risk", "lapsed", "reactivated")


def _score(values: pd.Series, higher_is_better: bool = True) -> pd.Series:
    """1-5 by percentile among the scored customers; ties share a score."""
    pct = (values if higher_is_better else -values).rank(pct=True, method="max")
    return np.ceil(pct * 5).clip(1, 5).astype(int)


def rfm(features: pd.DataFrame) -> pd.DataFrame:
    """customer_id, r/f/m scores, rfm_score ("545") and rfm_segment; customers who never bought are
    Prospects."""
    out = pd.DataFrame({"customer_id": features["customer_id"]})
    buyers = features["orders_total"] > 0
    b = features[buyers]
    out["r_score"], out["f_score"], out["m_score"] = 0, 0, 0
    out.loc[buyers, "r_score"] = _score(b["recency_days"].astype(float), higher_is_better=False)
    out.loc[buyers, "f_score"] = _score(b["orders_365d"].astype(float) + b["orders_total"] / 1e6)
    out.loc[buyers, "m_score"] = _score(b["revenue_365d"].astype(float) + b["revenue_total"] / 1e9)
    out["rfm_score"] = out["r_score"].astype(str) + out["f_score"].astype(str) + out["m_score"].astype(str)
    out["rfm_segment"] = [rfm_segment(r, f) for r, f in zip(out["r_score"], out["f_score"], strict=True)]
    return out


def rfm_segment(r: int, f: int) -> str:
    if r == 0:
        return PROSPECT
    key = f"{r}{f}"
    return next(name for pattern, name in RFM_SEGMENTS if re.fullmatch(pattern, key))


# ----------------------------------------------------------------------------------- clusters
def cluster_matrix(features: pd.DataFrame) -> pd.DataFrame:
    """The clustering inputs: log scale for money and counts, missing rates as 0."""
    x = features[list(CLUSTER_FEATURES)].astype(float).fillna(0.0)
    for c in LOG_FEATURES:
        x[c] = np.log1p(x[c].clip(lower=0))
    return x


def train_clusters(features: pd.DataFrame, k_range=(3, 8), sample: int = 20000, seed: int = 13):
    """k-means on the buyers, k chosen by silhouette on a sample; returns (pipeline, k, scores by k)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    buyers = features[features["orders_total"] > 0]
    if len(buyers) < 50:
        raise ValueError(f"clustering needs at least 50 customers with purchases; got {len(buyers)}")
    x = cluster_matrix(buyers)
    fit_rows = x.sample(min(sample, len(x)), random_state=seed)
    eval_rows = fit_rows.sample(min(5000, len(fit_rows)), random_state=seed + 1)
    scores, best = {}, None
    for k in range(k_range[0], k_range[1] + 1):
        pipe = make_pipeline(StandardScaler(), KMeans(n_clusters=k, n_init=4, random_state=seed))
        pipe.fit(fit_rows)
        labels = pipe.predict(eval_rows)
        if len(set(labels)) < 2:
            continue
        scores[k] = float(silhouette_score(pipe[0].transform(eval_rows), labels))
        if best is None or scores[k] > scores[best[0]]:
            best = (k, pipe)
    if best is None:
        raise ValueError("k-means found no structure in the customers (every k collapsed to one cluster)")
    return best[1], best[0], scores


def silhouette(pipeline, features: pd.DataFrame, sample: int = 5000, seed: int = 13) -> float:
    """A fitted pipeline's silhouette on (a sample of) these customers: how the gate compares models."""
    from sklearn.metrics import silhouette_score

    buyers = features[features["orders_total"] > 0]
    x = cluster_matrix(buyers).sample(min(sample, len(buyers)), random_state=seed)
    labels = pipeline.predict(x)
    return float(silhouette_score(pipeline[0].transform(x), labels)) if len(set(labels)) > 1 else -1.0


def assign_clusters(pipeline, features: pd.DataFrame) -> pd.Series:
    """Cluster per customer; -1 for customers who never bought."""
    out = pd.Series(-1, index=features.index, dtype=int)
    buyers = features["orders_total"] > 0
    if buyers.any():
        out[buyers] = pipeline.predict(cluster_matrix(features[buyers]))
    return out


def personas(features: pd.DataFrame, clusters: pd.Series, top: int = 3) -> dict[int, dict]:
    """Per cluster: a name from its most distinguishing features in words, a description with its
    medians, its size, and the feature z-scores behind the words."""
    buyers = clusters >= 0
    raw = features.loc[buyers, list(CLUSTER_FEATURES)].astype(float).fillna(0.0)
    x = cluster_matrix(features[buyers])
    mu, sd = x.mean(), x.std().replace(0, 1.0)
    out: dict[int, dict] = {}
    categories = features.loc[buyers, "top_category"].fillna("unknown")
    overall = categories.value_counts(normalize=True)
    for c in sorted(clusters[buyers].unique()):
        members = clusters[buyers] == c
        z = ((x[members].mean() - mu) / sd).sort_values(key=np.abs, ascending=False)
        words, channel_said = [], False
        for f in z.index:
            if len(words) == top or abs(z[f]) < 0.25:
                break
            if f.startswith("share_"):  # the channel shares sum to one: their strongest says it all
                if channel_said:
                    continue
                channel_said = True
            words.append(CLUSTER_FEATURES[f][0 if z[f] > 0 else 1])
        share = categories[members].value_counts(normalize=True).drop("unknown", errors="ignore")
        lift = (share[share >= 0.15] / overall).dropna()
        if len(lift) and lift.max() >= 1.5:
            words.append(f"mostly {lift.idxmax()}")
        med = raw[members].median()
        name = ", ".join(words) if words else "typical customers"
        out[int(c)] = {
            "cluster": int(c),
            "persona": name[0].upper() + name[1:],
            "description": (
                f"{int(members.sum()):,} customers; median ${med['revenue_365d']:,.0f} over the last year in "
                f"{med['orders_365d']:.0f} orders, last order {med['recency_days']:.0f} days ago, "
                f"{med['share_store']:.0%} of orders in store, {med['share_app']:.0%} in the app"
            ),
            "size": int(members.sum()),
            "z_scores": {f: round(float(v), 2) for f, v in z.items()},
        }
    out[-1] = {
        "cluster": -1,
        "persona": "Prospects",
        "description": "known customers with no purchase yet",
        "size": int((~buyers).sum()),
        "z_scores": {},
    }
    return out


def keep_names(
    personas: dict[int, dict], clusters: pd.Series, previous: pd.Series, min_overlap: float = 0.5
) -> dict[int, dict]:
    """Personas keep yesterday's names for clusters that are yesterday's groups again (pure).

    `clusters`: today's cluster per customer (index: customer id); `previous`: yesterday's persona per
    customer. A cluster takes the name of the persona most of its members had, when they are also
    most of that persona's members (both shares over `min_overlap`), each name at most once (the largest
    overlap first). Otherwise the cluster's profile really changed and its new words stand. Each
    persona records the name it would have had in `described_as`."""
    out = {c: p | {"described_as": p["persona"]} for c, p in personas.items()}
    if previous is None or previous.empty:
        return out
    both = pd.DataFrame({"cluster": clusters, "before": previous.reindex(clusters.index)}).dropna()
    both = both[both["cluster"] >= 0]
    if both.empty:
        return out
    pairs = both.groupby(["cluster", "before"]).size().rename("n").reset_index()
    pairs["of_cluster"] = pairs["n"] / pairs["cluster"].map(clusters.value_counts())
    pairs["of_persona"] = pairs["n"] / pairs["before"].map(previous.value_counts())
    pairs = pairs[(pairs["of_cluster"] > min_overlap) & (pairs["of_persona"] > min_overlap)]
    taken: set[str] = set()
    for r in pairs.sort_values("n", ascending=False).itertuples():
        c = int(r.cluster)
        if r.before in taken or out[c]["persona"] != out[c]["described_as"]:
            continue
        out[c]["persona"] = r.before
        taken.add(r.before)
    return out


# ---------------------------------------------------------------------------------- lifecycle
def lifecycle(
    features: pd.DataFrame,
    p_alive: pd.Series,
    churn_band: pd.Series,
    new_days: int = 30,
    typical_gap: float | None = None,
) -> pd.DataFrame:
    """A stage per customer from their own purchase cadence and the models' view of them.

    * prospect: no purchase yet; new: first purchase in the last `new_days`;
    * reactivated: bought within their usual gap after a gap over three times it (and over 90 days);
    * lapsed: over three usual gaps since the last order, or the BG/NBD model gives them < 20% alive;
    * at_risk: over 1.5 usual gaps, or in the churn model's high-risk band;
    * active: the rest.
    A customer's usual gap is their mean time between purchase days; one-time buyers get the
    population's median (`typical_gap`).
    """
    f = features.reset_index(drop=True)
    cadence = f["cadence_days"].astype(float)
    typical = (
        typical_gap
        if typical_gap is not None
        else float(np.nanmedian(cadence))
        if cadence.notna().any()
        else 60.0
    )
    gap = cadence.fillna(typical).clip(lower=7.0)
    ratio = f["recency_days"].astype(float) / gap
    alive = pd.Series(np.asarray(p_alive, dtype=float)).fillna(1.0)
    band = pd.Series(np.asarray(churn_band, dtype=object))
    prev = f["previous_gap_days"].astype(float)
    stage = np.select(
        [
            f["orders_total"] == 0,
            f["tenure_days"] < new_days,
            (ratio <= 1.0) & (prev > np.maximum(3 * gap, 90)),
            (ratio > 3.0) | (alive < 0.2),
            (ratio > 1.5) | (band == "high"),
        ],
        ["prospect", "new", "reactivated", "lapsed", "at_risk"],
        default="active",
    )
    return pd.DataFrame(
        {
            "customer_id": f["customer_id"],
            "lifecycle_stage": stage,
            "cadence_days_used": gap.round(1),
            "recency_to_cadence": ratio.round(2),
        }
    )
