"""Experiments with a planted effect, to check the estimators against a truth that is known.

Each customer has a purchase rate λ ~ Gamma(k, θ) per day, orders ~ Poisson(λ × days) and order
values ~ LogNormal. Units are split by the platform's own holdout hash; the treatment multiplies the
rate by (1 + lift) during the measurement window. So the true relative lift of orders and revenue
per customer is exactly `lift`, average order value is unchanged (lift 0), and the conversion lift
has a closed form: P(order) = 1 − (1 + θ·w)^(−k) for a window of w days.

The pre-period of the same customer (same λ) is the CUPED covariate, as in the lake.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from p13n.measurement.sends import in_holdout


def true_lifts(lift: float, window_days: int, shape: float, scale: float) -> dict[str, float]:
    """The planted relative lift of each metric."""

    def p(rate_multiplier: float) -> float:
        return 1 - (1 + scale * window_days * rate_multiplier) ** (-shape)

    return {"conversion": p(1 + lift) / p(1.0) - 1, "orders": lift, "revenue": lift, "aov": 0.0}


def units(
    n: int,
    *,
    seed: int,
    lift: float,
    holdout: float = 0.5,
    window_days: int = 14,
    pre_days: int = 90,
    shape: float = 0.6,
    scale: float = 0.02,
    experiment: str = "audience:simulated",
) -> pd.DataFrame:
    """`n` units shaped like `p13n.measurement.experiments.unit_outcomes`' rows."""
    rng = np.random.default_rng(seed)
    ids = [f"S{seed:04d}{i:09d}" for i in range(n)]
    name = experiment.partition(":")[2]
    held = np.array([in_holdout(f"audience:{name}", holdout, c) for c in ids])
    rate = rng.gamma(shape, scale, n)
    pre_orders = rng.poisson(rate * pre_days)
    post_orders = rng.poisson(rate * window_days * np.where(held, 1.0, 1 + lift))

    def revenue(orders: np.ndarray) -> np.ndarray:
        total = np.zeros(len(orders))
        has = orders > 0
        # Σ of `orders` lognormal order values, drawn per unit
        values = rng.lognormal(3.6, 0.6, int(orders.sum()))
        idx = np.repeat(np.arange(len(orders)), orders)
        np.add.at(total, idx, values)
        return np.where(has, total, 0.0)

    return pd.DataFrame(
        {
            "experiment": experiment,
            "kind": experiment.partition(":")[0],
            "arm": np.where(held, "holdout", "treatment"),
            "customer_id": ids,
            "entered_at": pd.Timestamp("2024-03-01"),
            "orders": post_orders,
            "revenue": revenue(post_orders),
            "converted": (post_orders > 0).astype(int),
            "pre_orders": pre_orders,
            "pre_revenue": revenue(pre_orders),
            "pre_converted": (pre_orders > 0).astype(int),
            "window_share": 1.0,
        }
    )
