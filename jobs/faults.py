"""Named fault-injection points for crash tests.

`P13N_FAULTS=lake.before_commit` makes the process die at that point as if killed (no cleanup,
no exception handlers), so tests can prove that a crash leaves the previous state intact.
"""

from __future__ import annotations

import os

KILLED_EXIT_CODE = 137  # what a shell reports for SIGKILL


def checkpoint(name: str) -> None:
    """Die here when the fault `name` is armed in $P13N_FAULTS (a comma-separated list)."""
    armed = os.environ.get("P13N_FAULTS", "")
    if armed and name in armed.split(","):
        os._exit(KILLED_EXIT_CODE)


class FaultInjected(RuntimeError):
    """Raised at a checkpoint armed as `name:raise` (an ordinary task failure, not a crash)."""


def fail_point(name: str) -> None:
    """Raise `FaultInjected` here when `name:raise` is armed in $P13N_FAULTS; die when `name` is."""
    armed = os.environ.get("P13N_FAULTS", "").split(",")
    if f"{name}:raise" in armed:
        raise FaultInjected(f"fault injected at {name} (P13N_FAULTS)")
    checkpoint(name)
