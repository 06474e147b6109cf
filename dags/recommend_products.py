"""
### Recommend products

Runs when the customer segments of a date are published (`p13n://gold/segments`, which follows
ingestion and identity resolution). Everything is computed as of the run's date and written to that
date's `as_of_date` partition, so reruns and backfills are idempotent.

* **interactions**: purchases, carts, wishlist adds and product views (returns count against),
  weighted by kind and decayed by age → `gold.interactions`.
* **train**: tune ALS (engine from config: `implicit` or Spark ML) on a validation split, evaluate
  every model, the served blend and the popularity baseline on a time split that holds out each
  customer's latest order; register the recipe in MLflow and promote it only past the gate.
* **next_basket**: beside train (it needs no recipe), the next-basket model fitted on every purchase
  and each customer's next-basket list, kept for **lists**.
* **lists**: with the champion recipe — personalized (blend + business rules + fallback chain), buy
  it again, recently viewed, popular in segment → `gold.recommendations`; `gold.item_similarity`,
  `gold.bought_together`, `gold.trending`, `gold.popular_items`.
* The four tasks read the same inputs: the first reads them from the lake and keeps an owner-only
  copy (`p13n.recommend.cache`, keyed on each input table's Delta version), the others load it and
  **lists** deletes it.
* **validate**: Great Expectations suites on every output (recorded in `ops.validations`); then
  `p13n://gold/recommendations` is announced, which triggers `publish_serving`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, dag, task

from p13n.alerts import deadline
from p13n.orchestration import after_assets, dag_defaults

RECOMMENDATIONS = Asset("p13n://gold/recommendations", group="gold")


@dag(
    dag_id="recommend_products",
    schedule=after_assets(Asset("p13n://gold/segments", group="gold")),
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=dag_defaults(),
    deadline=deadline("recommend_products"),
    tags=["p13n", "recommendations", "ml", "gold"],
    doc_md=__doc__,
)
def recommend_products():
    @task
    def interactions() -> dict:
        from p13n.orchestration import run_date
        from p13n.recommend.tasks import interactions_task

        return interactions_task(run_date())

    @task
    def train(_interactions: dict) -> dict:
        from p13n.orchestration import run_date
        from p13n.recommend.tasks import train_task

        return train_task(run_date())

    @task
    def next_basket(_interactions: dict) -> dict:
        from p13n.orchestration import run_date
        from p13n.recommend.tasks import next_basket_task

        return next_basket_task(run_date())

    @task
    def lists(_train: dict, _next_basket: dict) -> dict:
        from p13n.orchestration import run_date
        from p13n.recommend.tasks import lists_task

        return lists_task(run_date())

    @task(outlets=[RECOMMENDATIONS])  # announced once validated: publishing follows it
    def validate(_lists: dict) -> dict:
        from p13n.orchestration import announce, run_date
        from p13n.recommend.tasks import validate_task

        day = run_date()
        result = validate_task(day)
        announce(day)
        return result

    inputs = interactions()
    validate(lists(train(inputs), next_basket(inputs)))


recommend_products()
