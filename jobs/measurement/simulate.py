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

from p13n.config import ExperimentArm, ExperimentSettings
from p13n.measurement.attribution import CONVERSION, NULL, START
from p13n.serving.experiments import assign, in_holdout


def true_lifts(
    lift: float, window_days: int, shape: float, scale: float, baseline: float = 0.0
) -> dict[str, float]:
    """The planted relative lift of each metric, for an arm whose rate is multiplied by 1 + `lift`
    against a baseline's 1 + `baseline`."""

    def p(rate_multiplier: float) -> float:
        return 1 - (1 + scale * window_days * rate_multiplier) ** (-shape)

    ratio = (1 + lift) / (1 + baseline) - 1
    return {
        "conversion": p(1 + lift) / p(1 + baseline) - 1,
        "orders": ratio,
        "revenue": ratio,
        "aov": 0.0,
    }


def units(
    n: int,
    *,
    seed: int,
    lift: float | dict[str, float],
    holdout: float = 0.5,
    window_days: int = 14,
    pre_days: int = 90,
    shape: float = 0.6,
    scale: float = 0.02,
    experiment: str = "audience:simulated",
) -> pd.DataFrame:
    """`n` units shaped like `p13n.measurement.experiments.unit_outcomes`' rows. `lift`: the treated
    units' rate multiplier less 1, against a `holdout` share split off by the holdout hash; or, for an
    API experiment, each arm's (arms split evenly by the API's own assignment)."""
    rng = np.random.default_rng(seed)
    ids = [f"S{seed:04d}{i:09d}" for i in range(n)]
    kind, _, name = experiment.partition(":")
    if isinstance(lift, dict):
        exp = ExperimentSettings(
            salt=name, arms={a: ExperimentArm(weight=1.0, list_type="popular") for a in lift}
        )
        arm = np.array([assign(name, exp, c, exp.applies_to).arm for c in ids])
        multiplier = np.array([1 + lift[a] for a in arm])
    else:
        held = np.array([in_holdout(f"{kind}:{name}", holdout, c) for c in ids])
        arm = np.where(held, "holdout", "treatment")
        multiplier = np.where(held, 1.0, 1 + lift)
    rate = rng.gamma(shape, scale, n)
    pre_orders = rng.poisson(rate * pre_days)
    post_orders = rng.poisson(rate * window_days * multiplier)

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
            "kind": kind,
            "arm": arm,
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


# A planted world for attribution: journeys walk a known first-order Markov chain between channels
# (no channel follows itself: repeats are one touch in `journeys`). Its true removal effects are what
# switching a channel off does to conversions in that world, so the Markov model must recover them.
PLANTED_CHAIN: dict[str, dict[str, float]] = {
    START: {"web": 0.45, "email": 0.3, "paid_search": 0.2, "push": 0.05},
    "web": {"email": 0.2, "paid_search": 0.1, "push": 0.05, CONVERSION: 0.05, NULL: 0.6},
    "email": {"web": 0.35, "push": 0.05, CONVERSION: 0.08, NULL: 0.52},
    "paid_search": {"web": 0.3, "email": 0.1, CONVERSION: 0.12, NULL: 0.48},
    "push": {"web": 0.25, "email": 0.1, CONVERSION: 0.03, NULL: 0.62},
}


def markov_journeys(
    n: int, *, seed: int, chain: dict[str, dict[str, float]] = PLANTED_CHAIN, max_touches: int = 30
) -> pd.DataFrame:
    """`n` journeys shaped like `p13n.measurement.attribution.journeys`' rows, walked on `chain` from
    `(start)` until `(conversion)` or `(null)` (cut at `max_touches`, which then does not convert);
    a conversion's revenue ~ LogNormal, touches an hour apart."""
    rng = np.random.default_rng(seed)
    moves = {s: (list(nxt), np.array(list(nxt.values())) / sum(nxt.values())) for s, nxt in chain.items()}
    rows = []
    for j in range(n):
        state, channels = START, []
        while len(channels) < max_touches:
            names, p = moves[state]
            state = names[rng.choice(len(names), p=p)]
            if state in (CONVERSION, NULL):
                break
            channels.append(state)
        converted = state == CONVERSION
        rows.append(
            {
                "journey_id": f"J{seed:04d}{j:09d}",
                "customer_id": f"C{seed:04d}{j:09d}",
                "converted": converted,
                "ended_at": pd.Timestamp("2024-03-01"),
                "revenue": float(rng.lognormal(3.6, 0.6)) if converted else 0.0,
                "channels": channels,
                "hours_before": [float(len(channels) - k) for k in range(len(channels))],
            }
        )
    return pd.DataFrame(rows)


def true_removal_effects(chain: dict[str, dict[str, float]] = PLANTED_CHAIN) -> dict[str, float]:
    """Each channel's share of conversions lost when it is switched off (a walk reaching it ends
    without converting), from the chain itself: P(conversion) by value iteration on the planted
    probabilities, with and without the channel."""
    channels = sorted(s for s in chain if s != START)

    def p_conversion(off: str | None) -> float:
        value = {s: 0.0 for s in chain} | {CONVERSION: 1.0, NULL: 0.0}
        for _ in range(10_000):
            new = {
                s: 0.0 if s == off else sum(p * value[t] for t, p in nxt.items()) / sum(nxt.values())
                for s, nxt in chain.items()
            }
            done = max(abs(new[s] - value[s]) for s in chain) < 1e-15
            value |= new
            if done:
                break
        return value[START]

    base = p_conversion(None)
    return {c: 1.0 - p_conversion(c) / base for c in channels}
