"""Recommenders on an implicit-feedback matrix (users × items, weights), single-node: the popularity
baseline, ALS (the `implicit` library), item-item cosine similarity, buy-it-again, and the blend the
channels show. Each has `fit(matrix)` and `recommend(users, k) -> DataFrame(user, item, rank, score)`
with user and item *indices*; `Interactions` maps them to ids.

Spark ML's ALS (the cluster path) lives in `p13n.models.spark_als`; `models/evaluation.py` scores all.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse


@dataclass
class Interactions:
    """A users × items weight matrix with the ids behind its rows and columns."""

    matrix: sparse.csr_matrix
    users: pd.Index
    items: pd.Index

    @classmethod
    def from_frame(
        cls,
        df: pd.DataFrame,
        user="user",
        item="item",
        weight: str | None = None,
        users: pd.Index | None = None,
        items: pd.Index | None = None,
    ) -> Interactions:
        """The matrix of a long frame; with `users`/`items` given, rows and columns follow them (ids
        absent from them must not occur in the frame)."""
        users = pd.Index(df[user].unique()) if users is None else users
        items = pd.Index(df[item].unique()) if items is None else items
        w = df[weight].to_numpy(float) if weight else np.ones(len(df))
        m = sparse.csr_matrix(
            (w, (users.get_indexer(df[user]), items.get_indexer(df[item]))), shape=(len(users), len(items))
        )
        m.sum_duplicates()
        return cls(m, users, items)

    def to_ids(self, recs: pd.DataFrame) -> pd.DataFrame:
        return recs.assign(user=self.users[recs["user"].to_numpy()], item=self.items[recs["item"].to_numpy()])


def _top_k(scores: np.ndarray, users: np.ndarray, k: int, seen: sparse.csr_matrix | None) -> pd.DataFrame:
    """The k best-scoring items per row of `scores` (users × items), skipping `seen` items."""
    scores = np.array(scores, dtype=np.float64, copy=True)
    if seen is not None:
        rows = seen[users]
        scores[rows.nonzero()] = -np.inf
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    items = np.take_along_axis(part, order, axis=1)
    best = np.take_along_axis(part_scores, order, axis=1)
    out = pd.DataFrame(
        {
            "user": np.repeat(users, k),
            "item": items.ravel(),
            "rank": np.tile(np.arange(1, k + 1), len(users)),
            "score": best.ravel(),
        }
    )
    return out[np.isfinite(out["score"]) & (out["score"] > 0)].reset_index(drop=True)


def _batched(users: np.ndarray, k: int, score_fn, seen, batch: int | None = None) -> pd.DataFrame:
    if batch is None:  # a dense users × items block of at most ~16M scores (128 MB) at a time
        n_items = seen.shape[1] if seen is not None else 50_000
        batch = int(np.clip(16_000_000 // max(n_items, 1), 32, 2048))
    parts = [
        _top_k(score_fn(users[i : i + batch]), users[i : i + batch], k, seen)
        for i in range(0, len(users), batch)
    ]
    return (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame(columns=["user", "item", "rank", "score"])
    )


class Popularity:
    """Items by how many users interacted with them: the baseline every model must beat."""

    name = "popularity"

    def fit(self, m: sparse.csr_matrix) -> Popularity:
        self.seen = m
        self.scores = np.asarray((m > 0).sum(axis=0)).ravel().astype(float)
        return self

    def recommend(self, users: np.ndarray, k: int, exclude_seen: bool = True) -> pd.DataFrame:
        return _batched(
            users, k, lambda u: np.tile(self.scores, (len(u), 1)), self.seen if exclude_seen else None
        )


class ImplicitALS:
    """Alternating least squares for implicit feedback (Hu, Koren & Volinsky 2008), `implicit` library."""

    name = "als"

    def __init__(self, factors: int = 64, regularization: float = 0.05, alpha: float = 10.0, iterations: int = 15,
                 seed: int = 13):  # fmt: skip
        self.params = {
            "factors": factors,
            "regularization": regularization,
            "alpha": alpha,
            "iterations": iterations,
        }
        self.seed = seed

    def fit(self, m: sparse.csr_matrix) -> ImplicitALS:
        from implicit.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        self.seen = m
        with threadpool_limits(1, "blas"), warnings.catch_warnings():
            # implicit parallelizes itself (BLAS threads would fight it), and warns when BLAS is
            # multi-threaded even though the limit above is in force.
            warnings.filterwarnings("ignore", message="OpenBLAS is configured", category=RuntimeWarning)
            self.model = AlternatingLeastSquares(**self.params, random_state=self.seed)
            self.model.fit(m.astype(np.float32), show_progress=False)
        return self

    def recommend(self, users: np.ndarray, k: int, exclude_seen: bool = True) -> pd.DataFrame:
        uf, itf = self.model.user_factors, self.model.item_factors
        return _batched(users, k, lambda u: uf[u] @ itf.T, self.seen if exclude_seen else None)


class ItemSimilarity:
    """Item-item cosine similarity on co-interaction; a user's score for an item is the similarity-
    weighted sum over the items they interacted with."""

    name = "item_similarity"

    def __init__(self, neighbours: int = 50):
        self.neighbours = neighbours

    def fit(self, m: sparse.csr_matrix) -> ItemSimilarity:
        self.seen = m
        binary = (m > 0).astype(np.float32)
        norms = np.sqrt(np.asarray(binary.multiply(binary).sum(axis=0)).ravel())
        norms[norms == 0] = 1.0
        scaled = binary @ sparse.diags(1.0 / norms)
        sim = (scaled.T @ scaled).tocsr()
        sim.setdiag(0)
        sim.eliminate_zeros()
        self.similarity = _keep_top_per_row(sim, self.neighbours)
        return self

    def similar_items(self, k: int) -> pd.DataFrame:
        """item, similar item, rank, score: the precomputed neighbours of every item."""
        rows = np.arange(self.similarity.shape[0])
        return _batched(rows, k, lambda r: self.similarity[r].toarray(), None).rename(
            columns={"user": "item_a", "item": "item_b"}
        )

    def recommend(self, users: np.ndarray, k: int, exclude_seen: bool = True) -> pd.DataFrame:
        return _batched(
            users,
            k,
            lambda u: (self.seen[u] @ self.similarity).toarray(),
            self.seen if exclude_seen else None,
        )


def _keep_top_per_row(m: sparse.csr_matrix, n: int) -> sparse.csr_matrix:
    m = m.tocsr()
    data, indices, indptr = [], [], [0]
    for i in range(m.shape[0]):
        lo, hi = m.indptr[i], m.indptr[i + 1]
        vals, cols = m.data[lo:hi], m.indices[lo:hi]
        if len(vals) > n:
            keep = np.argpartition(-vals, n - 1)[:n]
            vals, cols = vals[keep], cols[keep]
        data.append(vals)
        indices.append(cols)
        indptr.append(indptr[-1] + len(vals))
    return sparse.csr_matrix(
        (np.concatenate(data) if data else [], np.concatenate(indices) if indices else [], indptr),
        shape=m.shape,
    )


class BuyAgain:
    """Items a user already has, for the items people do come back to: score = the user's weight on
    the item × the item's repeat rate (share of its users who interacted with it more than once).
    With `repeatable` (item index → bool) only those items are eligible (consumables, not appliances)."""

    name = "buy_again"

    def __init__(self, repeatable: np.ndarray | None = None, min_repeat_rate: float = 0.05):
        self.repeatable, self.min_repeat_rate = repeatable, min_repeat_rate

    def fit(self, m: sparse.csr_matrix, counts: sparse.csr_matrix | None = None) -> BuyAgain:
        counts = counts if counts is not None else m
        users_per_item = np.asarray((counts > 0).sum(axis=0)).ravel()
        repeaters = np.asarray((counts > 1).sum(axis=0)).ravel()
        rate = np.divide(repeaters, users_per_item, out=np.zeros(len(repeaters)), where=users_per_item > 0)
        rate[rate < self.min_repeat_rate] = 0.0
        if self.repeatable is not None:
            rate = rate * self.repeatable.astype(float)
        self.rate, self.m = rate, m
        return self

    def recommend(self, users: np.ndarray, k: int, exclude_seen: bool = False) -> pd.DataFrame:
        return _batched(users, k, lambda u: self.m[u].multiply(self.rate).toarray(), None)


class Blend:
    """The list a channel shows: reciprocal-rank fusion of the component lists with weights, topped up
    from popularity so every user gets k items."""

    name = "personalized"

    def __init__(self, parts: dict[str, tuple[object, float]], fallback: Popularity, rrf_k: int = 10):
        self.parts, self.fallback, self.rrf_k = parts, fallback, rrf_k

    def recommend(self, users: np.ndarray, k: int, depth: int | None = None) -> pd.DataFrame:
        depth = depth or 3 * k
        lists = []
        for model, weight in self.parts.values():
            r = model.recommend(users, depth)
            lists.append(r.assign(fused=weight / (self.rrf_k + r["rank"]))[["user", "item", "fused"]])
        pop = self.fallback.recommend(users, depth)
        lists.append(pop.assign(fused=1e-3 / (self.rrf_k + pop["rank"]))[["user", "item", "fused"]])
        fused = pd.concat(lists).groupby(["user", "item"], as_index=False)["fused"].sum()
        fused = fused.sort_values(["user", "fused"], ascending=[True, False])
        fused["rank"] = fused.groupby("user").cumcount() + 1
        return fused[fused["rank"] <= k].rename(columns={"fused": "score"}).reset_index(drop=True)
