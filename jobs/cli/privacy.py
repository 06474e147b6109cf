"""`privacy forget|export|request|process` (GDPR/CCPA)."""

from __future__ import annotations

import argparse

from p13n.cli.common import CommandError


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
        raise CommandError(f"{e}", 2) from None
    except RuntimeError as e:  # a queued request failed: recorded on it, the others were served
        raise CommandError(f"{e}", 1) from None
    return 0


def register(sub) -> None:
    """Add this group's commands to the `p13n` parser."""
    p = sub.add_parser("privacy", help="erasure and access requests (GDPR/CCPA)")
    pv_sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (
        ("forget", "erase a person everywhere now (lake, Redis, platforms, Snowflake)"),
        ("export", "write everything held about a person to data/privacy/<request>.json"),
    ):
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
