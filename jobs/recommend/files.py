"""`p13n recommend evaluate`: train and evaluate every recommender on any interactions CSV.

Each user's interactions at their latest timestamp are the test set; ALS is tuned on the same split of
the training set (its own latest interactions as validation); every model recommends k items to each
test user and is scored by `p13n.models.evaluation`.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from p13n.inputs import InputError, read_csv, set_aside
from p13n.models import evaluation as ev
from p13n.models.recommenders import Blend, BuyAgain, ImplicitALS, Interactions, ItemSimilarity, Popularity

ALS_GRID = {"factors": [32, 64], "regularization": [0.01, 0.1], "alpha": [5.0, 20.0]}


def read_interactions(
    path: Path, user: str, item: str, time: str, weight: str | None
) -> tuple[pd.DataFrame, dict]:
    """The usable rows of the file, and the count of rows set aside per reason."""
    raw = read_csv(path, [c for c in (user, item, time, weight) if c])
    df = pd.DataFrame(
        {
            "user": raw[user],
            "item": raw[item],
            "time": pd.to_datetime(raw[time], utc=True, errors="coerce", format="mixed"),
            "weight": pd.to_numeric(raw[weight], errors="coerce") if weight else 1.0,
        }
    )
    return set_aside(
        path,
        df,
        {
            "empty user": df["user"] == "",
            "empty item": df["item"] == "",
            "unparseable time": df["time"].isna(),
            "non-numeric weight": df["weight"].isna(),
            "non-positive weight": df["weight"] <= 0,
        },
    )


def tune_als(
    train: pd.DataFrame,
    k: int,
    seed: int = 13,
    grid: dict | None = None,
    make=ImplicitALS,
    iterations: int = 15,
    max_users: int | None = None,
) -> dict:
    """The ALS parameters with the best NDCG@k on the training set's own latest interactions. `make`
    builds the model (ImplicitALS or a SparkALS factory); `grid` maps parameter → values to try.
    With `max_users`, the search runs on a seeded sample of that many users' whole histories."""
    users = train["user"].unique()
    if max_users is not None and len(users) > max_users:
        sample = np.random.default_rng(seed).choice(np.sort(users), max_users, replace=False)
        train = train[train["user"].isin(sample)]
    fit_part, valid = ev.leave_last_out(train, "user", "item", "time")
    if valid.empty:
        return {"factors": 32, "regularization": 0.1, "alpha": 5.0}
    inter = Interactions.from_frame(fit_part, weight="weight")
    valid = valid[valid["user"].isin(inter.users) & valid["item"].isin(inter.items)]
    users = inter.users.get_indexer(valid["user"].unique())
    best, best_score = None, -1.0
    grid = grid or ALS_GRID
    for values in itertools.product(*grid.values()):
        params = dict(zip(grid, values, strict=True))
        params["factors"] = int(params["factors"])
        model = make(**params, iterations=iterations, seed=seed).fit(inter.matrix)
        score = ev.ranking_metrics(inter.to_ids(model.recommend(users, k)), valid, k)[f"ndcg@{k}"]
        if score > best_score:
            best, best_score = params, score
    return best


def evaluate_models(df: pd.DataFrame, k: int = 10, seed: int = 13) -> tuple[dict, dict]:
    """Per model, its ranking metrics on the latest-interaction split; and facts about the run."""
    train, test = ev.leave_last_out(df, "user", "item", "time")
    if test.empty:
        raise InputError("no user has interactions at two different times: nothing to hold out")
    inter = Interactions.from_frame(train, weight="weight")
    counts = Interactions.from_frame(train.drop_duplicates(["user", "item", "time"]))
    counts = _align(counts, inter)
    test_users = inter.users.get_indexer(test["user"].unique())
    test_users = test_users[test_users >= 0]
    params = tune_als(train, k, seed)
    pop = Popularity().fit(inter.matrix)
    models = {
        "popularity": pop,
        "als": ImplicitALS(**params, seed=seed).fit(inter.matrix),
        "item_similarity": ItemSimilarity().fit(inter.matrix),
        "buy_again": BuyAgain().fit(inter.matrix, counts.matrix),
    }
    models["personalized"] = Blend(
        {
            "als": (models["als"], 1.0),
            "item_similarity": (models["item_similarity"], 1.0),
            "buy_again": (models["buy_again"], 1.5),
        },  # fmt: skip
        fallback=pop,
    )
    out = {}
    for name, model in models.items():
        recs = inter.to_ids(model.recommend(test_users, k))
        out[name] = ev.ranking_metrics(recs, test, k) | {
            "coverage": ev.catalog_coverage(recs, len(inter.items)),
            "users_served": round(recs["user"].nunique() / max(test["user"].nunique(), 1), 6),
        }
    facts = {"users": len(inter.users), "items": len(inter.items), "train_rows": len(train), "test_users": int(test["user"].nunique()),
             "als_params": params}  # fmt: skip
    return out, facts


def _align(counts: Interactions, ref: Interactions) -> Interactions:
    """`counts` re-indexed to `ref`'s users and items (same shape, same order)."""
    coo = counts.matrix.tocoo()
    rows = ref.users.get_indexer(counts.users[coo.row])
    cols = ref.items.get_indexer(counts.items[coo.col])
    from scipy import sparse

    m = sparse.csr_matrix((coo.data, (rows, cols)), shape=ref.matrix.shape)
    return Interactions(m, ref.users, ref.items)


def evaluate_file(
    path: Path, user: str, item: str, time: str, weight: str | None = None, k: int = 10
) -> tuple[dict, dict]:
    df, skipped = read_interactions(path, user, item, time, weight)
    out, facts = evaluate_models(df, k)
    return out, facts | {"skipped_rows": skipped, "k": k, "rows": len(df)}
