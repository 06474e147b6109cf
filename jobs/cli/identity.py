"""`identity resolve` (files) and `identity run` (the lake)."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from p13n.cli.common import CommandError, iso_date


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

        try:
            out = resolve_file(
                [Path(p) for p in args.input],
                Path(args.output),
                settings,
                threshold=args.threshold,
                link_only=args.link_only,
                progress=progress,
            )
        except InputError as exc:
            raise CommandError(f"{exc}", 2) from None
        console.print(
            f"{out['records']:,} records → {out['customers']:,} customers in {out['seconds']} s "
            f"(compared on {', '.join(out['compared'])}); wrote {out['output']}"
        )
        if args.truth:
            try:
                predicted, truth = _truth_frames(Path(args.output), Path(args.truth))
            except InputError as exc:
                raise CommandError(f"{exc}", 2) from None
            console.print(format_metrics(evaluate_clusters(predicted, truth)))
        return 0

    from p13n.identity.pipeline import resolve_identities
    from p13n.identity.tasks import load_truth
    from p13n.secrets import pii_key
    from p13n.session import lake

    out = resolve_identities(
        lake(),
        settings,
        dt.date.fromisoformat(args.date),
        pii_key(settings),
        truth=load_truth(settings),
        progress=progress,
    )
    console.print(out.summary())
    return 0


def _truth_frames(output: Path, truth_path: Path):
    """(predicted, truth) keyed alike: by record_id, or by file and record_id when the truth names
    each record's file (several inputs whose ids overlap)."""
    import pandas as pd

    from p13n.inputs import check_file

    check_file(truth_path)
    predicted = pd.read_csv(output, dtype=str)
    truth = pd.read_csv(truth_path, dtype=str)
    missing = {"record_id", "person_id"} - set(truth.columns)
    if missing:
        raise CommandError(
            f"{truth_path}: needs the columns record_id,person_id (missing: {', '.join(missing)})", 2
        )
    by_file = "file" in predicted.columns and "file" in truth.columns
    for frame in (predicted, truth):
        frame["record_key"] = (frame["file"] + ":" if by_file else "") + frame["record_id"]
    if predicted["record_key"].duplicated().any():
        raise CommandError(
            f"{truth_path}: record ids repeat across the input files; give the truth a file column "
            "(the input file's name without .csv) to tell them apart",
            2,
        )
    return predicted[["record_key", "customer_id"]], truth[["record_key", "person_id"]]


def register(sub) -> None:
    """Add this group's commands to the `p13n` parser."""
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
    a.add_argument(
        "--truth",
        help="optional CSV record_id,person_id (and file, when several inputs share ids): print precision, "
        "recall, F1 and the cluster counts",
    )
    a = id_sub.add_parser("run", help="resolve the lake's identity sources for a date (what the DAG does)")
    a.add_argument("--date", type=iso_date, required=True, help="run date, YYYY-MM-DD")
    p.set_defaults(handler=_cmd_identity)
