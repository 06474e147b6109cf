"""The contact ledger: every message to every customer on every channel, and the one cadence they share.

Nightly audiences, the stream's triggers and journey steps each propose messages (a customer, a
channel, a program). `allocate` (pure) decides each one against everything the ledger already holds
for that customer:

* **consent** for the message's channel (`consent_<channel>` of the golden record), else `no_consent`;
* **timing**: `now`, the customer's best hour (`gold.send_times`, a UTC hour) or best hour and
  weekday (`cadence.timing` per kind of program), then out of the **quiet hours** of the customer's
  time zone (from their state; `cadence.default_time_zone` without one): a message due at 22:00
  local goes at `quiet_end` the next morning;
* **caps** per customer on the local day it goes out and the 7 local days to it, over all channels
  and per channel (`cadence.max_per_*`, `cadence.channels`); over one: `capped`, with the cap named.

Which messages count against a new one is fixed by when they were decided, so a rerun decides the
same: everything decided earlier (a trigger at 10:00 counts the night before's audience messages,
and the next night counts that trigger), and, decided at the same moment (one night's journeys and
audiences), the programs of higher `cadence.priority`. A program's own rows of that moment are
replaced by a rerun, not counted. `plan` reads the inputs, allocates and writes the program's rows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import defaultdict

import pandas as pd
import pyarrow as pa

from p13n.cadence.zones import zone, zone_name
from p13n.lake.tables import GOLD_CUSTOMER_PROFILES, GOLD_SEND_TIMES, OPS_CONTACT_LEDGER

SCHEDULED, CAPPED, NO_CONSENT, SUPPRESSED = "scheduled", "capped", "no_consent", "suppressed"
CANDIDATE_COLUMNS = ["customer_id", "channel", "program_type", "program", "step"]
SCHEMA = pa.schema(
    [
        ("message_id", pa.string()),
        ("decision_id", pa.string()),  # program_type:program@decided_at: the slice a rerun replaces
        ("customer_id", pa.string()),
        ("channel", pa.string()),
        ("program_type", pa.string()),  # audience | trigger | journey
        ("program", pa.string()),
        ("step", pa.string()),  # the journey's step, the trigger's id, the audience's destination
        ("priority", pa.int32()),  # the cadence.priority rank (0 first)
        ("status", pa.string()),  # scheduled | capped | no_consent | suppressed
        ("reason", pa.string()),
        ("decided_at", pa.timestamp("us", tz="UTC")),
        ("scheduled_at", pa.timestamp("us", tz="UTC")),  # when it goes out (scheduled only)
        ("time_zone", pa.string()),
        ("local_date", pa.date32()),  # the customer's date it goes out on: what the caps count
        ("ledger_date", pa.date32()),
    ]
)
COLUMNS = SCHEMA.names


def rank(priority: list[str], program_type: str, program: str) -> int:
    """The index of the first `cadence.priority` entry naming this program ("type:name") or its kind."""
    for i, entry in enumerate(priority):
        if entry in (f"{program_type}:{program}", program_type):
            return i
    return len(priority)


def decision_id(program_type: str, program: str, decided_at: dt.datetime) -> str:
    return f"{program_type}:{program}@{decided_at.isoformat()}"


def ledger_date(decided_at: dt.datetime) -> dt.date:
    """The date a decision belongs to: a night decided at the end of its date stays on that date."""
    return (decided_at - dt.timedelta(microseconds=1)).date()


def _timed(not_before: dt.datetime, timing: str, hour, weekday) -> dt.datetime:
    """The first moment from `not_before` (UTC) at the best hour (and weekday) the timing asks for."""
    if timing == "now" or hour is None or pd.isna(hour):
        return not_before
    t = not_before.replace(minute=0, second=0, microsecond=0).replace(hour=int(hour))
    if t < not_before:
        t += dt.timedelta(days=1)
    if timing == "hour_and_weekday" and isinstance(weekday, str) and weekday:
        names = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
        if weekday.lower() in names:
            t += dt.timedelta(days=(names.index(weekday.lower()) - t.weekday()) % 7)
    return t


def _out_of_quiet(t: dt.datetime, tz_name: str, start: int, end: int) -> tuple[dt.datetime, str]:
    """(`t` or, inside the quiet hours of `tz_name`, their end; the reason it moved or '')."""
    if start == end:
        return t, ""
    local = t.astimezone(zone(tz_name))
    h = local.hour
    quiet = (start <= h or h < end) if start > end else (start <= h < end)
    if not quiet:
        return t, ""
    day = local.date() if h < end else local.date() + dt.timedelta(days=1 if start > end else 0)
    moved = dt.datetime.combine(day, dt.time(end), zone(tz_name))
    return moved.astimezone(dt.UTC), f"quiet hours: moved to {end:02d}:00 {tz_name}"


class _Counts:
    """Scheduled messages per customer and local date, over all channels and per channel."""

    def __init__(self):
        self.days: dict[str, dict[tuple[dt.date, str | None], int]] = defaultdict(lambda: defaultdict(int))

    def add(self, customer: str, day: dt.date, channel: str) -> None:
        self.days[customer][(day, None)] += 1
        self.days[customer][(day, channel)] += 1

    def on(self, customer: str, day: dt.date, channel: str | None) -> int:
        return self.days[customer].get((day, channel), 0)

    def week(self, customer: str, day: dt.date, channel: str | None) -> int:
        return sum(self.on(customer, day - dt.timedelta(days=i), channel) for i in range(7))


def _over_cap(counts: _Counts, cfg, customer: str, day: dt.date, channel: str) -> str | None:
    """The first cap a message to `customer` on `channel` on local `day` would break, named, or None."""
    cap = cfg.channels.get(channel)
    checks = [(None, cfg.max_per_day, cfg.max_per_week, "cap over all channels")]
    if cap is not None:
        checks.append((channel, cap.max_per_day, cap.max_per_week, f"{channel} cap"))
    for ch, per_day, _, name in checks:
        if counts.on(customer, day, ch) >= per_day:
            return f"{name}: {per_day} a day"
    for ch, _, per_week, name in checks:
        if counts.week(customer, day, ch) >= per_week:
            return f"{name}: {per_week} a week"
    return None


def allocate(
    candidates: pd.DataFrame,
    ledger: pd.DataFrame,
    customers: pd.DataFrame,
    cfg,
    decided_at: dt.datetime,
    suppressed: dict[str, str] | None = None,
) -> pd.DataFrame:
    """The ledger rows of `candidates` (CANDIDATE_COLUMNS) decided at `decided_at` (UTC), against the
    `ledger` rows already there (COLUMNS) and the `customers` (customer_id, state, consent_<channel>,
    best_hour, best_weekday; any may be missing). `suppressed`: customers who get no marketing
    message now, with why (an open service case, a refund gone wrong). Pure."""
    suppressed = suppressed or {}
    if candidates.empty:
        return pd.DataFrame(columns=COLUMNS)
    cand = candidates[CANDIDATE_COLUMNS].drop_duplicates().copy()
    cand["priority"] = [
        rank(cfg.priority, t, p) for t, p in zip(cand["program_type"], cand["program"], strict=True)
    ]
    cand = cand.sort_values(["priority", "program_type", "program", "customer_id", "step"]).reset_index(
        drop=True
    )
    info = customers.drop_duplicates("customer_id").set_index("customer_id") if len(customers) else None
    prior = ledger[ledger["status"] == SCHEDULED] if len(ledger) else pd.DataFrame(columns=COLUMNS)
    if len(prior):
        prior = prior.assign(
            decided_at=pd.to_datetime(prior["decided_at"], utc=True),
            local_date=pd.to_datetime(prior["local_date"]).dt.date,
        )
    point = pd.Timestamp(decided_at)
    out: list[dict] = []
    groups = cand.groupby(["priority", "program_type", "program"], sort=True)
    done: list[dict] = []  # this batch's scheduled rows of earlier (higher-priority) groups
    for (prio, ptype, prog), rows in groups:
        key = (prio, ptype, prog)
        counts = _Counts()
        if len(prior):
            same = prior["decided_at"] == point
            earlier_key = [
                (p, t, g) < key
                for p, t, g in zip(prior["priority"], prior["program_type"], prior["program"], strict=True)
            ]
            own = same & (prior["program_type"] == ptype) & (prior["program"] == prog)
            counted = prior[
                ((prior["decided_at"] < point) | (same & pd.Series(earlier_key, index=prior.index))) & ~own
            ]
            for c, d, ch in zip(
                counted["customer_id"], counted["local_date"], counted["channel"], strict=True
            ):
                counts.add(c, d, ch)
        for r in done:
            counts.add(r["customer_id"], r["local_date"], r["channel"])
        timing = cfg.timing.get(ptype, "now")
        for row in rows.itertuples(index=False):
            c = row.customer_id
            has = info is not None and c in info.index
            tz_name = zone_name(
                info.at[c, "state"] if has and "state" in info else None, cfg.default_time_zone
            )
            rec = {
                "message_id": hashlib.sha256(
                    f"{ptype}|{prog}|{row.step}|{c}|{decided_at.isoformat()}".encode()
                ).hexdigest()[:24],
                "decision_id": decision_id(ptype, prog, decided_at),
                "customer_id": c,
                "channel": row.channel,
                "program_type": ptype,
                "program": prog,
                "step": row.step,
                "priority": int(prio),
                "decided_at": decided_at,
                "time_zone": tz_name,
                "ledger_date": ledger_date(decided_at),
                "scheduled_at": None,
                "local_date": None,
            }
            if c in suppressed:
                out.append(rec | {"status": SUPPRESSED, "reason": suppressed[c]})
                continue
            consent_col = f"consent_{row.channel}"
            if not has or consent_col not in info or info.at[c, consent_col] != "granted":
                out.append(rec | {"status": NO_CONSENT, "reason": f"no {row.channel} consent"})
                continue
            hour = info.at[c, "best_hour"] if "best_hour" in info else None
            weekday = info.at[c, "best_weekday"] if "best_weekday" in info else None
            at, moved = _out_of_quiet(
                _timed(decided_at, timing, hour, weekday), tz_name, cfg.quiet_start, cfg.quiet_end
            )
            day = at.astimezone(zone(tz_name)).date()
            capped = _over_cap(counts, cfg, c, day, row.channel)
            if capped:
                out.append(rec | {"status": CAPPED, "reason": capped})
                continue
            counts.add(c, day, row.channel)
            rec |= {"status": SCHEDULED, "reason": moved, "scheduled_at": at, "local_date": day}
            out.append(rec)
            done.append(rec)
    return pd.DataFrame(out, columns=COLUMNS)


# ------------------------------------------------------------------------------------------ lake
def _read_customers(settings, con, ids: list[str], as_of: dt.date) -> pd.DataFrame:
    from p13n.lake.duck import scan, table_exists

    root = settings.lake_root
    if not table_exists(root, GOLD_CUSTOMER_PROFILES):
        return pd.DataFrame(columns=["customer_id"])
    con.register("cadence_ids", pd.DataFrame({"customer_id": pd.Series(ids, dtype=object)}))
    try:
        times = "NULL::INT AS best_hour, NULL::VARCHAR AS best_weekday"
        join = ""
        if table_exists(root, GOLD_SEND_TIMES):
            times = "t.best_hour, t.best_weekday"
            join = (
                f"LEFT JOIN (SELECT customer_id, arg_max(best_hour, as_of_date) AS best_hour, "
                f"arg_max(best_weekday, as_of_date) AS best_weekday FROM {scan(root, GOLD_SEND_TIMES)} "
                "WHERE as_of_date <= ? GROUP BY customer_id) t USING (customer_id)"
            )
        return con.execute(
            f"""SELECT i.customer_id, p.* EXCLUDE (customer_id), {times}
                FROM cadence_ids i
                JOIN (SELECT customer_id, COLUMNS('^(state|consent_[a-z]+)$')
                      FROM {scan(root, GOLD_CUSTOMER_PROFILES)}) p USING (customer_id) {join}""",
            [as_of] if join else [],
        ).df()
    finally:
        con.unregister("cadence_ids")


def read_suppressions(settings, con, ids: list[str], at: dt.datetime) -> dict[str, str]:
    """Customers of `ids` who get no marketing message at `at`: a service case not closed
    (`crm_cases`, through their CRM contact), a refund for one of `cadence.refund_reasons` in the
    `refund_quiet_days` before (`shopify_refunds`, through the order's Shopify customer)."""
    from p13n.lake.duck import scan, table_exists
    from p13n.lake.tables import GOLD_IDENTITY_KEYS, silver_table

    cfg, root = settings.cadence, settings.lake_root
    if not ids or not table_exists(root, GOLD_IDENTITY_KEYS):
        return {}
    keys = scan(root, GOLD_IDENTITY_KEYS)
    when = at.astimezone(dt.UTC).replace(tzinfo=None)
    out: dict[str, str] = {}
    con.register("cadence_ids", pd.DataFrame({"customer_id": pd.Series(ids, dtype=object)}))
    try:
        if cfg.suppress_open_cases and table_exists(root, silver_table("crm_cases")):
            for c, case_id, topic in con.execute(
                f"""SELECT k.customer_id, arg_max(x.case_id, x.opened_at), arg_max(x.topic, x.opened_at)
                    FROM {scan(root, silver_table("crm_cases"))} x
                    JOIN {keys} k ON k.key_type = 'crm_contact_id' AND k.key_value = x.contact_id
                    JOIN cadence_ids i ON i.customer_id = k.customer_id
                    WHERE x.status <> 'closed' AND CAST(x.opened_at AS TIMESTAMP) <= ?
                    GROUP BY 1""",
                [when],
            ).fetchall():
                out[c] = f"open service case {case_id} ({topic})"
        needed = ("shopify_refunds", "shopify_orders")
        if (
            cfg.refund_reasons
            and cfg.refund_quiet_days
            and all(table_exists(root, silver_table(t)) for t in needed)
        ):
            for c, refund_id, reason in con.execute(
                f"""SELECT k.customer_id, arg_max(r.refund_id, r.processed_at),
                           arg_max(r.reason, r.processed_at)
                    FROM {scan(root, silver_table("shopify_refunds"))} r
                    JOIN {scan(root, silver_table("shopify_orders"))} o USING (order_id)
                    JOIN {keys} k ON k.key_type = 'shopify_customer_id' AND k.key_value = o.customer_id
                    JOIN cadence_ids i ON i.customer_id = k.customer_id
                    WHERE r.reason IN (SELECT unnest(?::VARCHAR[]))
                      AND CAST(r.processed_at AS TIMESTAMP) BETWEEN ? AND ?
                    GROUP BY 1""",
                [list(cfg.refund_reasons), when - dt.timedelta(days=cfg.refund_quiet_days), when],
            ).fetchall():
                out.setdefault(c, f"refund {refund_id} ({reason}) in the last {cfg.refund_quiet_days} days")
    finally:
        con.unregister("cadence_ids")
    return out


def read_ledger(settings, con, around: dt.datetime, days: int = 15) -> pd.DataFrame:
    """The ledger rows decided within `days` before `around` and up to it (what caps may count:
    a message decided a week ahead of its day included)."""
    from p13n.lake.duck import scan, table_exists

    root = settings.lake_root
    if not table_exists(root, OPS_CONTACT_LEDGER):
        return pd.DataFrame(columns=COLUMNS)
    return con.execute(
        f"SELECT * FROM {scan(root, OPS_CONTACT_LEDGER)} WHERE ledger_date BETWEEN ? AND ?",
        [ledger_date(around) - dt.timedelta(days=days), ledger_date(around)],
    ).df()


def plan(
    settings,
    candidates: pd.DataFrame,
    decided_at: dt.datetime,
    con=None,
    programs: list[tuple[str, str]] = (),
    write: bool = True,
    extra: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Allocate `candidates` decided at `decided_at` against the lake's ledger and write their rows
    (replacing what an earlier run of the same programs at the same moment wrote, and of `programs`,
    (program_type, program) pairs that may have nothing to send this time); returns them. A what-if
    (`p13n journeys simulate`) passes `write=False` and its own earlier decisions as `extra` rows."""
    from p13n.lake.duck import duckdb_connection, literal, replace_rows, table_exists

    con = con or duckdb_connection(settings=settings)
    ids = sorted(set(candidates["customer_id"])) if len(candidates) else []
    customers = _read_customers(settings, con, ids, ledger_date(decided_at)) if ids else pd.DataFrame()
    ledger = read_ledger(settings, con, decided_at)
    if extra is not None and len(extra):
        ledger = pd.concat([ledger, extra], ignore_index=True) if len(ledger) else extra
    pairs = set(programs) | set(
        zip(candidates.get("program_type", []), candidates.get("program", []), strict=True)
    )
    slices = sorted(decision_id(t, p, decided_at) for t, p in pairs)
    if len(ledger):  # what this call replaces counts as it is decided now, not as well as before
        ledger = ledger[~ledger["decision_id"].isin(slices)]
    rows = allocate(
        candidates,
        ledger,
        customers,
        settings.cadence,
        decided_at,
        read_suppressions(settings, con, ids, decided_at),
    )
    if not slices or not write:
        return rows
    table = pa.Table.from_pandas(rows, schema=SCHEMA, preserve_index=False)
    listed = ", ".join(literal(s) for s in slices)
    predicate = f"ledger_date = {literal(ledger_date(decided_at))} AND decision_id IN ({listed})"
    if len(rows) or table_exists(settings.lake_root, OPS_CONTACT_LEDGER):
        replace_rows(settings, OPS_CONTACT_LEDGER, table, predicate, partition_by=["ledger_date"])
    return rows


def blocked(rows: pd.DataFrame) -> dict[tuple[str, str, str], str]:
    """(program, customer_id, step) -> reason, for the rows not scheduled (capped or without consent)."""
    r = rows[rows["status"] != SCHEDULED]
    return dict(zip(zip(r["program"], r["customer_id"], r["step"], strict=True), r["reason"], strict=True))


def hold_back(
    frame: pd.DataFrame,
    rows: pd.DataFrame,
    keys: tuple[str, str, str],
    *,
    sent: tuple[str, str],
    held: str,
    reason: str,
) -> pd.DataFrame:
    """`frame` with the messages the ledger's `rows` did not schedule marked held back: a row whose
    `sent` column (name, value) says sent and whose `keys` (program, customer, step columns) the
    ledger blocked gets `held` in that column and the ledger's reason in `reason`."""
    why = blocked(rows)
    if not why:
        return frame
    frame = frame.copy()
    found = [why.get(k) for k in zip(*(frame[c] for c in keys), strict=True)]
    hit = (frame[sent[0]] == sent[1]) & pd.Series([w is not None for w in found], index=frame.index)
    frame.loc[hit, reason] = [w for w, h in zip(found, hit, strict=True) if h]
    frame.loc[hit, sent[0]] = held
    return frame


def candidates_frame(customers, channels, program_type: str, programs, steps) -> pd.DataFrame:
    """CANDIDATE_COLUMNS from parallel sequences (a scalar `program_type`)."""
    frame = pd.DataFrame(
        {
            "customer_id": list(customers),
            "channel": list(channels),
            "program": list(programs),
            "step": list(steps),
        }
    )
    frame["program_type"] = program_type
    return frame[CANDIDATE_COLUMNS]
