"""
### Resolve identities

Runs when every customer-bearing silver table has been updated (the Assets the ingestion DAG's
tasks emit): shop accounts, CRM contacts, loyalty members, third-party demographics, consents,
store Wi-Fi logins, reviews, service chats and social engagement.

* **resolve**: matches the records into customers (deterministic rules on email, phone and platform
  ids, then Splink's Fellegi-Sunter model with guards against over-merging), keeps customer ids
  stable against the previous run, and writes `gold.identity_graph`, `gold.identity_changes`
  (merges, splits, new and retired ids with their evidence), `gold.customer_aliases`,
  `gold.identity_keys` and the golden record `gold.customer_profiles` (raw PII only in
  `restricted.customer_profiles`). Counts, timings and, on generated data, precision/recall/F1
  go to `ops.identity_runs` and MLflow.
* **validate**: the Great Expectations suites `expectations/gold.*.json` on those tables.

Rerunning a date rebuilds that date's snapshot and changes from the snapshot before it.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, dag, task

from p13n.alerts import deadline
from p13n.config import get_settings
from p13n.orchestration import after_assets, dag_defaults

CUSTOMER_PROFILES = Asset("p13n://gold/customer_profiles", group="gold")


@dag(
    dag_id="resolve_identities",
    schedule=after_assets(
        *(Asset(f"p13n://silver/{name}", group="silver") for name in get_settings().identity.sources)
    ),
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=dag_defaults(),
    deadline=deadline("resolve_identities"),
    tags=["p13n", "identity", "gold"],
    doc_md=__doc__,
)
def resolve_identities():
    @task(outlets=[CUSTOMER_PROFILES])
    def resolve() -> dict:
        from p13n.identity.tasks import resolve_task
        from p13n.orchestration import announce, run_date

        day = run_date()
        result = resolve_task(day)
        announce(day)
        return result

    @task
    def validate(resolved: dict) -> dict:
        from p13n.identity.tasks import validate_task
        from p13n.orchestration import run_date

        return validate_task(run_date())

    validate(resolve())


resolve_identities()
