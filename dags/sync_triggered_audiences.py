"""
### Sync triggered audiences
Every 15 minutes: the audiences of `activation.audiences` with `schedule: triggered` (abandoned cart,
browse abandonment...: customers with a `sent` trigger in `gold.triggered_audiences`, written by
`stream_events`) to their destinations, incrementally — a customer whose trigger aged out of the
audience's window is removed from the list, so the journey in Klaviyo or Mailchimp starts once.
Consent and erasure are checked at export time like the nightly audiences.
"""

from __future__ import annotations

from airflow.sdk import dag, task

from p13n.orchestration import cron_schedule, dag_defaults


@dag(
    dag_id="sync_triggered_audiences",
    schedule=cron_schedule("*/15 * * * *"),
    catchup=False,
    max_active_runs=1,
    default_args=dag_defaults(),
    tags=["p13n", "activation", "streaming"],
    doc_md=__doc__,
)
def sync_triggered_audiences():
    @task
    def audiences() -> list[dict]:
        from p13n.activation.tasks import audiences_for

        return [{"audience": a, "to": d} for a, d in audiences_for("triggered")]

    @task(max_active_tis_per_dagrun=1)
    def export(target: dict, ds: str | None = None) -> dict:
        from p13n.activation.tasks import export_task

        return export_task(target["audience"], target["to"], ds)

    export.expand(target=audiences())


sync_triggered_audiences()
