"""Holdouts and the send log: who each audience or trigger reached, and who it kept out on purpose.

A holdout is a stable hash of (salt, customer id), like the API's arms
(`p13n.serving.experiments.bucket`): the same customer is held out of the same program every night,
in every process, with nothing stored. Two kinds:

* an audience's own `holdout` share (`activation.audiences.<name>.holdout`): kept out of that
  audience's exports, so its effect can be measured against them;
* the global holdout (`activation.global_holdout`): customers who get no personalized message at all,
  the baseline of the whole programme.

`silver.sends` keeps one row per customer, program, destination and status the first time it
happens (`sent`: exported to the destination; `held_out`: eligible but held out). A night's rows
replace that night's partition, and "first time" is judged against earlier nights only, so a rerun
or a backfill of a date writes the same rows. The send's time is the end of the date it was computed
for (the export runs on the night after it), not the wall clock: a backfill lands where it belongs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa

from p13n.lake.tables import SILVER_SENDS
from p13n.serving.experiments import GLOBAL_SALT, in_holdout  # noqa: F401 (re-exported)

SENT, HELD_OUT, ENTERED = "sent", "held_out", "entered"
GLOBAL_REASON = "global holdout"
HOLDOUT_REASON = "held out"

SCHEMA = pa.schema(
    [
        ("send_id", pa.string()),
        ("program_type", pa.string()),  # audience | trigger (journeys next)
        ("program", pa.string()),
        ("destination", pa.string()),
        ("channel", pa.string()),
        ("customer_id", pa.string()),
        ("status", pa.string()),
        ("sent_at", pa.timestamp("us", tz="UTC")),
        ("cost", pa.float64()),  # what the send cost (held_out: 0)
        ("send_date", pa.date32()),
    ]
)


def holdout_reason(settings, program: str, share: float, customer_id: str) -> str | None:
    """Why a customer eligible for `program` is not sent it: the global holdout, the program's own
    holdout, or None (send)."""
    if in_holdout(GLOBAL_SALT, settings.activation.global_holdout, customer_id):
        return GLOBAL_REASON
    if in_holdout(f"audience:{program}", share, customer_id):
        return HOLDOUT_REASON
    return None


def send_time(as_of: dt.date) -> dt.datetime:
    """The moment a night's sends take effect: the end of the date they were computed for."""
    return dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time(), dt.UTC)


@dataclass(frozen=True)
class Sends:
    """One program's night at one destination: who it sent to, held out, and (a journey) took in."""

    program_type: str
    program: str
    destination: str
    channel: str
    sent: Iterable[str] = ()
    held_out: Iterable[str] = ()
    entered: Iterable[str] = ()  # customers a journey took in (messaged or not)
    cost_per_send: float = 0.0


def record_sends(
    settings,
    *,
    program_type: str,
    program: str,
    destination: str,
    channel: str,
    as_of: dt.date,
    sent: Iterable[str],
    held_out: Iterable[str],
    cost_per_send: float = 0.0,
    entered: Iterable[str] = (),
) -> dict[str, int]:
    """Write the night's first sends and holdouts of one program and destination to `silver.sends`
    (replacing that night's rows of it); returns the rows written per status. `entered`: customers a
    journey took in (messaged or not: the treatment arm is everyone not held out)."""
    one = Sends(program_type, program, destination, channel, sent, held_out, entered, cost_per_send)
    return record_many(settings, as_of, [one])[0]


def record_many(settings, as_of: dt.date, nights: list[Sends]) -> list[dict[str, int]]:
    """`record_sends` for several programs or destinations at once: one read of their earlier sends
    and one commit replacing the night's rows of all of them (a journey night has twenty)."""
    import hashlib

    from p13n.lake.duck import duckdb_connection, literal, replace_rows, scan, table_exists

    if not nights:
        return []
    root = settings.lake_root
    which = " OR ".join(
        f"(program_type = {literal(n.program_type)} AND program = {literal(n.program)} "
        f"AND destination = {literal(n.destination)})"
        for n in nights
    )
    seen: dict[tuple[str, str, str, str], set[str]] = {}
    if table_exists(root, SILVER_SENDS):
        with duckdb_connection(settings=settings) as con:
            rows = con.execute(
                "SELECT program_type, program, destination, status, customer_id "
                f"FROM {scan(root, SILVER_SENDS)} WHERE send_date < ? AND ({which})",
                [as_of],
            ).fetchall()
        for *key, customer in rows:
            seen.setdefault(tuple(key), set()).add(customer)
    at = send_time(as_of)
    columns = {name: [] for name in SCHEMA.names}
    written = []
    for n in nights:
        wanted = {
            SENT: sorted(set(n.sent)),
            HELD_OUT: sorted(set(n.held_out)),
            ENTERED: sorted(set(n.entered)),
        }
        counts = dict.fromkeys(wanted, 0)
        for status, ids in wanted.items():
            before = seen.get((n.program_type, n.program, n.destination, status), set())
            for c in ids:
                if c in before:
                    continue
                key = f"{n.program_type}|{n.program}|{n.destination}|{c}|{status}"
                row = {
                    "send_id": hashlib.sha256(key.encode()).hexdigest()[:24],
                    "program_type": n.program_type,
                    "program": n.program,
                    "destination": n.destination,
                    "channel": n.channel,
                    "customer_id": c,
                    "status": status,
                    "sent_at": at,
                    "cost": n.cost_per_send if status == SENT else 0.0,
                    "send_date": as_of,
                }
                for name, value in row.items():
                    columns[name].append(value)
                counts[status] += 1
        written.append({s: k for s, k in counts.items() if s != ENTERED or k})
    table = pa.table(columns, schema=SCHEMA)
    predicate = f"send_date = '{as_of.isoformat()}' AND ({which})"
    # Written when there are rows, or to clear a rerun's (exports of other programs write at the same time).
    if table.num_rows or table_exists(root, SILVER_SENDS):
        replace_rows(settings, SILVER_SENDS, table, predicate, partition_by=["send_date"])
    return written


def record_audience(settings, audience: str, destination: str, as_of: dt.date, frame, sent) -> dict[str, int]:
    """The sends of one audience export: `sent` (the customers the destination now holds or the file
    carries) and the eligible customers `frame` (`p13n.activation.audiences.candidates`) held out."""
    cfg = settings.activation.audiences[audience]
    held = frame.loc[frame["exclude_reason"].isin([HOLDOUT_REASON, GLOBAL_REASON]), "customer_id"]
    return record_sends(
        settings,
        program_type="trigger" if cfg.trigger else "audience",
        program=audience,
        destination=destination,
        channel=cfg.channel,
        as_of=as_of,
        sent=sent,
        held_out=held,
        cost_per_send=cfg.cost_per_send,
    )
