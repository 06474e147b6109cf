"""What every command shares: argument types and the one rule for errors.

A command refuses with `CommandError(message, exit_code)`: exit code 2 for input the user can fix
(a file, a date, an id), 1 for work that failed. `main` prints every refusal on one line,
`p13n <command>: <message>`; the configuration's own errors read `p13n: <message>`.
"""

from __future__ import annotations

import argparse
import datetime as dt


class CommandError(Exception):
    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


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
