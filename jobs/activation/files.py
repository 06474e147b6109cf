"""CSV exports in each platform's own import format, for manual uploads.

* `klaviyo`: Klaviyo's list import columns (Email, Phone Number, First Name, Last Name, External ID)
  and one column per custom property (the recommended items flattened: Recommended 1 Name, ...).
* `mailchimp`: Mailchimp's audience import columns (Email Address, First Name, Last Name, Tags) and
  one column per merge tag p13n's API sync fills (SEGMENT, STAGE, ... REC1NAME ...).

Only eligible customers (consent for the channel, not erased, an address) are written, and each
contact column only where its own channel is consented: no phone number without SMS consent, no
address without email consent, whatever the audience's channel. A text cell that a spreadsheet would
run as a formula (`=`, `+`, `-`, `@`, tab, CR first) is written with a leading `'` (OWASP's CSV
injection rule); phone numbers in E.164 and numbers stay as they are. The file holds contact data:
it is written with owner-only permissions under `<data_dir>/exports/`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path

import pandas as pd

FORMATS = ("klaviyo", "mailchimp")


_FORMULA = re.compile(r"^[=+\-@\t\r]")
_NUMBER = re.compile(r"^[+-]?[0-9][0-9.]*$")


def defuse(value):
    """A cell a spreadsheet will not evaluate: `=HYPERLINK(...)` -> `'=HYPERLINK(...)`."""
    if isinstance(value, str) and _FORMULA.match(value) and not _NUMBER.match(value):
        return "'" + value
    return value


def _consented(rows: pd.DataFrame, column: str, consent: str) -> pd.Series:
    if consent not in rows:
        return rows[column]
    return rows[column].where(rows[consent] == "granted")


def to_csv(frame: pd.DataFrame, fmt: str, audience: str, recommended: int) -> pd.DataFrame:
    """Pure: the eligible rows of an audience frame in a platform's import columns."""
    rows = frame[frame["exclude_reason"].isna()].reset_index(drop=True)
    rows["email"] = _consented(rows, "email", "consent_email_column")
    rows["phone"] = _consented(rows, "phone", "consent_sms_column")
    return _to_csv(rows, fmt, audience, recommended).map(defuse)


def _to_csv(rows: pd.DataFrame, fmt: str, audience: str, recommended: int) -> pd.DataFrame:
    items = [json.loads(x or "[]") for x in rows["recommended_items"]]

    def item(i: int, key: str) -> list:
        return [(xs[i].get(key) if len(xs) > i else None) for xs in items]

    if fmt == "klaviyo":
        out = pd.DataFrame(
            {
                "Email": rows["email"],
                "Phone Number": rows["phone"],
                "First Name": rows["first_name"],
                "Last Name": rows["last_name"],
                "External ID": rows["customer_id"],
                "Segment": rows["segment"],
                "Lifecycle Stage": rows["lifecycle_stage"],
                "CLV Tier": rows["clv_tier"],
                "Churn Band": rows["churn_band"],
                "Loyalty Points": rows["loyalty_points"],
                "Preferred Store": rows["preferred_store"],
                "Best Send Hour": rows["best_send_hour"],
            }
        )
        for i in range(recommended):
            for key, label in (("name", "Name"), ("image", "Image"), ("price", "Price"), ("url", "URL")):
                out[f"Recommended {i + 1} {label}"] = item(i, key)
        return out
    if fmt == "mailchimp":
        out = pd.DataFrame(
            {
                "Email Address": rows["email"],
                "First Name": rows["first_name"],
                "Last Name": rows["last_name"],
                "Tags": audience,
                "SEGMENT": rows["segment"],
                "STAGE": rows["lifecycle_stage"],
                "CLVTIER": rows["clv_tier"],
                "POINTS": rows["loyalty_points"],
                "STORE": rows["preferred_store"],
                "SENDHOUR": rows["best_send_hour"],
            }
        )
        for i in range(recommended):
            for key, tag in (("name", "NAME"), ("image", "IMG"), ("price", "PRICE"), ("url", "URL")):
                out[f"REC{i + 1}{tag}"] = item(i, key)
        return out
    raise ValueError(f"CSV format {fmt!r}: one of {', '.join(FORMATS)}")


def export_csv(
    settings, audience: str, as_of: dt.date, fmt: str, out: Path | None = None
) -> tuple[Path, int]:
    from p13n.activation.audiences import candidates, with_cadence
    from p13n.lake.duck import duckdb_connection

    con = duckdb_connection()
    frame = candidates(con, settings, audience, as_of)
    if audience in settings.activation.audiences:
        frame = with_cadence(con, settings, audience, as_of, frame)
    table = to_csv(frame, fmt, audience, settings.activation.recommended_items)
    if audience in settings.activation.audiences:
        from p13n.measurement.sends import record_audience

        sent = frame.loc[frame["exclude_reason"].isna(), "customer_id"]
        record_audience(settings, audience, f"csv-{fmt}", as_of, frame, sent)
    path = out or settings.data_dir / "exports" / audience / f"{as_of.isoformat()}-{fmt}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", newline="") as f:
        table.to_csv(f, index=False)
    return path, len(table)
