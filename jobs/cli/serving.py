"""`serving publish|rollback|status` and `serve` (the API)."""

from __future__ import annotations

import argparse

from p13n.cli.common import iso_date


def _cmd_serving(args: argparse.Namespace) -> int:
    from p13n.serving.tasks import serving_command

    return serving_command(
        args.action,
        date=getattr(args, "date", None),
        force=getattr(args, "force", False),
        to=getattr(args, "to", None),
        as_json=getattr(args, "json", False),
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    from p13n.serving.tasks import serve

    return serve(host=args.host, port=args.port, workers=args.workers)


def register(sub) -> None:
    """Add this group's commands to the `p13n` parser."""
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

    p = sub.add_parser("serve", help="start the recommendation API (OpenAPI document at /docs)")
    p.add_argument("--host", default=None, help="default: serving.api.host")
    p.add_argument("--port", type=int, default=None, help="default: serving.api.port")
    p.add_argument("--workers", type=int, default=None, help="default: serving.api.workers")
    p.set_defaults(handler=_cmd_serve)
