"""Offline evaluation of ranked recommendations, shared by every recommender (and the baseline).

Relevance is binary: an item is relevant to a user when it is in their held-out interactions. Every
metric is averaged over all users with held-out items, so a user a model cannot serve counts as zero.

* precision@k = hits in the top k / k
* recall@k = hits in the top k / relevant items
* ndcg@k = Σ_hits 1/log2(rank+1) / the same sum for a perfect list of min(k, relevant) hits
* map@k = Σ_hits precision@rank / min(k, relevant)
* coverage = distinct recommended items / catalog size; diversity = mean share of distinct
  categories in a list (when item categories are given)
* novelty = mean self-information of a recommended item, −log2(share of users who interacted with
  it): higher means less obvious items (Microsoft Recommenders' definition)
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def leave_last_out(
    interactions: pd.DataFrame, user: str = "user", item: str = "item", time: str = "time"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each user's interactions at their latest timestamp are the test set, the rest the training
    set; users with a single timestamp stay in training only (nothing earlier to learn them from)."""
    ts = pd.to_datetime(interactions[time], utc=True, format="mixed")
    latest = ts.groupby(interactions[user]).transform("max")
    first = ts.groupby(interactions[user]).transform("min")
    held = (ts == latest) & (latest > first)
    return interactions[~held].copy(), interactions[held].copy()


def ranking_metrics(recs: pd.DataFrame, truth: pd.DataFrame, k: int = 10) -> dict[str, float]:
    """recs: user, item, rank (1 = best); truth: user, item. Keys `precision@k`, `recall@k`,
    `ndcg@k`, `map@k` with k as given."""
    truth = truth[["user", "item"]].drop_duplicates()
    users = truth["user"].unique()
    if len(users) == 0:
        raise ValueError("no held-out interactions to evaluate against")
    top = recs[recs["rank"] <= k][["user", "item", "rank"]]
    hits = top.merge(truth, on=["user", "item"], how="inner").sort_values(["user", "rank"])
    relevant = truth.groupby("user").size()
    per_user = pd.DataFrame(index=pd.Index(users, name="user"))
    per_user["relevant"] = relevant.reindex(per_user.index).to_numpy()
    per_user["hits"] = hits.groupby("user").size().reindex(per_user.index, fill_value=0)
    hits["gain"] = 1.0 / np.log2(hits["rank"] + 1.0)
    # precision at each hit's rank: (hits so far) / rank
    hits["prec"] = (hits.groupby("user").cumcount() + 1) / hits["rank"]
    per_user["dcg"] = hits.groupby("user")["gain"].sum().reindex(per_user.index, fill_value=0.0)
    per_user["ap"] = hits.groupby("user")["prec"].sum().reindex(per_user.index, fill_value=0.0)
    ideal_n = np.minimum(per_user["relevant"].to_numpy(), k)
    discounts = np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))
    per_user["idcg"] = discounts[ideal_n - 1]
    return {
        f"precision@{k}": round(float((per_user["hits"] / k).mean()), 6),
        f"recall@{k}": round(float((per_user["hits"] / per_user["relevant"]).mean()), 6),
        f"ndcg@{k}": round(float((per_user["dcg"] / per_user["idcg"]).mean()), 6),
        f"map@{k}": round(float((per_user["ap"] / ideal_n).mean()), 6),
    }


def catalog_coverage(recs: pd.DataFrame, catalog_size: int) -> float:
    return round(recs["item"].nunique() / max(catalog_size, 1), 6)


def diversity(recs: pd.DataFrame, category: pd.Series) -> float:
    """Mean over lists of distinct categories / list length (1.0: every item from another category)."""
    r = recs.assign(category=recs["item"].map(category))
    per = r.groupby("user").agg(n=("item", "size"), c=("category", "nunique"))
    return round(float((per["c"] / per["n"]).mean()), 6) if len(per) else 0.0


def novelty(recs: pd.DataFrame, popularity: pd.Series, n_users: int) -> float:
    """Mean −log2(users of the item ÷ all users) over the recommended items (`popularity`: item →
    users who interacted with it); items nobody interacted with are left out."""
    users = recs["item"].map(popularity)
    users = users[users > 0].to_numpy(float)
    return round(float(np.mean(-np.log2(users / max(n_users, 1)))), 6) if len(users) else 0.0


def list_metrics(
    recs: pd.DataFrame,
    truth: pd.DataFrame,
    k: int,
    popularity: pd.Series,
    n_users: int,
    category: pd.Series | None = None,
) -> dict[str, float]:
    """Everything a list is judged on: the ranking metrics at k, recall at 20, catalog coverage and
    novelty of the top k (and diversity when item categories are given). `popularity`: item → users
    (of `n_users`) who interacted with it, over the whole catalog."""
    top = recs[recs["rank"] <= k]
    out = ranking_metrics(recs, truth, k) | {"recall@20": ranking_metrics(recs, truth, 20)["recall@20"]}
    out["coverage"] = catalog_coverage(top, len(popularity))
    out["novelty"] = novelty(top, popularity, n_users)
    if category is not None:
        out["diversity"] = diversity(top, category)
    return out
