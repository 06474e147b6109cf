"""Two-arm comparisons from sufficient statistics: the estimators `gold.experiment_results` reports.

Every metric reaches this module as per-arm sums (n, Σx, Σx², and for CUPED the pre-period Σ and the
cross products), so the lake aggregates millions of customers in SQL and only a handful of numbers
reach Python. The formulas are the ones of GrowthBook's `gbstats` (frequentist engine), written out
here because its pins (numpy < 2, pandas < 2) do not fit this stack; `p13n bench experiments` runs
`gbstats` itself on the same sums and reports the largest relative difference.

* Relative lift (variant − baseline) / baseline, its variance by the delta method, Welch–Satterthwaite
  degrees of freedom, a two-sided t interval and p-value.
* CUPED (regression adjustment): each arm's mean minus θ × its pre-period mean, θ pooled over both
  arms (cov(post, pre) / var(pre)); the relative lift stays relative to the *unadjusted* baseline.
* Sequential: the always-valid interval and p-value of Waudby-Smith et al. (2023), safe to look at
  every night (tuning parameter: the expected sample size).
* Ratio metrics (average order value = revenue / orders, per customer sums): the delta method.
* Sample-ratio mismatch: a chi-square test of the units per arm against the configured shares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from scipy import stats as st


@dataclass(frozen=True)
class Mean:
    """A per-unit metric: n units, Σx and Σx² (`proportion`: x is 0/1 and the variance is p(1 − p))."""

    n: int
    sum: float
    sum_sq: float
    proportion: bool = False

    @property
    def mean(self) -> float:
        return self.sum / self.n if self.n else 0.0

    @property
    def variance(self) -> float:
        if self.proportion:
            return self.mean * (1 - self.mean)
        if self.n <= 1:
            return 0.0
        return (self.sum_sq - self.sum**2 / self.n) / (self.n - 1)

    def __add__(self, other: Mean) -> Mean:
        return Mean(self.n + other.n, self.sum + other.sum, self.sum_sq + other.sum_sq, self.proportion)


@dataclass(frozen=True)
class Ratio:
    """Σm / Σd over units (average order value: revenue over orders), with Σm·d for the covariance."""

    n: int
    m: Mean
    d: Mean
    md_sum: float

    @property
    def mean(self) -> float:
        return self.m.sum / self.d.sum if self.d.sum else 0.0

    @property
    def variance(self) -> float:
        if self.d.mean == 0 or self.n <= 1:
            return 0.0
        cov = (self.md_sum - self.m.sum * self.d.sum / self.n) / (self.n - 1)
        dm = self.d.mean
        return (
            self.m.variance / dm**2 - 2 * cov * self.m.mean / dm**3 + self.m.mean**2 * self.d.variance / dm**4
        )


@dataclass(frozen=True)
class Adjusted:
    """CUPED: the post-period metric adjusted by its pre-period value with the pooled θ."""

    post: Mean
    pre: Mean
    post_pre_sum: float
    theta: float = 0.0

    @property
    def n(self) -> int:
        return self.post.n

    @property
    def covariance(self) -> float:
        if self.n <= 1:
            return 0.0
        return (self.post_pre_sum - self.post.sum * self.pre.sum / self.n) / (self.n - 1)

    @property
    def mean(self) -> float:
        return self.post.mean - self.theta * self.pre.mean

    @property
    def unadjusted_mean(self) -> float:
        return self.post.mean

    @property
    def variance(self) -> float:
        if self.n <= 1:
            return 0.0
        return self.post.variance + self.theta**2 * self.pre.variance - 2 * self.theta * self.covariance


def pooled_theta(a: Adjusted, b: Adjusted) -> float:
    """θ = cov(post, pre) / var(pre) over both arms together (0 when the pre period does not vary)."""
    joint = Adjusted(a.post + b.post, a.pre + b.pre, a.post_pre_sum + b.post_pre_sum)
    if joint.pre.variance == 0 or joint.post.variance == 0:
        return 0.0
    return joint.covariance / joint.pre.variance


@dataclass(frozen=True)
class Comparison:
    """Variant against baseline: the relative lift, its interval and p-value (None when undefined)."""

    baseline_mean: float
    variant_mean: float
    lift: float | None  # relative: (variant − baseline) / baseline
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    stderr: float | None
    note: str = ""

    @property
    def absolute(self) -> float:
        return self.variant_mean - self.baseline_mean


def _unadjusted(s) -> float:
    return s.unadjusted_mean if isinstance(s, Adjusted) else s.mean


def compare(a, b, *, alpha: float = 0.05, sequential_tuning: float | None = None) -> Comparison:
    """Relative lift of `b` (variant) over `a` (baseline): Welch's t (or, with `sequential_tuning`,
    the always-valid sequential interval). `a` and `b` are `Mean`, `Ratio` or `Adjusted` alike."""
    if isinstance(a, Adjusted) and isinstance(b, Adjusted):
        theta = pooled_theta(a, b)
        a, b = (replace(a, theta=theta), replace(b, theta=theta)) if theta else (a.post, b.post)
    base, var_mean = a.mean, b.mean
    base_raw, var_raw = _unadjusted(a), _unadjusted(b)
    empty = Comparison(base_raw, var_raw, None, None, None, None, None)
    if a.n < 2 or b.n < 2:
        return replace(empty, note="fewer than 2 units in an arm")
    if base == 0 or base_raw == 0:
        return replace(empty, note="the baseline's mean is 0")
    va, vb = a.variance, b.variance
    if va <= 0 or vb <= 0:
        return replace(empty, note="no variance in an arm")
    lift = (var_mean - base) / base_raw
    variance = vb / (base_raw**2 * b.n) + va * var_raw**2 / (base_raw**4 * a.n)
    se = math.sqrt(variance)
    if sequential_tuning:
        n = a.n + b.n
        rho = math.sqrt((-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / sequential_tuning)
        s2 = variance * n
        width = math.sqrt(s2) * math.sqrt(
            2 * (n * rho**2 + 1) * math.log(math.sqrt(n * rho**2 + 1) / alpha) / (n * rho) ** 2
        )
        st2 = lift**2 * n / variance
        tr2p1 = n * rho**2 + 1
        e_value = math.exp(rho**2 * st2 / (2 * tr2p1)) / math.sqrt(tr2p1)
        p = min(1 / e_value, 1.0)
    else:
        dof = (vb / b.n + va / a.n) ** 2 / (vb**2 / (b.n**2 * (b.n - 1)) + va**2 / (a.n**2 * (a.n - 1)))
        width = st.t.ppf(1 - alpha / 2, dof) * se
        p = 2 * (1 - st.t.cdf(abs(lift / se), dof))
    return Comparison(base_raw, var_raw, lift, lift - width, lift + width, float(p), se)


def sample_ratio_p(units: dict[str, int], shares: dict[str, float]) -> float | None:
    """p-value of a chi-square test of the units per arm against the expected shares (None: one arm).
    A small value (< 0.001) means the split is broken: the comparison cannot be trusted."""
    arms = [a for a in units if shares.get(a, 0) > 0]
    total = sum(units[a] for a in arms)
    if len(arms) < 2 or total == 0:
        return None
    weight = sum(shares[a] for a in arms)
    expected = [total * shares[a] / weight for a in arms]
    return float(st.chisquare([units[a] for a in arms], expected).pvalue)
