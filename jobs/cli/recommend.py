"""`recommend evaluate` (files) and `recommend run` (the lake)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from p13n.cli.common import CommandError, iso_date, positive_int


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
        raise CommandError(f"{exc}", 2) from None
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


def register(sub) -> None:
    """Add this group's commands to the `p13n` parser."""
    p = sub.add_parser("recommend", help="recommendation models")
    rec_sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = rec_sub.add_parser(
        "evaluate",
        help="train every recommender on an interactions CSV and print each one's ranking metrics as JSON",
        description="Each user's interactions at their latest timestamp (their last basket) form the test "
        "set; the models (popularity, ALS, item similarity, buy-it-again, next-basket and the personalized "
        "list) learn from "
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
        help="also run independent references on the same split: personal top-frequency, the popularity of "
        "all items and Cornac's TIFU-KNN",
    )
    a = rec_sub.add_parser(
        "run",
        help="recommendations on the lake for a date (what the recommend_products DAG does)",
        description="Builds gold.interactions, tunes, evaluates and gates the recipe in MLflow, writes every "
        "list "
        "(gold.recommendations, item_similarity, bought_together, trending, popular_items) and validates "
        "them.",
    )
    a.add_argument(
        "--date", type=iso_date, required=True, help="as-of date (YYYY-MM-DD); gold.segments must have it"
    )
    a.add_argument(
        "--steps", default="interactions,train,lists,validate", help="comma-separated subset of the steps"
    )
    p.set_defaults(handler=_cmd_recommend)
