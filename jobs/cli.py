"""`p13n`: the command line. `p13n --help` lists the commands; each has its own --help."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable
from pathlib import Path

from p13n import __version__
from p13n.lake.tables import GOLD_RECOMMENDATIONS, OPS_INGEST_RUNS

Handler = Callable[[argparse.Namespace], int]


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
    import datetime as dt

    from p13n.report.render import build

    day = args.date or _latest_scored_date()
    if day is None:
        print("p13n report: nothing scored yet; give --date", file=sys.stderr)
        return 2
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


def _cmd_serving(args: argparse.Namespace) -> int:
    from p13n.serving.tasks import serving_command

    return serving_command(
        args.action,
        date=getattr(args, "date", None),
        force=getattr(args, "force", False),
        to=getattr(args, "to", None),
        as_json=getattr(args, "json", False),
    )


def _cmd_stream(args: argparse.Namespace) -> int:
    from p13n.streaming.tasks import consume, produce

    if args.action == "produce":
        produce(args.rate, args.seconds, args.customers, args.seed)
        return 0
    if args.action == "reset-offsets":
        from p13n.config import get_settings
        from p13n.sources.ingest import kafka_bootstrap
        from p13n.streaming.consumer import reset_offsets
        from p13n.streaming.tasks import kafka_sources

        settings = get_settings()
        sources = [s for s in kafka_sources() if s.location == args.topic]
        if not sources:
            print(f"no catalog source reads topic {args.topic!r}", file=sys.stderr)
            return 2
        moves = reset_offsets(settings.lake_root, sources[0], kafka_bootstrap(settings), args.to)
        for p, (old, new) in moves.items():
            print(f"{args.topic}/{p}: {old:,} -> {new:,}")
        if not moves:
            print(f"{args.topic}: every stored offset is within the broker's log; nothing to reset")
        return 0

    consume(
        catch_up=args.catch_up,
        batch_date=args.batch_date,
        max_records=args.max_records,
        max_seconds=args.max_seconds,
    )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from p13n.activation.audiences import AudienceError
    from p13n.activation.sync import SyncError
    from p13n.activation.tasks import export

    if args.out and (not args.to.startswith("csv") or Path(args.out).suffix.lower() != ".csv"):
        print(
            f"p13n export: --out {args.out}: only a CSV export (--to csv*) writes a file, and it must end in .csv",
            file=sys.stderr,
        )
        return 2
    try:
        export(args.audience, args.to, args.date or dt.date.today().isoformat(), args.out)
    except (AudienceError, SyncError) as e:
        print(f"p13n export: {e}", file=sys.stderr)
        return 1
    return 0


def _cmd_warehouse(args: argparse.Namespace) -> int:
    from p13n.activation.tasks import warehouse_sync

    warehouse_sync(args.date)
    return 0


def _cmd_privacy(args: argparse.Namespace) -> int:
    from p13n.privacy.erasure import ErasureError
    from p13n.privacy.tasks import process_requests, request, run_now

    try:
        if args.action == "request":
            print(request(args.kind, args.customer, args.email))
        elif args.action == "process":
            process_requests(dry_run=args.dry_run)
        else:
            run_now(
                "forget" if args.action == "forget" else "access",
                args.customer,
                args.email,
                dry_run=getattr(args, "dry_run", False),
            )
    except (ErasureError, ValueError) as e:
        print(f"p13n privacy: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # a queued request failed: recorded on it, the others were served
        print(f"p13n privacy: {e}", file=sys.stderr)
        return 1
    return 0


def _cmd_sql(args: argparse.Namespace) -> int:
    from p13n.analytics.sql import SqlError, files, run_duckdb, run_spark, source
    from p13n.config import get_settings

    if args.file is None:
        print("\n".join(f"{name:30s} sql/{name}.sql" for name in files()))
        return 0
    settings = get_settings()
    try:
        name, text = source(args.file)
        if args.engine == "spark":
            from p13n.lake import Lake
            from p13n.spark import get_spark

            frame = run_spark(Lake.from_settings(get_spark(settings), settings), text).toPandas()
        else:
            frame = run_duckdb(settings, text)
    except (SqlError, ValueError) as e:  # ValueError: a table name that is not layer.name
        print(f"p13n sql: {e}", file=sys.stderr)
        return 2
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(out, index=False) if out.suffix == ".parquet" else frame.to_csv(out, index=False)
        print(f"{name}: {len(frame):,} rows written to {out}")
    else:
        import pandas as pd

        with pd.option_context("display.max_columns", 50, "display.width", 200):
            print(frame.head(args.limit).to_string(index=False))
        if len(frame) > args.limit:
            print(f"... {len(frame):,} rows in all (--limit, or --out FILE.csv|.parquet for all)")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from p13n.serving.tasks import serve

    return serve(host=args.host, port=args.port, workers=args.workers)


def _cmd_sources(args: argparse.Namespace) -> int:
    from p13n.sources.catalog import catalog

    for s in catalog():
        print(
            f"{s.name}\t{s.format}\t{s.system}\t{s.kind}\t{s.location}\towner={s.owner}\t"
            f"freshness={s.freshness_hours}h\tpii={','.join(s.pii_columns) or '-'}"
        )
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    import datetime as dt

    from p13n.config import get_settings
    from p13n.generate.retail import generate
    from p13n.sources.catalog import catalog
    from p13n.sources.simulate import load_warehouse

    settings = get_settings()
    out = settings.landing_dir.parent if args.out is None else Path(args.out)
    stats = generate(
        catalog(),
        out,
        args.customers,
        args.days,
        args.seed,
        dt.date.fromisoformat(args.start),
        bad_rate=args.bad_rate,
        progress=lambda m: print(m, flush=True),
        history_days=args.history_days,
    )
    if args.out is None:
        stats["warehouse_rows"] = load_warehouse(settings, catalog())
    print(json.dumps(stats))
    return 0


def _cmd_expectations(args: argparse.Namespace) -> int:
    from p13n.sources.catalog import catalog
    from p13n.sources.expectations import generate_suites

    for path in generate_suites(catalog()):
        print(path)
    return 0


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


def _cmd_trigger(args: argparse.Namespace) -> int:
    import datetime as dt

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
        print(f"p13n trigger: {exc}", file=sys.stderr)
        return 2
    return 0 if len(runs) == len(dags) and all(r.state == "success" for r in runs) else 1


def _cmd_spark_connect(args: argparse.Namespace) -> int:
    from p13n.config import get_settings
    from p13n.services.spark_connect import SparkConnectServer

    return SparkConnectServer(get_settings(), port=args.port, host=args.host).serve()


def _cmd_scheduler(_args: argparse.Namespace) -> int:
    from p13n.scheduler import serve_forever

    return serve_forever()


def _cmd_bench(args: argparse.Namespace) -> int:
    from p13n.bench import BENCHMARKS, run_benchmark

    if args.name == "scale":  # opt-in, never part of `all`: hours at 1M customers
        from p13n.bench.scale import bench_scale

        sizes = [int(x.replace("_", "")) for x in args.sizes.split(",")]
        results = bench_scale(sizes, days=args.days)
        return 0 if all(r["succeeded"] for r in results) else 1
    from p13n.bench import OPT_IN

    names = [n for n in BENCHMARKS if n not in OPT_IN] if args.name == "all" else [args.name]
    for name in names:
        run_benchmark(name, rows=args.rows, reps=args.reps)
    return 0


def _cmd_identity(args: argparse.Namespace) -> int:
    from rich.console import Console

    from p13n.config import get_settings
    from p13n.orchestration import progress

    console = Console(soft_wrap=True)
    settings = get_settings()
    if args.action == "resolve":
        from p13n.identity.evaluation import evaluate_clusters, format_metrics
        from p13n.identity.files import resolve_file
        from p13n.inputs import InputError
        from p13n.session import spark

        try:
            from p13n.inputs import check_file

            for path in args.input:
                check_file(Path(path))  # before Spark starts
            out = resolve_file(
                spark(),
                [Path(p) for p in args.input],
                Path(args.output),
                settings,
                threshold=args.threshold,
                link_only=args.link_only,
                progress=progress,
            )
        except InputError as exc:
            print(f"p13n identity resolve: {exc}", file=sys.stderr)
            return 2
        console.print(
            f"{out['records']:,} records → {out['customers']:,} customers in {out['seconds']} s "
            f"(compared on {', '.join(out['compared'])}); wrote {out['output']}"
        )
        if args.truth:
            import pandas as pd

            predicted = pd.read_csv(args.output, dtype=str).rename(columns={"record_id": "record_key"})
            truth = pd.read_csv(args.truth, dtype=str).rename(columns={"record_id": "record_key"})
            console.print(format_metrics(evaluate_clusters(predicted, truth[["record_key", "person_id"]])))
        return 0
    import datetime as dt

    from p13n.identity.pipeline import resolve_identities
    from p13n.identity.tasks import load_truth
    from p13n.secrets import pii_key
    from p13n.session import lake

    out = resolve_identities(
        lake(), settings, dt.date.fromisoformat(args.date), pii_key(settings), truth=load_truth(settings),
        progress=progress,
    )  # fmt: skip
    console.print(out.summary())
    return 0


def _cmd_clv(args: argparse.Namespace) -> int:
    import datetime as dt

    from p13n.customers.files import fit_file
    from p13n.inputs import InputError, report_skipped

    try:
        end = dt.date.fromisoformat(args.calibration_end) if args.calibration_end else None
    except ValueError:
        print(
            f"p13n clv fit: --calibration-end must be YYYY-MM-DD, got {args.calibration_end!r}",
            file=sys.stderr,
        )
        return 2
    try:
        out = fit_file(
            Path(args.transactions),
            args.customer_column,
            args.date_column,
            args.amount_column,
            end,
            args.time_unit,
        )
    except InputError as exc:
        print(f"p13n clv fit: {exc}", file=sys.stderr)
        return 2
    report_skipped("p13n clv fit", out["skipped_rows"])
    print(json.dumps(out, indent=2))
    return 0


def _cmd_recommend(args: argparse.Namespace) -> int:
    if args.action == "run":
        return _cmd_recommend_run(args)
    from p13n.inputs import InputError, report_skipped
    from p13n.recommend.files import evaluate_file

    try:
        out, facts = evaluate_file(
            Path(args.interactions),
            args.user_column,
            args.item_column,
            args.time_column,
            args.weight_column,
            args.k,
            reference=args.reference,
        )
    except InputError as exc:
        print(f"p13n recommend evaluate: {exc}", file=sys.stderr)
        return 2
    report_skipped("p13n recommend evaluate", facts.pop("skipped_rows"))
    print(f"p13n recommend evaluate: {json.dumps(facts)}", file=sys.stderr)
    print(json.dumps(out, indent=2))
    return 0


def _cmd_recommend_run(args: argparse.Namespace) -> int:
    """What the recommend_products DAG does, in one process."""
    from p13n.recommend import tasks

    steps = args.steps.split(",")
    for step in ("interactions", "train", "lists", "validate"):
        if step in steps:
            getattr(tasks, f"{step}_task")(args.date)
    return 0


def _cmd_customers(args: argparse.Namespace) -> int:
    """What the score_customers DAG does, in one process: features, churn, CLV, segments, checks."""
    from p13n.customers.tasks import features_task, model_task, validate_task

    steps = args.steps.split(",")
    if "features" in steps:
        features_task(args.date)
    for model in ("churn", "clv", "segments"):
        if model in steps:
            model_task(model, args.date)
    if "validate" in steps:
        validate_task(args.date)
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from p13n.config import get_settings, masked

    settings = get_settings()
    data = settings.model_dump(mode="json")
    data["lake"]["storage_options"] = {k: "***" for k in data["lake"]["storage_options"]}
    data = masked(data)
    data["resolved"] = {
        "lake_root": settings.lake_root,
        "airflow_home": str(settings.airflow_home),
        "mlflow_uri": settings.mlflow_uri,
    }
    print(json.dumps(masked(data), indent=2))
    return 0


def _cmd_lake(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from p13n.config import get_settings
    from p13n.lake import duck
    from p13n.session import lake

    console = Console()
    settings = get_settings()
    if args.action == "tables" and args.catalog:
        from p13n.lake.tables import CATALOG, source_tables

        table = Table("table", "partitioned by", "key", "owner", "what it holds", title="The table catalog")
        for t in [*CATALOG.values(), *source_tables()]:
            table.add_row(t, t.partition_by or "", ", ".join(t.key), t.owner, t.about)
        console.print(table)
    elif args.action == "tables":
        table = Table("table", "version", "files", "rows", "MB", "partitioned by", "last written")
        for name in duck.list_tables(settings):
            i = duck.describe(settings, name)
            table.add_row(
                name,
                str(i["version"]),
                str(i["files"]),
                f"{i['rows']:,}",
                f"{i['bytes'] / 1e6:.1f}",
                ", ".join(i["partition_by"]),
                f"{i['last_time']} {i['last_operation']} by {i['last_dag'] or '?'}",
            )
        console.print(table)
    elif args.action == "history":
        table = Table("version", "time", "operation", "rows", "run date", "dag", "run", "code")
        for c in duck.history(settings, args.table, limit=args.limit):
            table.add_row(
                *(
                    str(c[k])
                    for k in ("version", "time", "operation", "rows", "run_date", "dag", "run", "code")
                )
            )
        console.print(table)
    elif args.action == "show":
        frame = duck.head(settings, args.table, args.limit, args.where)
        table = Table(*frame.columns, title=f"{args.table}: {len(frame)} rows")
        for row in frame.itertuples(index=False):
            table.add_row(*("" if v is None else str(v) for v in row))
        console.print(table)
    elif args.action == "optimize":
        lk = lake()
        console.print(lk.optimize(args.table))
    elif args.action == "vacuum":
        lk = lake()
        removed = lk.vacuum(args.table, retention_hours=args.retention_hours, dry_run=args.dry_run)
        console.print(f"{'would remove' if args.dry_run else 'removed'} {len(removed)} files")
    return 0


def iso_date(text: str) -> str:
    """An argparse type: a real calendar date as YYYY-MM-DD (kept as the string)."""
    try:
        return dt.date.fromisoformat(text.strip()).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text[:40]!r}") from None


def positive_int(text: str) -> int:
    """An argparse type: 1..1000."""
    if not (text.isascii() and text.isdigit() and len(text) <= 4 and 1 <= int(text) <= 1000):
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to 1000, got {text[:40]!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p13n",
        description="p13n: retail personalization data platform (Spark, Delta Lake, Airflow).",
        epilog="Configuration: conf/base.yaml + conf/$P13N_ENV.yaml + P13N__SECTION__KEY variables.",
    )
    parser.add_argument("--version", action="version", version=f"p13n {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "run",
        help="run the pipeline through Airflow on the configured services and print a summary",
        description="Generates a dataset when the landing zone is empty, then runs the nightly through Airflow's "
        "scheduler for each day of it (--in-process: through `airflow dags test` in one process, for debugging).",
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
        help="the default, as production runs it: Airflow's scheduler (LocalExecutor), DAG processor, triggerer "
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
        "a running Airflow deployment use `p13n airflow backfill create --dag-id D --from-date A --to-date B` "
        "instead (the scheduler runs it).",
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
        "password Airflow generates into <data>/airflow/simple_auth_manager_passwords.json.generated; loopback "
        "only), a LocalExecutor running each task in its own process, and the services the tasks use locally "
        "(a Spark Connect server, the embedded Redis and Kafka broker). Ctrl-C or SIGTERM stops every process "
        "it started.",
    )
    p.set_defaults(handler=_cmd_scheduler)

    p = sub.add_parser(
        "spark-connect",
        help="run a Spark Connect server in front of spark.master until Ctrl-C (the jobs' Spark service)",
        description="Jobs whose spark.remote is sc://HOST:PORT are its clients: no driver JVM per Airflow task.",
    )
    p.add_argument("--port", type=int, default=15002)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)")
    p.set_defaults(handler=_cmd_spark_connect)

    p = sub.add_parser("report", help="write the HTML run report of a date (what the run_report DAG does)")
    p.add_argument("--date", type=iso_date, help="the run date (default: the latest scored date)")
    p.add_argument("--open", action="store_true", help="open it in a browser")
    p.set_defaults(handler=_cmd_report)

    p = sub.add_parser("sources", help="the source catalog (conf/sources.yaml)")
    p.add_argument("action", choices=["list"], help="list: one source per line, name then format")
    p.set_defaults(handler=_cmd_sources)

    p = sub.add_parser(
        "generate", help="write a synthetic retailer's sources to the landing zone, with ground truth"
    )
    p.add_argument("--customers", type=int, default=2000)
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--start", type=iso_date, default="2024-03-01", help="first day (YYYY-MM-DD)")
    p.add_argument(
        "--history-days",
        type=int,
        default=365,
        help="days of purchase history before the first day, delivered in its batch (0: none)",
    )
    p.add_argument("--bad-rate", type=float, default=0.005, help="share of planted bad records per batch")
    p.add_argument("--out", default=None, help="folder for landing/ and truth/ (default: the data directory)")
    p.set_defaults(handler=_cmd_generate)

    p = sub.add_parser("expectations", help="Great Expectations suites of the silver tables")
    p.add_argument("action", choices=["generate"], help="generate: (re)write expectations/ from the catalog")
    p.set_defaults(handler=_cmd_expectations)

    p = sub.add_parser(
        "airflow",
        help="run an airflow command in the project's Airflow environment",
        description="Example: p13n airflow standalone; p13n airflow dags test lake_maintenance 2024-03-01",
    )
    p.add_argument("airflow_args", nargs=argparse.REMAINDER, help="arguments passed to airflow")
    p.set_defaults(handler=_cmd_airflow)

    p = sub.add_parser("bench", help="run a benchmark (or all) and print key=value figures")
    p.add_argument(
        "name",
        help="benchmark name, or 'all': lake, ingest, identity, customers, als, serving, streaming, activation; "
        "or 'orchestration' (the nightly through the scheduler against in-process, --rows customers; not in "
        "'all'); or 'scale' (the whole nightly at --sizes customers, recorded in docs/scale.md; not in 'all')",
    )
    p.add_argument("--sizes", default="100000,1000000", help="scale: customer counts, comma-separated")
    p.add_argument(
        "--days", type=int, default=2, help="scale: days of data (the nightly measured is the last)"
    )
    p.add_argument(
        "--rows",
        type=int,
        default=None,
        help="size: rows for lake (default 5M), customers for ingest and identity (default 100k)",
    )
    p.add_argument("--reps", type=int, default=3, help="repetitions; the median is reported")
    p.set_defaults(handler=_cmd_bench)

    p = sub.add_parser("identity", help="identity resolution: match person records into customers")
    id_sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = id_sub.add_parser(
        "resolve",
        help="cluster the records of a CSV file (record_id + any of first_name, last_name, email, phone, "
        "street, city, postal_code, state, birth_date) into customers",
        description="Learns the match model from the file itself and writes record_id,customer_id.",
    )
    a.add_argument(
        "--input",
        required=True,
        action="append",
        help="CSV with a record_id column; twice or more to link files (the output names each record's file)",
    )
    a.add_argument(
        "--link-only",
        action="store_true",
        help="each file is already deduplicated: two records of one file never become one customer",
    )
    a.add_argument("--output", required=True, help="where to write record_id,customer_id")
    a.add_argument(
        "--threshold", type=float, default=None, help="match probability (default: identity config)"
    )
    a.add_argument("--truth", help="optional CSV record_id,person_id: print precision, recall and F1")
    a = id_sub.add_parser("run", help="resolve the lake's identity sources for a date (what the DAG does)")
    a.add_argument("--date", type=iso_date, required=True, help="run date, YYYY-MM-DD")
    p.set_defaults(handler=_cmd_identity)

    p = sub.add_parser("clv", help="customer lifetime value models (BG/NBD + Gamma-Gamma)")
    clv_sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = clv_sub.add_parser(
        "fit",
        help="fit BG/NBD and Gamma-Gamma on a transactions CSV and print the parameters as JSON",
        description="Same-day transactions of a customer count as one; each customer's clock starts at their "
        "first purchase; Gamma-Gamma uses the mean value of repeat purchases. With --calibration-end "
        "before the last date, the period after it is a holdout and its prediction errors are printed too.",
    )
    a.add_argument("--transactions", required=True, help="CSV file with a header row")
    a.add_argument("--customer-column", required=True)
    a.add_argument("--date-column", required=True, help="dates in ISO 8601 (2024-03-01 or 20240301)")
    a.add_argument("--amount-column", required=True)
    a.add_argument(
        "--calibration-end",
        type=iso_date,
        default=None,
        help="last day of the calibration period (YYYY-MM-DD)",
    )
    a.add_argument("--time-unit", default="D", choices=["D", "W", "M"], help="days, weeks or months")
    p.set_defaults(handler=_cmd_clv)

    p = sub.add_parser("recommend", help="recommendation models")
    rec_sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = rec_sub.add_parser(
        "evaluate",
        help="train every recommender on an interactions CSV and print each one's ranking metrics as JSON",
        description="Each user's interactions at their latest timestamp (their last basket) form the test set; the "
        "models (popularity, ALS, item similarity, buy-it-again, next-basket and the personalized list) learn from "
        "the rest and recommend to each test user. Which items repeat is learned from the file.",
    )
    a.add_argument("--interactions", required=True, help="CSV file with a header row")
    a.add_argument("--user-column", required=True)
    a.add_argument("--item-column", required=True)
    a.add_argument("--time-column", required=True)
    a.add_argument("--weight-column", default=None, help="positive weights (default: every interaction 1)")
    a.add_argument("--k", type=positive_int, default=10, help="list length (1-1000)")
    a.add_argument(
        "--reference",
        action="store_true",
        help="also run independent references on the same split: personal top-frequency, the popularity of all "
        "items and Cornac's TIFU-KNN",
    )
    a = rec_sub.add_parser(
        "run",
        help="recommendations on the lake for a date (what the recommend_products DAG does)",
        description="Builds gold.interactions, tunes, evaluates and gates the recipe in MLflow, writes every list "
        "(gold.recommendations, item_similarity, bought_together, trending, popular_items) and validates them.",
    )
    a.add_argument(
        "--date", type=iso_date, required=True, help="as-of date (YYYY-MM-DD); gold.segments must have it"
    )
    a.add_argument(
        "--steps", default="interactions,train,lists,validate", help="comma-separated subset of the steps"
    )
    p.set_defaults(handler=_cmd_recommend)

    p = sub.add_parser(
        "customers", help="customer intelligence on the lake for a date (what the score_customers DAG does)"
    )
    p.add_argument("action", choices=["run"])
    p.add_argument("--date", type=iso_date, required=True, help="as-of date (YYYY-MM-DD)")
    p.add_argument(
        "--steps", default="features,churn,clv,segments,validate", help="comma-separated subset of the steps"
    )
    p.set_defaults(handler=_cmd_customers)

    p = sub.add_parser("serving", help="publish to the serving store (Redis), roll back, show versions")
    srv_sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = srv_sub.add_parser(
        "publish",
        help="publish a date's gold tables as a new version and make it live (what the publish DAG does)",
        description="Refused when a table lacks the date, failed its expectations, or a gated model has no "
        "champion, unless --force. The previous versions stay for rollback (serving.keep_versions).",
    )
    a.add_argument("--date", type=iso_date, required=True, help="as-of date (YYYY-MM-DD)")
    a.add_argument("--force", action="store_true", help="publish despite failed checks (they are logged)")
    a = srv_sub.add_parser("rollback", help="make the previous (or a given) retained version live again")
    a.add_argument(
        "--to", default=None, help="the version to make live (default: the one before the live one)"
    )
    a = srv_sub.add_parser("status", help="the live version and every version kept, with their counts")
    a.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_serving)

    p = sub.add_parser("stream", help="Kafka events into bronze, exactly once (see p13n.streaming)")
    st_sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = st_sub.add_parser(
        "consume",
        help="consume the Kafka sources into their bronze tables until stopped (SIGTERM or Ctrl-C)",
        description="Offsets are stored in the same Delta commit as the events; bad events are landed with "
        "their error and sent to <topic>.dlq.",
    )
    a.add_argument(
        "--catch-up", action="store_true", help="drain to the end offsets present at start, then stop"
    )
    a.add_argument("--batch-date", default=None, help="the _batch_date to land under (default: today, UTC)")
    a.add_argument("--max-records", type=int, default=50_000, help="events per micro-batch at most")
    a.add_argument("--max-seconds", type=float, default=5.0, help="seconds a micro-batch collects at most")
    a = st_sub.add_parser("produce", help="produce web events onto Kafka at a steady rate (demo and load)")
    a.add_argument("--rate", type=float, default=100.0, help="events per second")
    a.add_argument("--seconds", type=float, default=60.0)
    a.add_argument(
        "--customers", type=int, default=2000, help="shopify ids SH00000001.. of the generated data"
    )
    a.add_argument("--seed", type=int, default=None, help="the same events every time (ids, partitions)")
    a = st_sub.add_parser(
        "reset-offsets",
        help="after a topic was recreated: move the offsets a bronze table stores past the broker's end",
    )
    a.add_argument("--topic", required=True)
    a.add_argument("--to", choices=["beginning", "end"], required=True,
                   help="beginning: land what the broker holds now; end: skip it")  # fmt: skip
    p.set_defaults(handler=_cmd_stream)

    p = sub.add_parser(
        "export",
        help="export an audience to Klaviyo, Mailchimp or a CSV file",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""Export one audience declared in activation.audiences (conf/base.yaml).

Destinations:
  klaviyo        the Klaviyo API (key from $KLAVIYO_API_KEY): bulk profile import jobs (10,000
                 profiles / 5 MB each) into the audience's list, email marketing consent set
                 through subscription jobs for new members, removals unsubscribed when consent
                 was revoked.
  mailchimp      the Mailchimp API (key from $MAILCHIMP_API_KEY): batch member upserts (500 each)
                 with merge fields, the audience as a static segment of the list; unsubscribed or
                 cleaned members are never resubscribed.
  csv            a file in the platform's import format (the audience's destination decides which;
  csv-klaviyo    or name it), written to data/exports/<audience>/<date>-<format>.csv (owner-only:
  csv-mailchimp  it holds contact data).

Syncs are incremental: only adds, updates and removes since the last confirmed state
(ops.export_state) are sent, so a rerun after a crash resumes. Only customers who consented to the
audience's channel are exported; erased customers never. Each run is logged in ops.export_runs.""",
    )
    p.add_argument("--audience", required=True, help="a name under activation.audiences")
    p.add_argument(
        "--to", required=True, choices=["klaviyo", "mailchimp", "csv", "csv-klaviyo", "csv-mailchimp"]
    )
    p.add_argument(
        "--date", type=iso_date, default=None, help="as-of date of the gold tables (default: today)"
    )
    p.add_argument("--out", default=None, help="CSV only: the file to write")
    p.set_defaults(handler=_cmd_export)

    p = sub.add_parser("warehouse", help="sync gold tables to Snowflake (staging table, then MERGE)")
    wh_sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = wh_sub.add_parser("sync", help="the as-of date's rows of activation.snowflake.tables")
    a.add_argument("--date", type=iso_date, required=True, help="as-of date (YYYY-MM-DD)")
    p.set_defaults(handler=_cmd_warehouse)

    p = sub.add_parser("privacy", help="erasure and access requests (GDPR/CCPA)")
    pv_sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("forget", "erase a person everywhere now (lake, Redis, platforms, Snowflake)"),
                         ("export", "write everything held about a person to data/privacy/<request>.json")):  # fmt: skip
        a = pv_sub.add_parser(action, help=text)
        who = a.add_mutually_exclusive_group(required=True)
        who.add_argument("--customer", default=None, help="the p13n customer id")
        who.add_argument("--email", default=None, help="an email address of the person")
        if action == "forget":
            a.add_argument(
                "--dry-run",
                action="store_true",
                help="print who the request resolves to and the rows each table would lose; change nothing",
            )
    a = pv_sub.add_parser("request", help="queue a request for the privacy_requests DAG")
    a.add_argument("kind", choices=["forget", "access"])
    who = a.add_mutually_exclusive_group(required=True)
    who.add_argument("--customer", default=None)
    who.add_argument("--email", default=None)
    a = pv_sub.add_parser("process", help="serve the pending requests now (what the DAG does)")
    a.add_argument(
        "--dry-run", action="store_true", help="print what each pending request would do; change nothing"
    )
    p.set_defaults(handler=_cmd_privacy)

    p = sub.add_parser(
        "sql",
        help="run an analysts' view or mart of sql/ (or any file, or - for stdin) over the Delta tables",
        description="Files refer to lake tables as {{ layer.name }} and to other files of sql/ as {{ name }}. "
        "Without FILE, lists the files of sql/.",
    )
    p.add_argument("file", nargs="?", default=None, help="a name in sql/, a path, or - for standard input")
    p.add_argument("--engine", choices=["duckdb", "spark"], default="duckdb")
    p.add_argument("--out", default=None, help="write every row to FILE.csv or FILE.parquet")
    p.add_argument("--limit", type=int, default=20, help="rows to print (default 20)")
    p.set_defaults(handler=_cmd_sql)

    p = sub.add_parser("serve", help="start the recommendation API (OpenAPI document at /docs)")
    p.add_argument("--host", default=None, help="default: serving.api.host")
    p.add_argument("--port", type=int, default=None, help="default: serving.api.port")
    p.add_argument("--workers", type=int, default=None, help="default: serving.api.workers")
    p.set_defaults(handler=_cmd_serve)

    p = sub.add_parser("config", help="print the effective configuration (secrets masked)")
    p.set_defaults(handler=_cmd_config)

    p = sub.add_parser("lake", help="inspect and maintain Delta tables")
    lake_sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = lake_sub.add_parser("tables", help="list tables with version, files, rows, size and last write")
    a.add_argument("--catalog", action="store_true", help="list the catalog: every table the platform writes")
    for action, helptext in [
        ("history", "commits of a table with their run metadata"),
        ("show", "print rows of a table"),
        ("optimize", "compact a table's small files"),
        ("vacuum", "remove files no version in the retention window needs"),
    ]:
        a = lake_sub.add_parser(action, help=helptext)
        a.add_argument("table", help="layer.name, e.g. gold.segments")
        if action in ("history", "show"):
            a.add_argument("--limit", type=int, default=20)
        if action == "show":
            a.add_argument("--where", default=None, help="SQL predicate")
        if action == "vacuum":
            a.add_argument("--retention-hours", type=int, default=None)
            a.add_argument("--dry-run", action="store_true")
    p.set_defaults(handler=_cmd_lake)
    return parser


def main(argv: list[str] | None = None) -> int:
    from p13n.config import ConfigError
    from p13n.inputs import InputError
    from p13n.lake import LakeError

    args = build_parser().parse_args(argv)
    import signal

    # SIGTERM (a service manager, `timeout`, a scheduler killing the command) unwinds like Ctrl-C: every
    # `with` block stops what it started (Airflow, Spark, Redis, the broker) instead of orphaning it.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        if args.handler not in (_cmd_config,):
            from p13n.config import get_settings
            from p13n.secrets import secure_zones

            secure_zones(get_settings())
        return args.handler(args)
    except (ConfigError, LakeError, InputError) as exc:
        print(f"p13n: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
