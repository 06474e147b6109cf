"""
### Stream events

Every five minutes, drains the Kafka event topics of the source catalog (web clickstream, app events)
into their bronze tables in catch-up mode: reads to the end offsets present when the task starts, commits
micro-batches and stops, so streaming is scheduled, retried and observable like the batch. The offsets
are stored in the same Delta commit as the events, so a retry never lands an event twice. Run this DAG
or the `p13n stream consume` service, not both: delta-rs does not refuse two concurrent commits of the
same offsets (the consumer re-checks the table before each commit, which narrows that window only). Bad events
are landed with their reason (the nightly promotion
quarantines them) and sent to `<topic>.dlq`. With a serving Redis, each micro-batch also updates the
customers' real-time profiles (recently viewed, cart, last activity, session) before its commit.

* **catch_up**: the topics into `bronze.web_clickstream` and `bronze.app_events`.
* **triggers**: abandoned cart, browse abandonment, post-purchase and win-back on the landed events,
  with channel consent, the frequency caps and the contact ledger → `gold.triggered_audiences`
  (sent or suppressed, with the reason), for the exports to Klaviyo and Mailchimp.
* **dispatch** (after the triggers): the contact ledger's trigger and journey messages due by now,
  never dispatched, handed to Klaviyo as `Message Due (p13n)` events (or an outbox file without a key);
  `ops.dispatches` records each once (`p13n.cadence.dispatch`).
* **exposures**: the read API's experiment exposures, from their Redis stream into
  `silver.exposures`, with the stream position in the same Delta commit (exactly once; this DAG is
  the only writer), then trimmed from Redis. `export_audiences` measures them nightly.
"""

from __future__ import annotations

from airflow.sdk import dag, task

from p13n.orchestration import cron_schedule, dag_defaults


@dag(
    dag_id="stream_events",
    schedule=cron_schedule("*/5 * * * *"),
    catchup=False,
    max_active_runs=1,
    default_args=dag_defaults(),
    tags=["p13n", "streaming", "kafka", "bronze"],
    doc_md=__doc__,
)
def stream_events():
    @task
    def catch_up() -> dict:
        from p13n.orchestration import run_date
        from p13n.streaming.tasks import consume

        return consume(catch_up=True, batch_date=run_date())

    @task
    def triggers(_landed: dict) -> dict:
        from p13n.orchestration import run_date
        from p13n.streaming.tasks import triggers_task

        return triggers_task(day=run_date())

    @task
    def exposures() -> dict:
        from p13n.measurement.tasks import land_exposures_task

        return land_exposures_task()

    @task
    def dispatch(_fired: dict) -> dict:
        from p13n.cadence.tasks import dispatch_task
        from p13n.orchestration import run_date

        return dispatch_task(day=run_date())

    dispatch(triggers(catch_up()))
    exposures()


stream_events()
