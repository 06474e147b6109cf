"""`p13n`: the command line. `p13n --help` lists the commands; each has its own --help.

One module per command group registers its parsers beside its handlers (`register(sub)`);
`main` applies the one error rule of `p13n.cli.common`.
"""

from __future__ import annotations

import argparse
import sys

from p13n import __version__
from p13n.cli import (
    activation,
    bench,
    customers,
    experiments,
    identity,
    journeys,
    lake,
    pipeline,
    privacy,
    recommend,
    serving,
    stream,
)

GROUPS = (
    pipeline,
    lake,
    bench,
    identity,
    customers,
    recommend,
    serving,
    stream,
    activation,
    experiments,
    journeys,
    privacy,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p13n",
        description="p13n: retail personalization data platform (Spark, Delta Lake, Airflow).",
        epilog="Configuration: conf/base.yaml + conf/$P13N_ENV.yaml + P13N__SECTION__KEY variables.",
    )
    parser.add_argument("--version", action="version", version=f"p13n {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    import signal

    from p13n.cli.common import CommandError
    from p13n.config import ConfigError
    from p13n.inputs import InputError
    from p13n.lake import LakeError

    args = build_parser().parse_args(argv)
    command = " ".join(v for v in (args.command, getattr(args, "action", None)) if isinstance(v, str))

    # SIGTERM (a service manager, `timeout`, a scheduler killing the command) unwinds like Ctrl-C: every
    # `with` block stops what it started (Airflow, Spark, Redis, the broker) instead of orphaning it.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        if getattr(args, "secure_zones", True):
            from p13n.config import get_settings
            from p13n.secrets import secure_zones

            secure_zones(get_settings())
        return args.handler(args)
    except ConfigError as exc:  # the installation's configuration, whatever the command
        print(f"p13n: {exc}", file=sys.stderr)
        return 2
    except (CommandError, LakeError, InputError) as exc:  # one line: the command and the reason
        print(f"p13n {command}: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:  # Ctrl-C: the `with` blocks have stopped what the command started
        print(f"p13n {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
