"""Hyper-parameter search for the recommenders, shared by the nightly and `p13n recommend evaluate`."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from p13n.models import evaluation as ev
from p13n.models.recommenders import ImplicitALS, Interactions, not_repeating


def tune_als(
    train: pd.DataFrame,
    k: int,
    seed: int = 13,
    *,
    grid: dict[str, list],
    make=ImplicitALS,
    iterations: int = 15,
    max_users: int | None = None,
    repeats: pd.Series | None = None,
) -> dict:
    """The ALS parameters with the best NDCG@k on the training set's own latest interactions. `make`
    builds the model (ImplicitALS or a SparkALS factory); `grid` maps parameter → values to try.
    With `max_users`, the search runs on a seeded sample of that many users' whole histories. With
    `repeats` (item id → bool), seen items that repeat stay eligible."""
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
    for values in itertools.product(*grid.values()):
        params = dict(zip(grid, values, strict=True))
        params["factors"] = int(params["factors"])
        model = make(**params, iterations=iterations, seed=seed).fit(inter.matrix)
        if repeats is not None:
            model.excluding(
                not_repeating(inter.matrix, repeats.reindex(inter.items, fill_value=False).to_numpy())
            )
        score = ev.ranking_metrics(inter.to_ids(model.recommend(users, k)), valid, k)[f"ndcg@{k}"]
        if score > best_score:
            best, best_score = params, score
    return best
