"""Journeys on the lake: each night's entrants, profiles and orders in, `gold.journey_state`,
`gold.journey_events` and the journey's sends (`silver.sends`) out.

Inputs are read with DuckDB: the date's `gold.segments` (with the previous scoring date's, to see who
moved into a lifecycle stage), consents from `gold.customer_profiles`, the day's sent triggers from
`gold.triggered_audiences`, orders of every sales system (`sql/orders.sql`) and the previous night's
state. `night` runs the pure engine per journey; `run_night` writes the date's partitions, replacing
them (a rerun or backfill of a date writes the same rows: it starts from the state of the date before).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pandas as pd

from p13n.journeys import engine
from p13n.journeys.model import Journey, journeys
from p13n.lake.tables import (
    GOLD_CUSTOMER_PROFILES,
    GOLD_JOURNEY_EVENTS,
    GOLD_JOURNEY_STATE,
    GOLD_SEGMENTS,
    GOLD_TRIGGERED_AUDIENCES,
)

PROFILE_SQL = """
SELECT g.customer_id, g.persona AS segment, g.rfm_segment, g.lifecycle_stage, g.churn_risk_band AS churn_band,
       g.clv_12m, CASE {tiers} ELSE 'low' END AS clv_tier,
       p.consent_email, p.consent_sms, p.consent_push
FROM (SELECT *, percent_rank() OVER (ORDER BY clv_12m) AS pct FROM {segments} WHERE as_of_date = ?) g
LEFT JOIN {profiles} p USING (customer_id)
"""


class NotScored(LookupError):
    """The date has no segments yet: nothing to advance journeys on."""


@dataclass
class Inputs:
    day: dt.date
    profiles: pd.DataFrame  # customer_id, profile columns, consent_<channel>
    previous_stage: pd.Series  # customer_id -> lifecycle stage on the previous scoring date
    triggers: pd.DataFrame  # customer_id, trigger (sent on the day)
    orders: pd.DataFrame  # customer_id, day


def read_inputs(settings, con, day: dt.date, order_days: int = 400) -> Inputs:
    from p13n.analytics.sql import render
    from p13n.lake.duck import scan, table_exists

    root = settings.lake_root
    tiers = " ".join(
        f"WHEN pct >= {p} THEN '{t}'"
        for t, p in sorted(settings.serving.clv_tiers.items(), key=lambda kv: -kv[1])
    )
    has_profiles = table_exists(root, GOLD_CUSTOMER_PROFILES)
    profiles_table = (
        scan(root, GOLD_CUSTOMER_PROFILES)
        if has_profiles
        else (
            "(SELECT NULL::VARCHAR AS customer_id, NULL AS consent_email, NULL AS consent_sms, "
            "NULL AS consent_push)"
        )
    )
    profiles = con.execute(
        PROFILE_SQL.format(tiers=tiers, segments=scan(root, GOLD_SEGMENTS), profiles=profiles_table), [day]
    ).df()
    before = con.execute(
        f"SELECT max(as_of_date) FROM {scan(root, GOLD_SEGMENTS)} WHERE as_of_date < ?", [day]
    ).fetchone()[0]
    previous = pd.Series(dtype=object)
    if before is not None:
        previous = (
            con.execute(
                f"SELECT customer_id, lifecycle_stage FROM {scan(root, GOLD_SEGMENTS)} WHERE as_of_date = ?",
                [before],
            )
            .df()
            .set_index("customer_id")["lifecycle_stage"]
        )
    triggers = pd.DataFrame(columns=["customer_id", "trigger"])
    if table_exists(root, GOLD_TRIGGERED_AUDIENCES):
        triggers = con.execute(
            f"SELECT DISTINCT customer_id, trigger FROM {scan(root, GOLD_TRIGGERED_AUDIENCES)} "
            "WHERE status = 'sent' AND trigger_date = ?",
            [day],
        ).df()
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time())
    orders_sql = render(
        "SELECT customer_id, CAST(ordered_at AS DATE) AS day FROM {{ orders }}", lambda t: scan(root, t)
    )
    orders = con.execute(
        f"SELECT * FROM ({orders_sql}) WHERE day < ? AND day >= ?",
        [end.date(), day - dt.timedelta(days=order_days)],
    ).df()
    orders["day"] = pd.to_datetime(orders["day"]).dt.date
    return Inputs(day, profiles, previous, triggers, orders)


def entrants(journey: Journey, inputs: Inputs) -> list[str]:
    """Who qualifies to enter on the night (pure): moved into one of the entry stages since the
    previous scoring date, or had one of the entry triggers sent that day."""
    if journey.entry.trigger:
        t = inputs.triggers
        return sorted(t.loc[t["trigger"].isin(journey.entry.trigger), "customer_id"].unique())
    p = inputs.profiles
    now = p.loc[p["lifecycle_stage"].isin(journey.entry.lifecycle_stage), "customer_id"]
    before = inputs.previous_stage.reindex(now).isin(journey.entry.lifecycle_stage)
    return sorted(now[~before.to_numpy()])


def branch_results(con, journey: Journey, profiles: pd.DataFrame) -> dict[str, dict[str, bool]]:
    """Each branch step's condition, evaluated in DuckDB on the profile columns."""
    out = {}
    con.register("journey_profiles", profiles)
    try:
        for step in journey.steps:
            if step.branch is not None:
                rows = con.execute(
                    f"SELECT customer_id, coalesce(({step.branch.if_}), false) FROM journey_profiles"
                ).fetchall()
                out[step.id] = {c: bool(ok) for c, ok in rows}
    finally:
        con.unregister("journey_profiles")
    return out


def night(settings, con, inputs: Inputs, state: pd.DataFrame, names: list[str] | None = None):
    """Every journey (or `names`) advanced by one night: (state, events) of all of them (pure but for
    evaluating branch conditions in `con`)."""
    states, events = [], []
    for name, journey in sorted(journeys().items()):
        if names and name not in names:
            continue
        s, e = engine.advance(
            journey,
            state,
            entrants(journey, inputs),
            inputs.profiles,
            inputs.orders,
            inputs.day,
            branch_results(con, journey, inputs.profiles),
            settings.activation.global_holdout,
        )
        states.append(s)
        events.append(e)
    kept = state[~state["journey"].isin([n for n in journeys() if not names or n in names])]
    return pd.concat([kept, *states], ignore_index=True), pd.concat(events, ignore_index=True)


def previous_state(settings, con, day: dt.date) -> pd.DataFrame:
    from p13n.lake.duck import scan, table_exists

    root = settings.lake_root
    if not table_exists(root, GOLD_JOURNEY_STATE):
        return engine.empty_state()
    t = scan(root, GOLD_JOURNEY_STATE)
    last = con.execute(f"SELECT max(as_of_date) FROM {t} WHERE as_of_date < ?", [day]).fetchone()[0]
    if last is None:
        return engine.empty_state()
    state = con.execute(f"SELECT * EXCLUDE (as_of_date) FROM {t} WHERE as_of_date = ?", [last]).df()
    for c in ("entered", "step_since", "left"):
        state[c] = [v.date() if isinstance(v, pd.Timestamp) else v for v in state[c]]
        state[c] = state[c].where(state[c].notna(), None)
    return state[engine.STATE_COLUMNS]


def run_night(settings, day: dt.date) -> dict:
    """Advance every journey through `day` and write the date's state, events and sends
    (export_audiences' measure task checks them against their expectation suites)."""
    import pyarrow as pa

    from p13n.lake.duck import duckdb_connection, replace_rows, scan, table_exists
    from p13n.measurement.sends import HELD_OUT, Sends, record_many

    con = duckdb_connection(settings=settings)
    if (
        not table_exists(settings.lake_root, GOLD_SEGMENTS)
        or not con.execute(
            f"SELECT count(*) FROM {scan(settings.lake_root, GOLD_SEGMENTS)} WHERE as_of_date = ?", [day]
        ).fetchone()[0]
    ):
        raise NotScored(f"journeys {day}: gold.segments has no rows for {day} (score the customers first)")
    inputs = read_inputs(settings, con, day)
    state, events = night(settings, con, inputs, previous_state(settings, con, day))
    events = with_cadence(settings, con, events, day)
    when = f"as_of_date = '{day.isoformat()}'"
    state_t = pa.Table.from_pandas(state.assign(as_of_date=day), schema=_state_schema(), preserve_index=False)
    events_t = pa.Table.from_pandas(
        events.assign(as_of_date=day), schema=_event_schema(), preserve_index=False
    )
    replace_rows(settings, GOLD_JOURNEY_STATE, state_t, when, partition_by=["as_of_date"])
    replace_rows(settings, GOLD_JOURNEY_EVENTS, events_t, when, partition_by=["as_of_date"])
    nights = []
    for name in journeys():
        ev = events[events["journey"] == name]
        # The experiment is intention-to-treat: everyone who entered (messaged or, without consent,
        # not) against everyone held out; the messages themselves are logged per channel.
        entered, held = (ev.loc[ev["event"] == e, "customer_id"] for e in ("entered", HELD_OUT))
        nights.append(Sends("journey", name, "journey", "any", held_out=held, entered=entered))
        for channel in ("email", "sms", "push"):
            sent = ev.loc[(ev["event"] == "sent") & (ev["channel"] == channel), "customer_id"]
            nights.append(Sends("journey", name, channel, channel, sent=sent))
    record_many(settings, day, nights)
    counts = events.groupby(["journey", "event"]).size() if len(events) else pd.Series(dtype=int)
    per = {}
    for (journey, what), n in counts.items():
        per.setdefault(journey, {})[what] = int(n)
    active = state[state["status"] == engine.ACTIVE].groupby("journey").size()
    return {j: per.get(j, {}) | {"active": int(active.get(j, 0))} for j in journeys()}


def with_cadence(
    settings, con, events: pd.DataFrame, day: dt.date, simulated: list[pd.DataFrame] | None = None
) -> pd.DataFrame:
    """The night's messages through the contact ledger (`p13n.cadence`): a send over a cap (or, by
    the ledger's record, without consent, or suppressed) becomes `suppressed` with the reason; the
    ledger keeps each. `simulated`: a what-if's decisions so far (nothing is written; this night's are
    appended to it)."""
    from p13n.cadence.ledger import candidates_frame, hold_back, plan
    from p13n.measurement.sends import send_time

    sends = events[events["event"] == "sent"]
    rows = plan(
        settings,
        candidates_frame(sends["customer_id"], sends["channel"], "journey", sends["journey"], sends["step"]),
        send_time(day),
        con,
        programs=[("journey", name) for name in journeys()],
        write=simulated is None,
        extra=pd.concat(simulated, ignore_index=True) if simulated else None,
    )
    if simulated is not None and len(rows):
        simulated.append(rows)
    return hold_back(
        events,
        rows,
        ("journey", "customer_id", "step"),
        sent=("event", "sent"),
        held="suppressed",
        reason="detail",
    )


def _state_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("journey", pa.string()),
            ("customer_id", pa.string()),
            ("status", pa.string()),
            ("step", pa.string()),
            ("entered", pa.date32()),
            ("step_since", pa.date32()),
            ("left", pa.date32()),
            ("as_of_date", pa.date32()),
        ]
    )


def _event_schema():
    import pyarrow as pa

    return pa.schema([(c, pa.string()) for c in engine.EVENT_COLUMNS] + [("as_of_date", pa.date32())])


def simulate(settings, name: str, start: dt.date, end: dt.date) -> tuple[list[dict], pd.DataFrame]:
    """Replay the lake's scoring dates from `start` to `end` through journey `name`, from an empty
    state, writing nothing: (per-step counts, every event with its date). Its messages go through the
    contact ledger's rules against what the ledger holds and what the replay decided before."""
    from p13n.lake.duck import duckdb_connection, scan

    journey = journeys()[name]
    con = duckdb_connection(settings=settings)
    days = [
        r[0]
        for r in con.execute(
            f"SELECT DISTINCT as_of_date FROM {scan(settings.lake_root, GOLD_SEGMENTS)} "
            "WHERE as_of_date BETWEEN ? AND ? ORDER BY 1",
            [start, end],
        ).fetchall()
    ]
    state, all_events, decided = engine.empty_state(), [], []
    for day in days:
        inputs = read_inputs(settings, con, day)
        state, ev = night(settings, con, inputs, state, [name])
        ev = with_cadence(settings, con, ev, day, simulated=decided)  # caps as the nightly would apply
        all_events.append(ev.assign(as_of_date=day))
    events = (
        pd.concat(all_events, ignore_index=True) if all_events else pd.DataFrame(columns=engine.EVENT_COLUMNS)
    )
    return engine.step_counts(journey, events), events
