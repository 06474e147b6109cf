"""`p13n clv fit`: the CLV models on any transactions CSV, with clear errors and nothing silently dropped."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd

from p13n.inputs import InputError, read_csv, set_aside
from p13n.models import clv


def read_transactions(path: Path, customer: str, date: str, amount: str) -> tuple[pd.DataFrame, dict]:
    """The usable rows of the file, and the count of rows set aside per reason."""
    raw = read_csv(path, [customer, date, amount])
    tx = pd.DataFrame(
        {
            "customer": raw[customer],
            "date": pd.to_datetime(raw[date], format="ISO8601", errors="coerce"),
            "amount": pd.to_numeric(raw[amount], errors="coerce"),
        }
    )
    return set_aside(
        path,
        tx,
        {
            "empty customer": tx["customer"] == "",
            "unparseable date": tx["date"].isna(),
            "non-numeric amount": tx["amount"].isna(),
            "negative amount": tx["amount"] < 0,
        },
    )


def fit_file(
    path: Path,
    customer: str,
    date: str,
    amount: str,
    calibration_end: dt.date | None = None,
    time_unit: str = "D",
) -> dict:
    """Fit BG/NBD and Gamma-Gamma on the file; with a calibration end before its last date, also
    evaluate the holdout after it."""
    if time_unit not in clv.UNIT_DAYS:
        raise InputError(f"time unit must be one of {', '.join(clv.UNIT_DAYS)}, got {time_unit!r}")
    tx, skipped = read_transactions(path, customer, date, amount)
    last = tx["date"].max().date()
    if calibration_end and calibration_end < tx["date"].min().date():
        raise InputError(f"{path}: calibration end {calibration_end} is before the first transaction")
    end = calibration_end or last
    summary = clv.summarize(tx, "customer", "date", "amount", end, max(last, end), time_unit)
    try:
        bg, gg = clv.fit_bgnbd(summary), clv.fit_gamma_gamma(summary)
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from exc
    out = {
        "r": round(bg.r, 4),
        "alpha": round(bg.alpha, 4),
        "a": round(bg.a, 4),
        "b": round(bg.b, 4),
        "p": round(gg.p, 4),
        "q": round(gg.q, 4),
        "gamma": round(gg.gamma, 4),
        "log_likelihood": round(bg.log_likelihood, 4),
        "gamma_gamma_log_likelihood": round(gg.log_likelihood, 4),
        "customers": bg.customers,
        "repeat_customers": gg.customers,
        "transactions": len(tx),
        "calibration_end": end.isoformat(),
        "time_unit": time_unit,
        "skipped_rows": skipped,
    }
    if "holdout_frequency" in summary:
        out["holdout"] = clv.evaluate_holdout(bg, summary)
    return out
