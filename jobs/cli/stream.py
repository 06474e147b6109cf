"""`stream consume|produce|reset-offsets`."""

from __future__ import annotations

import argparse

from p13n.cli.common import CommandError


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
            raise CommandError(f"no catalog source reads topic {args.topic!r}", 2)
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


def register(sub) -> None:
    """Add this group's commands to the `p13n` parser."""
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
    a.add_argument(
        "--to",
        choices=["beginning", "end"],
        required=True,
        help="beginning: land what the broker holds now; end: skip it",
    )
    p.set_defaults(handler=_cmd_stream)
