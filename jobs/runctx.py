"""Who is writing: the run metadata every Delta commit carries (dag, run, logical date, code version)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import asdict, dataclass, field
from functools import lru_cache

from p13n import __version__
from p13n.config import REPO_ROOT


@lru_cache(maxsize=1)
def code_version() -> str:
    """The package version plus the git commit it runs from, when there is one."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


@dataclass(frozen=True)
class RunContext:
    """Identifies the run behind a write; Airflow tasks fill it from their context."""

    dag_id: str = "manual"
    run_id: str = "manual"
    task_id: str = ""
    logical_date: str = ""
    run_date: str = (
        ""  # the date the run processes (its partition key; asset-triggered runs have no logical date)
    )
    code_version: str = field(default_factory=code_version)

    @classmethod
    def from_env(cls) -> RunContext:
        """Build from the AIRFLOW_CTX_* variables Airflow exports inside a task, else a manual run."""
        env = os.environ
        return cls(
            dag_id=env.get("AIRFLOW_CTX_DAG_ID", "manual"),
            run_id=env.get("AIRFLOW_CTX_DAG_RUN_ID", "manual"),
            task_id=env.get("AIRFLOW_CTX_TASK_ID", ""),
            logical_date=env.get("AIRFLOW_CTX_LOGICAL_DATE", ""),
            run_date=env.get("P13N_RUN_DATE", ""),
        )

    def commit_metadata(self) -> dict[str, str]:
        return {f"p13n.{k}": v for k, v in asdict(self).items() if v}
