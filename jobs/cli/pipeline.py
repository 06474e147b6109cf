"""Running the pipeline: `run`, `backfill`, `trigger`, `report`, `airflow`, `scheduler`, `spark-connect`."""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from p13n.cli.common import CommandError, iso_date
from p13n.lake.tables import GOLD_RECOMMENDATIONS, OPS_INGEST_RUNS


def _cmd_run(args: argparse.Namespace) -> int:
    from p13n.runner import run_pipeline

    return run_pipeline(
        customers=args.customers,
        days=args.days,
        seed=args.seed,
        history_days=args.history_days,
        in_process=args.in_process,
        dates=args.date,
        dags=tuple(args.dag) if args.dag else None,
    )


def _cmd_backfill(args: argparse.Namespace) -> int:
    from p13n.runner import NIGHTLY, backfill

    return backfill(args.start, args.end, tuple(args.dag or NIGHTLY[:4]))


def _cmd_report(args: argparse.Namespace) -> int:

    from p13n.report.render import build

    day = args.date or _latest_scored_date()
    if day is None:
        raise CommandError("nothing scored yet; give --date", 2) from None
    path = build(None, dt.date.fromisoformat(day), progress=print)
    if args.open:
        import webbrowser

        webbrowser.open(path.as_uri())
    return 0


def _latest_scored_date() -> str | None:
    from p13n.config import get_settings
    from p13n.lake.duck import duckdb_connection, scan, table_exists

    root = get_settings().lake_root
    for table, col in ((GOLD_RECOMMENDATIONS, "as_of_date"), (OPS_INGEST_RUNS, "batch_date")):
        if table_exists(root, table):
            value = duckdb_connection().execute(f"SELECT max({col}) FROM {scan(root, table)}").fetchone()[0]
            if value:
                return value.isoformat()
    return None


def _cmd_trigger(args: argparse.Namespace) -> int:

    from p13n.scheduler import CHAIN, AirflowError, client, trigger_date, watch_chain

    since = dt.datetime.now(dt.UTC)
    try:
        api = client()
        run = trigger_date(api, args.dag, args.date, unpause=not args.no_unpause)
        print(f"triggered {args.dag} for {args.date}: run {run['dag_run_id']} ({run['state']})")
        if not args.wait:
            return 0
        dags = CHAIN[CHAIN.index(args.dag) :] if args.dag in CHAIN else (args.dag,)
        runs = watch_chain(api, args.date, since - dt.timedelta(seconds=5), dags=dags)
    except AirflowError as exc:
        raise CommandError(f"{exc}", 2) from None
    return 0 if len(runs) == len(dags) and all(r.state == "success" for r in runs) else 1


def _cmd_airflow(args: argparse.Namespace) -> int:
    import os
    import subprocess

    from p13n.orchestration import airflow_bin, airflow_env, dags_test_env
    from p13n.scheduler import is_duplicate_run_error

    env = airflow_env()
    if args.airflow_args[:2] == ["dags", "test"]:
        env = dags_test_env(env)
    airflow = airflow_bin()
    if args.airflow_args[:2] != ["dags", "trigger"]:
        os.execve(airflow, [airflow, *args.airflow_args], env)
    # `dags trigger --logical-date D` for a date that already has a run fails with a raw database
    # error: say what happened and how to run that date again.
    done = subprocess.run([airflow, *args.airflow_args], env=env, stderr=subprocess.PIPE, text=True)
    if done.returncode and is_duplicate_run_error(done.stderr):
        dag_id = next((a for a in args.airflow_args[2:] if not a.startswith("-")), "DAG")
        print(
            f"p13n airflow: {dag_id} already has a run for that logical date; to run the date again: "
            f"p13n trigger {dag_id} --date YYYY-MM-DD (a new run of that date, with `make airflow` running)",
            file=sys.stderr,
        )
        return 2
    sys.stderr.write(done.stderr)
    return done.returncode


def _cmd_scheduler(_args: argparse.Namespace) -> int:
    from p13n.scheduler import serve_forever

    return serve_forever()


def _cmd_spark_connect(args: argparse.Namespace) -> int:
    from p13n.config import get_settings
    from p13n.services.spark_connect import SparkConnectServer

    return SparkConnectServer(get_settings(), port=args.port, host=args.host).serve()


def register(sub) -> None:
    """Add this group's commands to the `p13n` parser."""
    p = sub.add_parser(
        "run",
        help="run the pipeline through Airflow on the configured services and print a summary",
        description="Generates a dataset when the landing zone is empty, then runs the nightly through "
        "Airflow's "
        "scheduler for each day of it (--in-process: through `airflow dags test` in one process, for "
        "debugging).",
    )
    p.add_argument(
        "--customers", type=int, default=20_000, help="customers to generate when there is no data"
    )
    p.add_argument("--days", type=int, default=2, help="days to generate when there is no data")
    p.add_argument(
        "--history-days", type=int, default=365, help="days of purchase history before the first day"
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--date",
        action="append",
        type=iso_date,
        metavar="YYYY-MM-DD",
        help="run these dates (repeat) instead of the generated ones; the lake must exist",
    )
    p.add_argument("--dag", action="append", help="only these DAGs of the nightly (repeat; default: all)")
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--scheduler",
        action="store_true",
        help="the default, as production runs it: Airflow's scheduler (LocalExecutor), DAG processor, "
        "triggerer "
        "and API server, tasks as Spark Connect clients, each date triggered and followed down the assets",
    )
    how.add_argument(
        "--in-process",
        action="store_true",
        help="a debugging aid: every DAG through `airflow dags test` in one process, no scheduler",
    )
    p.set_defaults(handler=_cmd_run)

    p = sub.add_parser(
        "backfill",
        help="run the nightly's DAGs for every date of a range through Airflow (no scheduler needed)",
        description="Runs each date's DAG runs in order with `airflow dags test`, starting the embedded "
        "services when none are configured; stops at the first failure and prints how to resume. Against "
        "a running Airflow deployment use `p13n airflow backfill create --dag-id D --from-date A "
        "--to-date B` instead (the scheduler runs it).",
    )
    p.add_argument("--from", dest="start", required=True, metavar="YYYY-MM-DD", help="first date")
    p.add_argument("--to", dest="end", required=True, metavar="YYYY-MM-DD", help="last date (inclusive)")
    p.add_argument(
        "--dag",
        action="append",
        help="a DAG to run for each date (repeat; default: ingest_sources, resolve_identities, "
        "score_customers, recommend_products)",
    )
    p.set_defaults(handler=_cmd_backfill)

    p = sub.add_parser(
        "trigger",
        help="start a DAG for a date through the running Airflow (make airflow): a new run every time",
        description="Creates a DAG run whose partition key is the date; the asset chain carries the date "
        "to every downstream DAG (identity, scoring, recommendations, publish, exports, run report). A date "
        "that ran before simply runs again. Unpauses the nightly's DAGs unless --no-unpause.",
    )
    p.add_argument("dag", help="DAG id, e.g. ingest_sources")
    p.add_argument("--date", type=iso_date, required=True, metavar="YYYY-MM-DD", help="the date to process")
    p.add_argument("--wait", action="store_true", help="follow the runs down the chain until each one ends")
    p.add_argument("--no-unpause", action="store_true", help="leave paused DAGs paused")
    p.set_defaults(handler=_cmd_trigger)

    p = sub.add_parser(
        "scheduler",
        help="run Airflow as production does (API server, scheduler, DAG processor, triggerer) until Ctrl-C",
        description="What `make airflow` runs: the UI and REST API on http://127.0.0.1:8080 (user admin, the "
        "password Airflow generates into <data>/airflow/simple_auth_manager_passwords.json.generated; "
        "loopback "
        "only), a LocalExecutor running each task in its own process, and the services the tasks use locally "
        "(a Spark Connect server, the embedded Redis and Kafka broker). Ctrl-C or SIGTERM stops "
        "every process it started.",
    )
    p.set_defaults(handler=_cmd_scheduler)

    p = sub.add_parser(
        "spark-connect",
        help="run a Spark Connect server in front of spark.master until Ctrl-C (the jobs' Spark service)",
        description=(
            "Jobs whose spark.remote is sc://HOST:PORT are its clients: no driver JVM per Airflow task."
        ),
    )
    p.add_argument("--port", type=int, default=15002)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)")
    p.set_defaults(handler=_cmd_spark_connect)

    p = sub.add_parser("report", help="write the HTML run report of a date (what the run_report DAG does)")
    p.add_argument("--date", type=iso_date, help="the run date (default: the latest scored date)")
    p.add_argument("--open", action="store_true", help="open it in a browser")
    p.set_defaults(handler=_cmd_report)

    p = sub.add_parser(
        "airflow",
        help="run an airflow command in the project's Airflow environment",
        description="Example: p13n airflow standalone; p13n airflow dags test lake_maintenance 2024-03-01",
    )
    p.add_argument("airflow_args", nargs=argparse.REMAINDER, help="arguments passed to airflow")
    p.set_defaults(handler=_cmd_airflow)
