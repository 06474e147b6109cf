"""
### Export audiences
Runs when a date's recommendations are validated (`p13n://gold/recommendations`, after the customers
were scored). Sends every nightly audience of `activation.audiences` to its destinations and syncs the
gold tables to Snowflake.

* **exports** (one mapped task per audience and destination): the customers who consented to the
  audience's channel (erased customers never), with their personalization fields (top recommended
  items, segment, lifecycle stage, CLV tier, loyalty points, preferred store, best send time).
  Incremental against `ops.export_state`: only adds, updates and removes are sent, so a retry
  resumes where the failed try stopped. Klaviyo: bulk import jobs into the audience's list, consent
  through subscription jobs. Mailchimp: batch upserts into the list, the audience as a static segment.
  Each run's summary (sent, skipped for lack of consent, errors) is in `ops.export_runs`.
* **warehouse**: `activation.snowflake.tables` into Snowflake — a staging table, then MERGE on the
  business key; a rerun changes nothing. No raw PII leaves the lake.
* **triggers**: the night's triggers from the batch sources (`p13n.journeys.triggers`): checkout
  abandoned, birthday, back in stock, price drop, replenishment → `gold.triggered_audiences`.
* **journeys** (after them, before the exports): every journey of `conf/journeys.yaml` advanced by the night
  (entries, holdouts, sends, waits, branches, conversions) → `gold.journey_state`,
  `gold.journey_events`, and the journey's entrants, holdouts and messages in `silver.sends`.
* **one cadence**: every message (the journeys' steps, then each audience's new entrants, as the
  stream's triggers during the day) goes through `ops.contact_ledger` (`p13n.cadence`): caps per
  customer per day and week over all channels and per channel, quiet hours in the customer's time
  zone, the best hour (and weekday) to send; a message over a cap is not sent, with the cap named.
* **measure** (after the exports, failed or not): `gold.experiment_results` for the date: every
  audience and trigger holdout (the exports log who they sent and held out in `silver.sends`) and
  every API experiment (`silver.exposures`, landed by `stream_events`), per arm and metric: lift,
  interval, p-value, CUPED, sequential, sample ratio.
* **announce** (once every export was tried, failed or not): the `p13n://activation/exports` Asset,
  which the run report waits for; **watcher** fails the DAG run when anything failed.

Triggered audiences (abandoned cart...) are synced every 15 minutes by `sync_triggered_audiences`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, dag, task

from p13n.alerts import deadline
from p13n.orchestration import after_assets, dag_defaults

EXPORTS = Asset("p13n://activation/exports", group="activation")


@dag(
    dag_id="export_audiences",
    schedule=after_assets(Asset("p13n://gold/recommendations", group="gold")),
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=dag_defaults(),
    deadline=deadline("export_audiences"),
    tags=["p13n", "activation", "klaviyo", "mailchimp", "snowflake"],
    doc_md=__doc__,
)
def export_audiences():
    @task(trigger_rule="all_done")  # after the journeys (their messages take the ledger first), failed or not
    def audiences() -> list[dict]:
        from p13n.activation.tasks import audiences_for

        return [{"audience": a, "to": d} for a, d in audiences_for("nightly")]

    @task(max_active_tis_per_dagrun=2)  # the platforms' rate limits are per account
    def export(target: dict) -> dict:
        from p13n.activation.tasks import export_task
        from p13n.orchestration import run_date

        return export_task(target["audience"], target["to"], run_date())

    @task
    def warehouse() -> dict:
        from p13n.activation.tasks import warehouse_sync
        from p13n.orchestration import run_date

        return warehouse_sync(run_date())

    @task
    def triggers() -> dict:
        from p13n.journeys.tasks import nightly_triggers_task
        from p13n.orchestration import run_date

        return nightly_triggers_task(run_date())

    @task(trigger_rule="all_done")  # a journey entered by a trigger waits for them, failed or not
    def journeys() -> dict:
        from p13n.journeys.tasks import journeys_task
        from p13n.orchestration import run_date

        return journeys_task(run_date())

    @task(trigger_rule="all_done")
    def measure() -> dict:
        from p13n.measurement.tasks import measure_task
        from p13n.orchestration import run_date

        return measure_task(run_date())

    @task(outlets=[EXPORTS], trigger_rule="all_done")
    def announce() -> None:
        """Every export was tried: the run report may follow (and shows any that failed)."""
        from p13n.orchestration import announce, run_date

        announce(run_date())

    @task(trigger_rule="one_failed", retries=0, on_failure_callback=None)  # the failed task alerted
    def watcher() -> None:
        """A leaf that fails the run when any task failed (`announce` succeeds either way)."""
        raise RuntimeError("an export or the warehouse sync failed: see their task logs")

    fired = triggers()
    advanced = journeys()
    targets = audiences()
    fired >> advanced >> targets  # the ledger's order within a night: triggers, journeys, audiences
    done = [export.expand(target=targets), warehouse(), fired, advanced]
    measured = measure()
    done >> measured
    [*done, measured] >> announce()
    [*done, measured] >> watcher()


export_audiences()
