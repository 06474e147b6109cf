"""Independent references a list must beat, run on the same split as p13n's own models.

* `top_frequency` — each shopper's own most-bought items (baskets containing the item; ties to the
  most recent): the baseline most next-basket models fail to beat.
* `popularity_all` — the items most users interacted with, the shopper's own included.
* `cornac_tifuknn` — Cornac's TIFU-KNN (Hu et al. 2020) with its published defaults, through Cornac's
  own data set and scoring (`BasketDataset`, `TIFUKNN.score`).

Each returns user, item, rank for the test users, ids as in the input.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pandas as pd


def top_frequency(train: pd.DataFrame, users: np.ndarray, k: int) -> pd.DataFrame:
    t = train[train["user"].isin(users)].drop_duplicates(["user", "item", "time"])
    per = t.groupby(["user", "item"], as_index=False).agg(n=("time", "size"), last=("time", "max"))
    per = per.sort_values(["user", "n", "last", "item"], ascending=[True, False, False, True], kind="stable")
    per = per.assign(rank=per.groupby("user").cumcount() + 1)
    return per[per["rank"] <= k][["user", "item", "rank"]].reset_index(drop=True)


def popularity_all(train: pd.DataFrame, users: np.ndarray, k: int) -> pd.DataFrame:
    counts = train.drop_duplicates(["user", "item"]).groupby("item").size()
    top = counts.sort_values(ascending=False, kind="stable").index[:k]
    return pd.DataFrame(
        {
            "user": np.repeat(users, len(top)),
            "item": np.tile(top, len(users)),
            "rank": np.tile(np.arange(1, len(top) + 1), len(users)),
        }
    )


def cornac_tifuknn(train: pd.DataFrame, users: np.ndarray, k: int, seed: int = 13) -> pd.DataFrame:
    from cornac.data import BasketDataset
    from cornac.models import TIFUKNN

    t = train.drop_duplicates(["user", "item", "time"]).sort_values(["user", "time", "item"], kind="stable")
    stamp = t["time"].astype("int64") // 10**9
    basket = t["user"].astype(str) + "@" + stamp.astype(str)
    data = BasketDataset.build(
        list(zip(t["user"], basket, t["item"], stamp, strict=True)), fmt="UBIT", seed=seed
    )
    with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet):  # its progress bar
        model = TIFUKNN(verbose=False).fit(data)
    item_of = np.empty(len(data.iid_map), dtype=object)
    for item, idx in data.iid_map.items():
        item_of[idx] = item
    codes = t.assign(code=t["item"].map(data.iid_map), basket=basket)
    history = {
        u: [g["code"].tolist() for _, g in h.groupby("basket", sort=False)]
        for u, h in codes[codes["user"].isin(users)].groupby("user", sort=False)
    }
    rows = []
    for u in users:
        if u not in history:
            continue
        scores = model.score(data.uid_map[u], history[u])
        best = np.argsort(-scores, kind="stable")[:k]
        best = best[scores[best] > 0]
        rows.append(pd.DataFrame({"user": u, "item": item_of[best], "rank": np.arange(1, len(best) + 1)}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["user", "item", "rank"])


def references(train: pd.DataFrame, users: np.ndarray, k: int, seed: int = 13) -> dict[str, pd.DataFrame]:
    return {
        "ref_top_frequency": top_frequency(train, users, k),
        "ref_popularity_all": popularity_all(train, users, k),
        "ref_cornac_tifuknn": cornac_tifuknn(train, users, k, seed),
    }
