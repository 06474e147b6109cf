"""ALS for implicit feedback in Spark ML: the cluster path, with the same interface as
`p13n.models.recommenders.ImplicitALS` (indices in, DataFrame(user, item, rank, score) out)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse

from p13n.models.recommenders import SeenFilter
from p13n.spark import to_pandas


class SparkALS(SeenFilter):
    name = "als_spark"

    def __init__(
        self,
        spark,
        factors: int = 64,
        regularization: float = 0.05,
        alpha: float = 10.0,
        iterations: int = 15,
        seed: int = 13,
    ):
        self.spark, self.seed = spark, seed
        self.params = {
            "factors": factors,
            "regularization": regularization,
            "alpha": alpha,
            "iterations": iterations,
        }

    def fit(self, m: sparse.csr_matrix) -> SparkALS:
        from pyspark.ml.recommendation import ALS

        coo = m.tocoo()
        frame = pd.DataFrame(
            {"user": coo.row.astype("int32"), "item": coo.col.astype("int32"), "weight": coo.data}
        )
        df = self.spark.createDataFrame(frame)
        als = ALS(
            rank=self.params["factors"],
            maxIter=self.params["iterations"],
            regParam=self.params["regularization"],
            alpha=self.params["alpha"],
            implicitPrefs=True,
            userCol="user",
            itemCol="item",
            ratingCol="weight",
            seed=self.seed,
            coldStartStrategy="drop",
        )
        self.model = als.fit(df)
        self.seen = m
        # Factors come back to the driver: scoring precomputed lists is a matrix product per batch.
        self.user_factors = _factors(self.model.userFactors, m.shape[0], self.params["factors"])
        self.item_factors = _factors(self.model.itemFactors, m.shape[1], self.params["factors"])
        return self

    def recommend(self, users: np.ndarray, k: int, exclude_seen: bool = True) -> pd.DataFrame:
        from p13n.models.recommenders import factor_recommend

        return factor_recommend(self.user_factors, self.item_factors, users, k, self._filter(exclude_seen))


def _factors(df, n: int, rank: int) -> np.ndarray:
    rows = to_pandas(df)
    out = np.zeros((n, rank), dtype=np.float32)
    out[rows["id"].to_numpy()] = np.vstack(rows["features"].to_numpy())
    return out
