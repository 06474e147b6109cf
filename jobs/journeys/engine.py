"""The journey engine: one night's move of every customer through one journey (pure).

`advance(journey, state, entrants, profiles, orders, day)` takes the journey's state as the previous
night left it and returns the state after `day` and the events of `day`. Nothing else is read, so a
rerun of a night from the same inputs gives the same rows, and `p13n journeys simulate` replays
history through the very code the nightly runs.

A customer's state: `status` (active, held_out, completed, exited), the `step` they are at, when they
`entered`, since when they are at that step (`step_since`), and when they `left` (held out, completed
or exited). Nights are dates: a customer entering on day D (at the end of it) is messaged that night;
a wait of N days moves on the night of D + N; an order on day D' > D counts as a conversion.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd

from p13n.journeys.model import END, Journey
from p13n.measurement.sends import GLOBAL_SALT, in_holdout

STATE_COLUMNS = ["journey", "customer_id", "status", "step", "entered", "step_since", "left"]
EVENT_COLUMNS = ["journey", "customer_id", "step", "event", "channel", "template", "detail"]
ACTIVE, HELD_OUT, COMPLETED, EXITED = "active", "held_out", "completed", "exited"


def empty_state() -> pd.DataFrame:
    return pd.DataFrame(columns=STATE_COLUMNS)


def advance(
    journey: Journey,
    state: pd.DataFrame,
    entrants: list[str],
    profiles: pd.DataFrame,
    orders: pd.DataFrame,
    day: dt.date,
    branch_results: dict[str, dict[str, bool]] | None = None,
    global_holdout: float = 0.0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(state after `day`, events of `day`). `profiles`: customer_id and `consent_<channel>` (granted
    or not); `orders`: customer_id, day (dates of orders up to `day`); `branch_results`: per branch
    step, each customer's answer to its condition (customers absent: False)."""
    rows = {
        r.customer_id: r._asdict() for r in state[state["journey"] == journey.name].itertuples(index=False)
    }
    events: list[dict] = []
    consent = profiles.set_index("customer_id") if len(profiles) else pd.DataFrame()
    bought = orders.groupby("customer_id")["day"].apply(sorted).to_dict() if len(orders) else {}

    def event(c, step, what, channel=None, template=None, detail=None):
        events.append(
            {
                "journey": journey.name,
                "customer_id": c,
                "step": step,
                "event": what,
                "channel": channel,
                "template": template,
                "detail": detail,
            }
        )

    for c in dict.fromkeys(entrants):
        was = rows.get(c)
        if was and was["status"] == ACTIVE:
            continue
        if was and (journey.reentry_days is None or (day - was["left"]).days < journey.reentry_days):
            continue  # left the journey: back only `reentry_days` later
        first = journey.steps[0].id
        if in_holdout(GLOBAL_SALT, global_holdout, c) or in_holdout(
            f"journey:{journey.name}", journey.holdout, c
        ):
            rows[c] = _row(journey.name, c, HELD_OUT, None, day, day, day)
            event(c, None, "held_out")
            continue
        rows[c] = _row(journey.name, c, ACTIVE, first, day, day, None)
        event(c, first, "entered")

    for c, r in rows.items():
        if r["status"] != ACTIVE:
            continue
        orders_after = [d for d in bought.get(c, []) if r["entered"] < d <= day]
        if journey.exit_on_conversion and orders_after:
            r.update(status=EXITED, left=day)
            event(c, r["step"], "converted", detail=f"ordered on {orders_after[0]}")
            continue
        for _ in range(len(journey.steps) + 1):  # each step at most once a night
            step = journey.step(r["step"])
            nxt = None
            if step.kind == "send":
                granted = c in consent.index and consent.at[c, f"consent_{step.send}"] == "granted"
                if granted:
                    event(c, step.id, "sent", step.send, step.template)
                else:
                    event(c, step.id, "suppressed", step.send, step.template, f"no {step.send} consent")
                nxt = journey.after(step)
            elif step.kind == "wait_days":
                if (day - r["step_since"]).days >= step.wait_days:
                    event(c, step.id, "waited")
                    nxt = journey.after(step)
            elif step.kind == "wait_for":
                since = [d for d in bought.get(c, []) if r["step_since"] < d <= day]
                if since:
                    event(c, step.id, "order", detail=f"ordered on {since[0]}")
                    nxt = step.then
                elif (day - r["step_since"]).days >= step.timeout_days:
                    event(c, step.id, "timeout")
                    nxt = step.timeout
            else:  # branch
                yes = bool((branch_results or {}).get(step.id, {}).get(c, False))
                nxt = step.branch.then if yes else step.branch.else_
                event(c, step.id, "branched", detail=f"{step.branch.if_}: {'yes' if yes else 'no'}")
            if nxt is None:  # waiting
                break
            if nxt == END:
                r.update(status=COMPLETED, step=None, left=day)
                event(c, step.id, "completed")
                break
            r.update(step=nxt, step_since=day)
            if journey.step(nxt).kind in ("wait_days", "wait_for"):
                event(c, nxt, "waiting")
                break  # a wait starts tonight and is checked from tomorrow on
    out = pd.DataFrame(list(rows.values()), columns=STATE_COLUMNS) if rows else empty_state()
    return out, pd.DataFrame(events, columns=EVENT_COLUMNS)


def _row(journey, c, status, step, entered, since, left) -> dict:
    return {
        "journey": journey,
        "customer_id": c,
        "status": status,
        "step": step,
        "entered": entered,
        "step_since": since,
        "left": left,
    }


def step_counts(journey: Journey, events: pd.DataFrame) -> list[dict]:
    """Per step of the journey: how many entered it, were sent, suppressed, converted, completed."""
    ev = events[events["journey"] == journey.name]
    out = [
        {
            "step": "(entry)",
            "entered": int((ev["event"] == "entered").sum()),
            "held_out": int((ev["event"] == "held_out").sum()),
        }
    ]
    for s in journey.steps:
        here = ev[ev["step"] == s.id]
        out.append(
            {
                "step": s.id,
                "kind": s.kind + (f" {s.send}" if s.send else ""),
                "sent": int((here["event"] == "sent").sum()),
                "suppressed": int((here["event"] == "suppressed").sum()),
                "capped": int(((here["event"] == "suppressed") & _detail(here).str.contains("cap")).sum()),
                "converted": int((here["event"].isin(["converted", "order"])).sum()),
                "completed": int((here["event"] == "completed").sum()),
                "passed": int(here["customer_id"].nunique()),
            }
        )
    return out


def _detail(events: pd.DataFrame) -> pd.Series:
    if "detail" not in events:
        return pd.Series("", index=events.index)
    return events["detail"].fillna("").astype(str)
