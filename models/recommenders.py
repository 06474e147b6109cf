"""Recommenders on an implicit-feedback matrix (users × items, weights), single-node: the popularity
baseline, ALS (the `implicit` library), item-item cosine similarity, buy-it-again, and the blend the
channels show. Each has `fit(matrix)` and `recommend(users, k) -> DataFrame(user, item, rank, score)`
with user and item *indices*; `Interactions` maps them to ids.

Spark ML's ALS (the cluster path) lives in `p13n.models.spark_als`; `models/evaluation.py` scores all.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from types import SimpleNamespace

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


def _frame(users: np.ndarray, items: np.ndarray, rank: np.ndarray, score: np.ndarray) -> pd.DataFrame:
    out = pd.DataFrame(
        {
            "user": users.astype(np.int64, copy=False),
            "item": items.astype(np.int64, copy=False),
            "rank": rank.astype(np.int64, copy=False),
            "score": score.astype(np.float64, copy=False),
        }
    )
    return out[np.isfinite(out["score"]) & (out["score"] > 0)].reset_index(drop=True)


def _top_k(scores: np.ndarray, users: np.ndarray, k: int, seen: sparse.csr_matrix | None) -> pd.DataFrame:
    """The k best-scoring items per row of a dense `scores` (users × items), skipping `seen` items."""
    scores = np.array(scores, dtype=np.float64, copy=True)
    if seen is not None:
        rows = seen[users]
        scores[rows.nonzero()] = -np.inf
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return _ranked_frame(
        users, np.take_along_axis(part, order, axis=1), np.take_along_axis(part_scores, order, axis=1)
    )


def _ranked_frame(users: np.ndarray, items: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """Row i of `items`/`scores` (users × k, best first) is user i's list: one row per (user, rank)."""
    k = items.shape[1]
    return _frame(
        np.repeat(users, k), items.ravel(), np.tile(np.arange(1, k + 1), len(users)), scores.ravel()
    )


def _top_k_sparse(
    scores: sparse.spmatrix, users: np.ndarray, k: int, seen: sparse.csr_matrix | None
) -> pd.DataFrame:
    """The k best positive scores per row of a sparse `scores`, ties to the lower item index, `seen`
    items skipped. Only the stored entries are sorted: a user with a few interactions costs a few
    entries, not a row of the whole catalog."""
    coo = sparse.coo_matrix(scores)
    row, col, val = coo.row, coo.col, coo.data.astype(np.float64)
    keep = np.isfinite(val) & (val > 0)
    if seen is not None and len(row):  # (no entry: scipy answers an empty sparse matrix, not an array)
        seen_rows = sparse.csr_matrix(seen[users])
        keep &= np.asarray(seen_rows[row, col]).ravel() == 0
    row, col, val, rank = _ranked_within_rows(row[keep], col[keep], val[keep])
    top = rank <= k
    return _frame(users[row[top]], col[top], rank[top], val[top])


def _ranked_within_rows(row: np.ndarray, col: np.ndarray, val: np.ndarray):
    """The entries sorted by row, value descending, column; with each one's rank (1…) in its row."""
    order = np.lexsort((col, -val, row))
    row, col, val = row[order], col[order], val[order]
    starts = np.flatnonzero(np.r_[True, row[1:] != row[:-1]]) if len(row) else np.array([], dtype=np.int64)
    rank = np.arange(len(row)) - np.repeat(starts, np.diff(np.r_[starts, len(row)])) + 1
    return row, col, val, rank


def _top_k_factors(
    query: np.ndarray, item_factors: np.ndarray, users: np.ndarray, k: int, seen: sparse.csr_matrix | None
) -> pd.DataFrame:
    """The k best `query @ item_factors.T` per user, `seen` items skipped: `implicit`'s multithreaded
    top-k, which never materializes the users × items score matrix."""
    from implicit.cpu.topk import topk

    k = min(k, item_factors.shape[0])
    filt = _CsrRows(sparse.csr_matrix(seen[users])) if seen is not None else None
    ids, best = topk(
        np.ascontiguousarray(item_factors, dtype=np.float32),
        np.ascontiguousarray(query, dtype=np.float32),
        k,
        filter_query_items=filt,
        num_threads=0,
    )
    return _ranked_frame(users, ids, best)


class _CsrRows:
    """A CSR matrix's rows for `implicit`'s top-k, which reads `filter_query_items[i].indices` one
    row at a time: scipy's row indexing costs tens of µs a call, a slice of `indices` a fraction of
    that (top 50 of 10k items for 10k users: 3.1 s → 1.3 s, the same lists)."""

    __slots__ = ("indptr", "columns")

    def __init__(self, m: sparse.csr_matrix):
        self.indptr, self.columns = m.indptr, m.indices

    def __getitem__(self, row: int) -> SimpleNamespace:
        return SimpleNamespace(indices=self.columns[self.indptr[row] : self.indptr[row + 1]])


def _batched(users: np.ndarray, k: int, score_fn, seen, batch: int | None = None) -> pd.DataFrame:
    """`score_fn(users)` per batch of users → the top k of each: dense scores (users × items) or
    sparse ones (only the stored entries are candidates)."""
    if batch is None:  # a dense users × items block of at most ~16M scores (128 MB) at a time
        n_items = seen.shape[1] if seen is not None else 50_000
        batch = int(np.clip(16_000_000 // max(n_items, 1), 32, 2048))
    parts = []
    for chunk in _chunks(users, batch):
        scores = score_fn(chunk)
        top = _top_k_sparse if sparse.issparse(scores) else _top_k
        parts.append(top(scores, chunk, k, seen))
    return _concat(parts)


def _chunks(users: np.ndarray, size: int):
    return (users[i : i + size] for i in range(0, len(users), size))


def _concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    return (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame(columns=["user", "item", "rank", "score"])
    )


class SeenFilter:
    """What a model skips when asked to exclude seen items: everything the user interacted with, or
    only the pairs given to `excluding` (e.g. `not_repeating`: items bought before that do not repeat,
    since in repeat-purchase retail a shopper's own items are the likeliest next purchase)."""

    exclude: sparse.csr_matrix | None = None
    seen: sparse.csr_matrix

    def excluding(self, pairs: sparse.csr_matrix | None):
        self.exclude = pairs
        return self

    def _filter(self, exclude_seen: bool) -> sparse.csr_matrix | None:
        if not exclude_seen:
            return None
        return self.exclude if self.exclude is not None else self.seen


def not_repeating(seen: sparse.csr_matrix, repeats: np.ndarray) -> sparse.csr_matrix:
    """The (user, item) pairs of `seen` whose item does not repeat (`repeats[item]` False)."""
    out = sparse.csr_matrix(seen @ sparse.diags((~np.asarray(repeats, bool)).astype(np.float32)))
    out.eliminate_zeros()
    return out


class Popularity(SeenFilter):
    """Items by how many users interacted with them: the baseline every model must beat."""

    name = "popularity"

    def fit(self, m: sparse.csr_matrix) -> Popularity:
        self.seen = m
        self.scores = np.asarray((m > 0).sum(axis=0)).ravel().astype(float)
        return self

    def recommend(self, users: np.ndarray, k: int, exclude_seen: bool = True) -> pd.DataFrame:
        """The most popular items each user has not seen, ties to the lower item index. One global
        ranking; a user's list is its first k items they have not seen."""
        ranked = np.lexsort((np.arange(len(self.scores)), -self.scores))
        ranked = ranked[self.scores[ranked] > 0]
        skip = self._filter(exclude_seen)
        parts = []
        for chunk in _chunks(users, 8192):
            if skip is None:
                cand, ok = ranked[:k], np.ones((len(chunk), min(k, len(ranked))), dtype=bool)
            else:
                rows = skip[chunk]
                cand = ranked[: k + int(np.diff(rows.indptr).max(initial=0))]
                ok = rows[:, cand].toarray() == 0
            pos = np.cumsum(ok, axis=1)
            r, c = np.nonzero(ok & (pos <= k))
            parts.append(_frame(chunk[r], cand[c], pos[r, c], self.scores[cand[c]]))
        return _concat(parts)


class ImplicitALS(SeenFilter):
    """Alternating least squares for implicit feedback (Hu, Koren & Volinsky 2008), `implicit` library."""

    name = "als"

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.05,
        alpha: float = 10.0,
        iterations: int = 15,
        seed: int = 13,
    ):
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
        return factor_recommend(
            self.model.user_factors, self.model.item_factors, users, k, self._filter(exclude_seen)
        )


def factor_recommend(user_factors, item_factors, users: np.ndarray, k: int, seen) -> pd.DataFrame:
    """Top k of `user_factors[u] @ item_factors.T` per user (any factorization: implicit, Spark ML)."""
    return _concat(
        [_top_k_factors(user_factors[u], item_factors, u, k, seen) for u in _chunks(users, 65_536)]
    )


class ItemSimilarity(SeenFilter):
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
        return _batched(rows, k, lambda r: self.similarity[r], None).rename(
            columns={"user": "item_a", "item": "item_b"}
        )

    def recommend(self, users: np.ndarray, k: int, exclude_seen: bool = True) -> pd.DataFrame:
        return _batched(
            users,
            k,
            lambda u: self.seen[u] @ self.similarity,
            self._filter(exclude_seen),
        )


def _keep_top_per_row(m: sparse.csr_matrix, n: int) -> sparse.csr_matrix:
    """Each row's n largest entries (ties to the lower column), the rest dropped."""
    coo = m.tocoo()
    row, col, val, rank = _ranked_within_rows(coo.row, coo.col, coo.data)
    top = rank <= n
    return sparse.csr_matrix((val[top], (row[top], col[top])), shape=m.shape)


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

    def recommend(self, users: np.ndarray, k: int) -> pd.DataFrame:
        """Each user's own repeating items by purchases × the item's repeat rate (seen ones are the point)."""
        return _batched(users, k, lambda u: sparse.csr_matrix(self.m[u].multiply(self.rate)), None)


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
