"""
### Lake maintenance

Keeps every Delta table in the lake fast to read and bounded in size:

1. **list_tables**: every `bronze.*`, `silver.*`, `gold.*`, `quarantine.*` and `ops.*` table.
2. **maintain** (one mapped task per group of up to 25 tables, one group at a time: a task process
   costs about a second to start, and a night has over 130 tables): compact small files (OPTIMIZE),
   then VACUUM files that no version inside the retention window needs, including stray files of
   writes that crashed. A table that fails does not stop its group; the task fails at the end naming it.
3. **record_health**: one row per table in `ops.table_health` for the run's logical date (version,
   files, bytes, rows, what was compacted and vacuumed). Rerunning a date replaces that date's rows.

Retention comes from `lake.vacuum_retention_hours` in `conf/`. Erasure (#10) relies on vacuum to
remove old versions that still hold a forgotten person's rows.
"""

from __future__ import annotations

from airflow.sdk import dag, task

from p13n.orchestration import cron_schedule, dag_defaults

GROUP = 25  # tables per maintain task


@dag(
    dag_id="lake_maintenance",
    schedule=cron_schedule("0 4 * * *"),
    catchup=False,
    max_active_runs=1,
    default_args=dag_defaults(),
    tags=["p13n", "maintenance", "lake"],
    doc_md=__doc__,
)
def lake_maintenance():
    @task
    def list_tables() -> list[list[str]]:
        from p13n.orchestration import progress
        from p13n.session import lake

        tables = lake().tables()
        groups = [tables[i : i + GROUP] for i in range(0, len(tables), GROUP)]
        progress(f"lake maintenance: {len(tables)} tables in {len(groups)} groups")
        return groups

    @task(max_active_tis_per_dag=1)
    def maintain(tables: list[str]) -> list[dict]:
        from p13n.maintenance import maintain_tables
        from p13n.orchestration import progress
        from p13n.session import lake

        return maintain_tables(lake(), tables, progress=progress)

    # Runs on an empty lake too (no mapped maintain tasks), so every run leaves its health record.
    @task(trigger_rule="none_failed")
    def record_health(results: list[dict]) -> int:
        import datetime as dt

        from p13n.lake.tables import OPS_TABLE_HEALTH
        from p13n.maintenance import record_table_health
        from p13n.orchestration import progress, run_date
        from p13n.session import lake

        day = run_date()
        rows = record_table_health(
            lake(), [r for group in results for r in group], dt.date.fromisoformat(day)
        )
        progress(f"{OPS_TABLE_HEALTH}: {rows} rows for {day}")
        return rows

    record_health(maintain.expand(tables=list_tables()))


lake_maintenance()
