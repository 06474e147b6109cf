"""`p13n recommend evaluate`: train and evaluate every recommender on any interactions CSV.

Each user's interactions at their latest timestamp (their last basket) are the test set; ALS is tuned
on the same split of the training set (its own latest interactions as validation) and the next-basket
model learns from the users' previous baskets; every model recommends to each test user and is scored
by `p13n.models.evaluation`. Which items repeat is learned from the training set: a model skips a
user's seen items only when the item's repeat rate says it is not bought again.

With `reference=True` the independent references run on the same split: personal top-frequency, the
popularity of all items (repeats allowed) and Cornac's TIFU-KNN.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from p13n.config import RecommendSettings
from p13n.inputs import InputError, read_csv, set_aside
from p13n.models import evaluation as ev
from p13n.models import nextbasket as nb
from p13n.models.nextbasket import MIN_REPEAT_RATE
from p13n.models.recommenders import (
    Blend,
    BuyAgain,
    ImplicitALS,
    Interactions,
    ItemSimilarity,
    Popularity,
    not_repeating,
)
from p13n.models.tuning import tune_als

ALS_GRID = RecommendSettings().als_grid  # the configured default (conf/base.yaml's recommend.als_grid)
# Weights of the explore list (ALS, item similarity) against the next-basket list tried on the
# validation split (each training user's own last basket).
EXPLORE_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0)


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


def evaluate_models(
    df: pd.DataFrame, k: int = 10, seed: int = 13, reference: bool = False
) -> tuple[dict, dict]:
    """Per model, its metrics on the latest-basket split (`ev.list_metrics`); and facts about the run."""
    train, test = ev.leave_last_out(df, "user", "item", "time")
    if test.empty:
        raise InputError("no user has interactions at two different times: nothing to hold out")
    depth = max(k, 20)
    inter = Interactions.from_frame(train, weight="weight")
    counts = Interactions.from_frame(train.drop_duplicates(["user", "item", "time"]))
    counts = _align(counts, inter)
    test_ids = test["user"].unique()
    test_users = inter.users.get_indexer(test_ids)
    test_users = test_users[test_users >= 0]
    purchases = train.rename(columns={"time": "at"})
    rates = nb.repeat_rates(purchases).set_index("item")
    repeats = rates["rate"] >= MIN_REPEAT_RATE
    skip = not_repeating(inter.matrix, repeats.reindex(inter.items, fill_value=False).to_numpy())
    params = tune_als(train, k, seed, grid=ALS_GRID, repeats=repeats)
    pop = Popularity().fit(inter.matrix).excluding(skip)
    models = {
        "popularity": pop,
        "als": ImplicitALS(**params, seed=seed).fit(inter.matrix).excluding(skip),
        "item_similarity": ItemSimilarity().fit(inter.matrix).excluding(skip),
        "buy_again": BuyAgain().fit(inter.matrix, counts.matrix),
    }
    runs = {name: inter.to_ids(model.recommend(test_users, depth)) for name, model in models.items()}
    basket = nb.NextBasket(seed=seed).fit(purchases)
    runs["next_basket"] = basket.recommend(purchases[purchases["user"].isin(test_ids)], depth)
    weight = tune_explore(train, params, repeats, depth, k, seed)
    explore = _explore(models["als"], models["item_similarity"], pop).recommend(test_users, depth)
    runs["personalized"] = nb.blend(runs["next_basket"], inter.to_ids(explore), weight, depth)
    if reference:
        from p13n.recommend.references import references

        runs |= references(train, test_ids, depth, seed)
    popularity = pd.Series(np.asarray((inter.matrix > 0).sum(axis=0)).ravel(), index=inter.items)
    out = {}
    for name, recs in runs.items():
        served = round(recs["user"].nunique() / max(len(test_ids), 1), 6)
        out[name] = ev.list_metrics(recs, test, k, popularity, len(inter.users)) | {"users_served": served}
    facts = {
        "users": len(inter.users),
        "items": len(inter.items),
        "train_rows": len(train),
        "test_users": len(test_ids),
        "als_params": params,
        "repeating_items": round(float(repeats.mean()), 4),
        "next_basket_learned": basket.learned,
        "explore_weight": weight,
    }
    return out, facts


def _explore(als, sim, pop) -> Blend:
    return Blend({"als": (als, 1.0), "item_similarity": (sim, 1.0)}, fallback=pop)


def tune_explore(
    train: pd.DataFrame, params: dict, repeats: pd.Series, depth: int, k: int, seed: int
) -> float:
    """The weight of the explore list (ALS and item similarity) against the next-basket list with
    the best NDCG@k on the training set's own last baskets, both fitted on the history before them."""
    fit_part, valid = ev.leave_last_out(train, "user", "item", "time")
    if valid.empty:
        return EXPLORE_WEIGHTS[0]
    inter = Interactions.from_frame(fit_part, weight="weight")
    skip = not_repeating(inter.matrix, repeats.reindex(inter.items, fill_value=False).to_numpy())
    users = inter.users.get_indexer(valid["user"].unique())
    users = users[users >= 0]
    explore = _explore(
        ImplicitALS(**params, seed=seed).fit(inter.matrix).excluding(skip),
        ItemSimilarity().fit(inter.matrix).excluding(skip),
        Popularity().fit(inter.matrix).excluding(skip),
    )
    explore_list = inter.to_ids(explore.recommend(users, depth))
    history = fit_part.rename(columns={"time": "at"})
    primary = (
        nb.NextBasket(seed=seed)
        .fit(history)
        .recommend(history[history["user"].isin(inter.users[users])], depth)
    )
    scores = {
        w: ev.ranking_metrics(nb.blend(primary, explore_list, w, depth), valid, k)[f"ndcg@{k}"]
        for w in EXPLORE_WEIGHTS
    }
    return max(EXPLORE_WEIGHTS, key=lambda w: (scores[w], -w))


def _align(counts: Interactions, ref: Interactions) -> Interactions:
    """`counts` re-indexed to `ref`'s users and items (same shape, same order)."""
    coo = counts.matrix.tocoo()
    rows = ref.users.get_indexer(counts.users[coo.row])
    cols = ref.items.get_indexer(counts.items[coo.col])
    from scipy import sparse

    m = sparse.csr_matrix((coo.data, (rows, cols)), shape=ref.matrix.shape)
    return Interactions(m, ref.users, ref.items)


def evaluate_file(
    path: Path,
    user: str,
    item: str,
    time: str,
    weight: str | None = None,
    k: int = 10,
    reference: bool = False,
) -> tuple[dict, dict]:
    df, skipped = read_interactions(path, user, item, time, weight)
    out, facts = evaluate_models(df, k, reference=reference)
    return out, facts | {"skipped_rows": skipped, "k": k, "rows": len(df)}
