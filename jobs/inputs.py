"""User-supplied CSV files for the CLI's model commands: read them, name what is wrong, and set bad rows
aside with their reason and line numbers instead of dropping them silently."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


class InputError(ValueError):
    """A file that cannot be used, with the file and the reason."""


def check_file(path: Path) -> Path:
    """A CSV the user named: it exists, is a file, is not empty and is text (UTF-8), else `InputError`."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: is a {'directory' if path.is_dir() else 'special file'}, not a CSV file")
    head = path.open("rb").read(65536)
    if not head.strip():
        raise InputError(f"{path}: the file is empty")
    try:
        if b"\0" in head:
            raise UnicodeDecodeError("utf-8", head, head.index(b"\0"), head.index(b"\0") + 1, "NUL byte")
        head.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if exc.reason != "unexpected end of data":  # a character cut at the 64 KiB boundary is fine
            raise InputError(
                f"{path}: not a UTF-8 text file (byte {exc.start}: {exc.reason}); is it binary?"
            ) from None
    return path


def read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    """All cells as (stripped) strings; the named columns must exist."""
    check_file(path)
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable CSV file ({exc})") from exc
    missing = [c for c in columns if c not in raw.columns]
    if missing:
        raise InputError(f"{path}: no column {', '.join(missing)} (the file has: {', '.join(raw.columns)})")
    return raw[columns].apply(lambda s: s.str.strip())


def set_aside(path: Path, df: pd.DataFrame, problems: dict[str, pd.Series]) -> tuple[pd.DataFrame, dict]:
    """The rows no problem applies to, and per reason (first match wins) how many rows it set aside
    and the first CSV line numbers. No usable row at all is an error."""
    bad, skipped = pd.Series(False, index=df.index), {}
    for reason, mask in problems.items():
        new = mask & ~bad
        if new.any():
            skipped[reason] = {"rows": int(new.sum()), "first_lines": [int(i) + 2 for i in df.index[new][:3]]}
        bad |= mask
    if bad.all():
        reasons = ", ".join(f"{r}: {v['rows']}" for r, v in skipped.items())
        raise InputError(f"{path}: no usable rows ({reasons})")
    return df[~bad].reset_index(drop=True), skipped


def report_skipped(command: str, skipped: dict) -> None:
    import sys

    for reason, info in skipped.items():
        print(
            f"{command}: skipped {info['rows']} rows ({reason}), e.g. lines {info['first_lines']}",
            file=sys.stderr,
        )
