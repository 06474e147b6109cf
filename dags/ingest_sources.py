"""
### Ingest sources

Lands every source of the catalog (`conf/sources.yaml`) for the run's date and promotes it. Runs are
partitioned by date: the 01:00 run processes the night before (partition key `YYYY-MM-DD`), and the
key travels with every Asset event to the DAGs downstream (`p13n trigger ingest_sources --date D`
runs any date again):

* **ingest_&lt;source&gt;**, one task per source, independent of the others (one failing source does
  not block the rest; each retries on its own): landing → `bronze.<source>` (every record received,
  as text, with file and line) → `silver.<source>` (typed, standardized, deduplicated, PII
  pseudonymized), rejected rows → `quarantine.<source>` with their reasons, raw PII →
  `restricted.<source>`. The batch must reconcile (bronze = silver + quarantine) and pass its
  critical expectations, or it is not promoted and the task fails without retrying.
  Each task updates the Asset of its silver table, for this date's partition.
* **summarize**: writes `ops.ingest_runs` (rows read, promoted, quarantined and why, expectations;
  a source that failed for good as `failed` with its error) and prints the per-source summary.
* **watcher**: fails the run when a source failed (that source's task already alerted).

Reruns of a date replace that date's bronze and quarantine partitions and re-merge silver: the
tables end up the same. Backfill with `p13n airflow backfill create --dag-id ingest_sources
--from-date A --to-date B` (a range of partition dates), or `p13n backfill` without a scheduler.
"""

from __future__ import annotations

from airflow.sdk import Asset, dag, task

from p13n.alerts import deadline
from p13n.orchestration import dag_defaults, nightly_schedule, source_slots
from p13n.sources.catalog import catalog


def silver_asset(source_name: str) -> Asset:
    return Asset(f"p13n://silver/{source_name}", group="silver")


@dag(
    dag_id="ingest_sources",
    schedule=nightly_schedule("0 1 * * *"),  # runs partitioned by date: the key flows down the assets
    catchup=False,
    max_active_runs=1,
    max_active_tasks=source_slots(),  # thin Spark clients: two per core by default
    default_args=dag_defaults(),
    deadline=deadline("ingest_sources"),
    tags=["p13n", "ingestion", "bronze", "silver"],
    doc_md=__doc__,
)
def ingest_sources():
    results = []
    for name in catalog().names():

        @task(task_id=f"ingest_{name}", outlets=[silver_asset(name)])
        def ingest(source_name: str = name) -> dict:
            from p13n.orchestration import announce, run_date
            from p13n.sources.tasks import ingest_task

            day = run_date()
            result = ingest_task(source_name, day)
            announce(day)
            return result

        results.append(ingest())

    @task(trigger_rule="all_done")
    def summarize(results: list) -> int:
        """Every source's outcome, failures included, to `ops.ingest_runs`."""
        from p13n.orchestration import run_date
        from p13n.sources.catalog import catalog
        from p13n.sources.tasks import failed_sources, summarize_task, task_errors

        done = [r for r in results if r]
        names = catalog().names()
        missing = [n for n in names if n not in {r["source"] for r in done}]
        return summarize_task(done, run_date(), failed_sources(done, names, task_errors(missing)))

    @task(trigger_rule="one_failed", retries=0, on_failure_callback=None)  # the failed task alerted
    def watcher() -> None:
        """A leaf that fails the run when a source failed (`summarize` records it and succeeds)."""
        raise RuntimeError("a source failed: see ops.ingest_runs and its task log")

    summarize(results)
    results >> watcher()


ingest_sources()
