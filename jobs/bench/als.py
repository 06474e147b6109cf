"""`p13n bench als`: Spark ML ALS against the `implicit` library on the same matrix, rank and iterations.

The matrix is synthetic but shaped like the retailer's purchases (default 100,000 customers × 50,000
products, a Zipf-like item popularity, ~12 interactions per customer). Both fit the same number of
iterations at the same rank; `als_spark_vs_implicit` is Spark's fit time ÷ implicit's (> 1: Spark slower).
"""

from __future__ import annotations

import time

import numpy as np
from scipy import sparse

DEFAULT_USERS, ITEMS, PER_USER = 100_000, 50_000, 12


def synthetic_matrix(users: int, items: int, per_user: int, seed: int = 13) -> sparse.csr_matrix:
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8
    popularity /= popularity.sum()
    n = users * per_user
    rows = np.repeat(np.arange(users), per_user)
    cols = rng.choice(items, size=n, p=popularity)
    m = sparse.csr_matrix((rng.integers(1, 4, size=n).astype(np.float32), (rows, cols)), shape=(users, items))
    m.sum_duplicates()
    return m


def bench_als(rows: int | None = None, reps: int = 1, factors: int = 64, iterations: int = 10) -> dict:
    from p13n.config import get_settings
    from p13n.models.recommenders import ImplicitALS
    from p13n.models.spark_als import SparkALS
    from p13n.spark import get_spark

    users = rows or DEFAULT_USERS
    items = min(ITEMS, max(1000, users // 2))
    m = synthetic_matrix(users, items, PER_USER)
    spark = get_spark(get_settings())
    params = {"factors": factors, "iterations": iterations, "regularization": 0.05, "alpha": 10.0}
    implicit_s, spark_s = [], []
    for _ in range(max(1, reps)):
        t = time.perf_counter()
        ImplicitALS(**params).fit(m)
        implicit_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        SparkALS(spark, **params).fit(m)
        spark_s.append(time.perf_counter() - t)
    best_implicit, best_spark = min(implicit_s), min(spark_s)
    return {
        "als_users": users,
        "als_items": items,
        "als_nonzeros": int(m.nnz),
        "als_factors": factors,
        "als_iterations": iterations,
        "als_implicit_s": round(best_implicit, 2),
        "als_spark_s": round(best_spark, 2),
        "als_spark_vs_implicit": round(best_spark / best_implicit, 2),
    }
