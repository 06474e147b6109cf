"""`clv fit` (files) and `customers run` (the lake)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from p13n.cli.common import CommandError, iso_date


def _cmd_clv(args: argparse.Namespace) -> int:

    from p13n.customers.files import fit_file
    from p13n.inputs import InputError, report_skipped

    try:
        end = dt.date.fromisoformat(args.calibration_end) if args.calibration_end else None
    except ValueError:
        raise CommandError(f"--calibration-end must be YYYY-MM-DD, got {args.calibration_end!r}", 2) from None
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
        raise CommandError(f"{exc}", 2) from None
    report_skipped("p13n clv fit", out["skipped_rows"])
    print(json.dumps(out, indent=2))
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


def register(sub) -> None:
    """Add this group's commands to the `p13n` parser."""
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

    p = sub.add_parser(
        "customers", help="customer intelligence on the lake for a date (what the score_customers DAG does)"
    )
    p.add_argument("action", choices=["run"])
    p.add_argument("--date", type=iso_date, required=True, help="as-of date (YYYY-MM-DD)")
    p.add_argument(
        "--steps", default="features,churn,clv,segments,validate", help="comma-separated subset of the steps"
    )
    p.set_defaults(handler=_cmd_customers)
