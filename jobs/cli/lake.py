"""The data: `lake`, `sql`, `sources`, `expectations`, `generate`, `config`."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from p13n.cli.common import CommandError, iso_date


def tables_view(settings, title: str | None = None):
    """Every table of the lake with version, files, rows, size, partitioning and its last write."""
    from rich.table import Table

    from p13n.lake import duck

    table = Table("table", "version", "files", "rows", "MB", "partitioned by", "last written", title=title)
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
    return table


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
            table.add_row(t, ", ".join(t.partition_columns), ", ".join(t.key), t.owner, t.about)
        console.print(table)
    elif args.action == "tables":
        console.print(tables_view(settings))
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
            from p13n.spark import get_spark, to_pandas

            frame = to_pandas(run_spark(Lake.from_settings(get_spark(settings), settings), text))
        else:
            frame = run_duckdb(settings, text)
    except (SqlError, ValueError) as e:  # ValueError: a table name that is not layer.name
        raise CommandError(f"{e}", 2) from None
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


def _cmd_sources(args: argparse.Namespace) -> int:
    from p13n.sources.catalog import catalog

    for s in catalog():
        print(
            f"{s.name}\t{s.format}\t{s.system}\t{s.kind}\t{s.location}\towner={s.owner}\t"
            f"freshness={s.freshness_hours}h\tpii={','.join(s.pii_columns) or '-'}"
        )
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:

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


def register(sub) -> None:
    """Add this group's commands to the `p13n` parser."""
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
        "sql",
        help="run an analysts' view or mart of sql/ (or any file, or - for stdin) over the Delta tables",
        description="Files refer to lake tables as {{ layer.name }} and to other files of sql/ as "
        "{{ name }}. Without FILE, lists the files of sql/.",
    )
    p.add_argument("file", nargs="?", default=None, help="a name in sql/, a path, or - for standard input")
    p.add_argument("--engine", choices=["duckdb", "spark"], default="duckdb")
    p.add_argument("--out", default=None, help="write every row to FILE.csv or FILE.parquet")
    p.add_argument("--limit", type=int, default=20, help="rows to print (default 20)")
    p.set_defaults(handler=_cmd_sql)

    p = sub.add_parser("config", help="print the effective configuration (secrets masked)")
    p.set_defaults(handler=_cmd_config, secure_zones=False)  # it must answer before the zones exist

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
