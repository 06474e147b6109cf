"""
### Privacy requests
Every hour: serves the pending requests of `ops.privacy_requests` (queued with
`p13n privacy request forget|access --customer ID | --email E`), oldest first.

* **forget** (right to erasure): the person is deleted from every lake layer (bronze, silver,
  quarantine, restricted, gold, ops), every kept serving version and their real-time keys in Redis,
  Klaviyo and Mailchimp (their deletion APIs) and Snowflake; each changed Delta table is vacuumed and
  its log cut, so no older version holds them; `ops.suppressions` (keyed hashes) keeps late or
  replayed records out; `ops.privacy_audit` records what was deleted where, without PII.
* **access**: everything held about the person, written to one JSON file under `data/privacy/`.

A served request keeps its id, status and time, and loses the email it named.
"""

from __future__ import annotations

from airflow.sdk import dag, task

from p13n.orchestration import cron_schedule, dag_defaults


@dag(
    dag_id="privacy_requests",
    schedule=cron_schedule("0 * * * *"),
    catchup=False,
    max_active_runs=1,
    default_args=dag_defaults(),
    tags=["p13n", "privacy", "gdpr"],
    doc_md=__doc__,
)
def privacy_requests():
    @task
    def serve_requests() -> dict:
        from p13n.privacy.tasks import process_requests

        return process_requests()

    serve_requests()


privacy_requests()
