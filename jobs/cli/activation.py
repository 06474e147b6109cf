"""`export` (audiences to platforms or CSV) and `warehouse sync` (Snowflake)."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from p13n.cli.common import CommandError, iso_date


def _cmd_export(args: argparse.Namespace) -> int:
    from p13n.activation.audiences import AudienceError
    from p13n.activation.sync import SyncError
    from p13n.activation.tasks import export

    if args.out and (not args.to.startswith("csv") or Path(args.out).suffix.lower() != ".csv"):
        raise CommandError(
            f"--out {args.out}: only a CSV export (--to csv*) writes a file, and it must end in .csv",
            2,
        )
    try:
        export(args.audience, args.to, args.date or dt.date.today().isoformat(), args.out)
    except (AudienceError, SyncError) as e:
        raise CommandError(f"{e}", 1) from None
    return 0


def _cmd_warehouse(args: argparse.Namespace) -> int:
    from p13n.activation.tasks import warehouse_sync

    warehouse_sync(args.date)
    return 0


def register(sub) -> None:
    """Add this group's commands to the `p13n` parser."""
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
