"""
### Run report

The nightly's last step: once the date's recommendations are published (`p13n://serving/live`) and
its audiences exported (`p13n://activation/exports`), writes the run report, one HTML page with
plots: data volumes and quarantine per source, expectation results, identity statistics (merges,
splits, cluster sizes), segment sizes and movements, model metrics against the previous run,
recommendation coverage, publish and export counts, and the day's alerts.

It is written to `<data_dir>/reports/<date>/index.html`; the Airflow UI links to it (the
**p13n run reports** entry of the navigation, served by the p13n plugin at `/p13n/reports/`):
[the latest report](/p13n/reports/latest) · [every report](/p13n/reports/).
`p13n report --date D` writes it by hand.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, dag, task

from p13n.alerts import deadline
from p13n.orchestration import after_assets, dag_defaults


@dag(
    dag_id="run_report",
    schedule=after_assets(
        Asset("p13n://serving/live", group="serving"), Asset("p13n://activation/exports", group="activation")
    ),
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=dag_defaults(),
    deadline=deadline("run_report"),
    tags=["p13n", "report"],
    doc_md=__doc__,
)
def run_report():
    @task
    def report() -> str:
        from p13n.orchestration import run_date
        from p13n.report.render import report_task

        return report_task(run_date())

    report()


run_report()
