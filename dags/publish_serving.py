"""
### Publish serving

Runs when a date's recommendations are validated (`p13n://gold/recommendations`). Publishes that date's
gold tables — recommendations per customer and list type, similar and bought-together items,
trending and popular lists, segments, profiles (segment, lifecycle, CLV tier, churn band, consents,
best send time) and source-id lookups — to the serving store (Redis) as a new version, verifies it
(key counts, content digests) and makes it live with one atomic pointer switch. No raw PII is published.

* **publish**: refused when a published table failed its expectations or a gated model has no champion
  (a data engineer can force it with `p13n serving publish --date D --force`); a failure or a crash
  leaves the previous version live. `p13n serving rollback` makes the previous version live again in
  a second; `p13n serving status` lists the versions kept.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, dag, task

from p13n.alerts import deadline
from p13n.orchestration import after_assets, dag_defaults

SERVING = Asset("p13n://serving/live", group="serving")


@dag(
    dag_id="publish_serving",
    schedule=after_assets(Asset("p13n://gold/recommendations", group="gold")),
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=dag_defaults(),
    deadline=deadline("publish_serving"),
    tags=["p13n", "serving", "redis"],
    doc_md=__doc__,
)
def publish_serving():
    @task(outlets=[SERVING])
    def publish() -> dict:
        from p13n.orchestration import announce, run_date
        from p13n.serving.tasks import publish_task

        day = run_date()
        result = publish_task(day)
        announce(day)
        return result

    publish()


publish_serving()
