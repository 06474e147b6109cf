"""Deterministic experiment assignment: a customer's arm is a pure function of (salt, customer id).

The same customer lands in the same arm in every worker, process and day, with no state to share;
changing the salt reshuffles everyone. A `holdout` share is kept out of the experiment first (served
as requested, logged as the `holdout` arm), the rest is split by the arms' weights.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from p13n.config import ExperimentSettings

HOLDOUT = "holdout"
GLOBAL_SALT = "global-holdout"  # activation.global_holdout: no personalized message nor list


@dataclass(frozen=True)
class Assignment:
    experiment: str
    arm: str
    list_type: str  # the list served


def bucket(salt: str, customer_id: str) -> float:
    """A uniform number in [0, 1) from the salted id (first 60 bits of SHA-256)."""
    digest = hashlib.sha256(f"{salt}:{customer_id}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 4) / float(1 << 60)


def assign(name: str, exp: ExperimentSettings, customer_id: str, requested: str) -> Assignment | None:
    """The arm of `customer_id` in experiment `name`, or None when it does not apply to the request."""
    if not exp.enabled or requested != exp.applies_to or not exp.arms:
        return None
    u = bucket(exp.salt or name, customer_id)
    if u < exp.holdout:
        return Assignment(name, HOLDOUT, requested)
    u = (u - exp.holdout) / (1 - exp.holdout)
    arms = sorted(exp.arms.items())
    total = sum(a.weight for _, a in arms)
    cumulative = 0.0
    for arm_name, arm in arms:
        cumulative += arm.weight / total
        if u < cumulative:
            return Assignment(name, arm_name, arm.list_type)
    arm_name, arm = arms[-1]  # u within rounding of 1.0
    return Assignment(name, arm_name, arm.list_type)


def in_holdout(salt: str, share: float, customer_id: str) -> bool:
    """Whether the customer falls in a `share` held out under `salt` (GLOBAL_SALT: the global holdout;
    `audience:<name>`: an audience's own)."""
    return share > 0 and bucket(salt, customer_id) < share


def assign_first(
    experiments: dict[str, ExperimentSettings], customer_id: str, requested: str
) -> Assignment | None:
    """The first experiment (by name) that applies to the requested list: one experiment per request."""
    for name in sorted(experiments):
        found = assign(name, experiments[name], customer_id, requested)
        if found:
            return found
    return None
