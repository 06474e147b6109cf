"""
### Score customers

Runs when identity resolution has updated the golden customer profiles (`p13n://gold/customer_profiles`).
Everything is computed as of the run's date (its data interval's end) and written to that date's
`as_of_date` partition, so reruns and backfills are idempotent.

* **features**: `gold.customer_features` (RFM, tenure, order value, category and brand affinity,
  channel mix, email/SMS engagement, returns, loyalty, recent web/app activity) and
  `gold.customer_affinities`, from orders, POS sales, clicks, messages and returns attributed
  through `gold.identity_keys`.
* **churn**, **clv** (in parallel): train, evaluate on a later window / holdout, register in MLflow,
  promote to `champion` only past the gate, score with the champion → `gold.churn_scores`, `gold.clv`.
* **segments**: RFM segments, k-means clusters with personas (gated the same way), lifecycle stage
  from each customer's cadence and the two models, best send time → `gold.segments`, `gold.send_times`.
* **validate**: Great Expectations suites on every output (attribution's too).
* **attribution** (beside the models): `gold.attribution`, the last 30 days' conversions credited to
  the touches before them (email, SMS, web, app, store visits) by six models, Markov chain included.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, dag, task

from p13n.alerts import deadline
from p13n.orchestration import after_assets, dag_defaults

SEGMENTS = Asset("p13n://gold/segments", group="gold")


@dag(
    dag_id="score_customers",
    schedule=after_assets(Asset("p13n://gold/customer_profiles", group="gold")),
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=dag_defaults(),
    deadline=deadline("score_customers"),
    tags=["p13n", "customers", "ml", "gold"],
    doc_md=__doc__,
)
def score_customers():
    @task
    def features() -> dict:
        from p13n.customers.tasks import features_task
        from p13n.orchestration import run_date

        return features_task(run_date())

    @task
    def churn(_features: dict) -> dict:
        from p13n.customers.tasks import model_task
        from p13n.orchestration import run_date

        return model_task("churn", run_date())

    @task
    def clv(_features: dict) -> dict:
        from p13n.customers.tasks import model_task
        from p13n.orchestration import run_date

        return model_task("clv", run_date())

    @task(outlets=[SEGMENTS])
    def segments(_churn: dict, _clv: dict) -> dict:
        from p13n.customers.tasks import model_task
        from p13n.orchestration import announce, run_date

        day = run_date()
        result = model_task("segments", day)
        announce(day)
        return result

    @task
    def attribution(_features: dict) -> dict:
        from p13n.measurement.tasks import attribution_task
        from p13n.orchestration import run_date

        return attribution_task(run_date())

    @task
    def validate(_segments: dict, _attribution: dict) -> dict:
        from p13n.customers.tasks import validate_task
        from p13n.orchestration import run_date

        return validate_task(run_date())

    built = features()
    validate(segments(churn(built), clv(built)), attribution(built))


score_customers()
