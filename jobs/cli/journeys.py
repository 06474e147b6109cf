"""`journeys`: the journeys of conf/journeys.yaml, described and simulated on the lake's history."""

from __future__ import annotations

import argparse
import datetime as dt
import json

from p13n.cli.common import CommandError, iso_date


def _journey(name: str):
    from p13n.journeys.model import JourneyError, journeys

    try:
        known = journeys()
    except JourneyError as e:
        raise CommandError(str(e), 2) from None
    if name not in known:
        raise CommandError(
            f"no journey {name!r} in conf/journeys.yaml (declared: {', '.join(sorted(known))})", 2
        )
    return known[name]


def _describe(step) -> str:
    if step.kind == "send":
        what = f"send {step.send} '{step.template}'"
    elif step.kind == "wait_days":
        what = f"wait {step.wait_days} days"
    elif step.kind == "wait_for":
        what = f"wait up to {step.timeout_days} days for an order: then {step.then}, else {step.timeout}"
    else:
        what = f"if {step.branch.if_}: {step.branch.then}, else {step.branch.else_}"
    return what + (f" → {step.then}" if step.then and step.kind != "wait_for" else "")


def _cmd_list(_args: argparse.Namespace) -> int:
    from p13n.journeys.model import JourneyError, journeys

    try:
        known = journeys()
    except JourneyError as e:
        raise CommandError(str(e), 2) from None
    for name, j in sorted(known.items()):
        entry = (
            f"moves into {', '.join(j.entry.lifecycle_stage)}"
            if j.entry.lifecycle_stage
            else f"trigger {', '.join(j.entry.trigger)}"
        )
        print(f"{name:<16} {len(j.steps)} steps, enters on {entry}, holdout {j.holdout:.0%}: {j.description}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    j = _journey(args.name)
    entry = (
        j.entry.lifecycle_stage and f"moved into {', '.join(j.entry.lifecycle_stage)} since the last scoring"
    )
    print(f"{j.name}: {j.description}")
    print(f"  entry: {entry or 'trigger ' + ', '.join(j.entry.trigger) + ' sent that day'}")
    print(
        f"  holdout: {j.holdout:.0%} (a stable hash; measured as journey:{j.name} in gold.experiment_results)"
    )
    reentry = f"after {j.reentry_days} days" if j.reentry_days else "never"
    print(f"  re-entry: {reentry}; an order ends it: {'yes' if j.exit_on_conversion else 'no'}")
    for i, s in enumerate(j.steps, 1):
        print(f"  {i}. {s.id}: {_describe(s)}")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from p13n.config import get_settings
    from p13n.journeys.pipeline import simulate
    from p13n.lake.duck import table_exists
    from p13n.lake.tables import GOLD_SEGMENTS

    _journey(args.name)
    start, end = dt.date.fromisoformat(args.start), dt.date.fromisoformat(args.end)
    if end < start:
        raise CommandError(f"--to {end} is before --from {start}", 2)
    settings = get_settings()
    if not table_exists(settings.lake_root, GOLD_SEGMENTS):
        raise CommandError("gold.segments does not exist yet: run the nightly first (make run)", 1)
    counts, events = simulate(settings, args.name, start, end)
    nights = int(events["as_of_date"].nunique()) if len(events) else 0
    if args.json:
        print(
            json.dumps({"journey": args.name, "from": str(start), "to": str(end), "steps": counts}, indent=1)
        )
        return 0
    plural = "s" if nights != 1 else ""
    print(f"{args.name}, {start} … {end}: {nights} night{plural} replayed from the lake (nothing written)")
    head = counts[0]
    print(f"  entered {head['entered']:,}, held out {head['held_out']:,}")
    width = max(len(c["step"]) for c in counts[1:])
    for c in counts[1:]:
        bar = "█" * min(40, round(40 * c["passed"] / max(1, head["entered"])))
        print(
            f"  {c['step']:<{width}} {c['kind']:<12} reached {c['passed']:>7,}  sent {c['sent']:>7,}  "
            f"suppressed {c['suppressed']:>6,} (capped {c['capped']:>5,})  "
            f"converted {c['converted']:>6,}  {bar}"
        )
    return 0


def register(sub) -> None:
    """Add this group's commands to the `p13n` parser."""
    p = sub.add_parser(
        "journeys",
        help="the journeys of conf/journeys.yaml: list, show, simulate on the lake's history",
        description="Journeys are multi-step programmes (send, wait, wait for an order, branch) declared "
        "in conf/journeys.yaml and advanced nightly by export_audiences into gold.journey_state and "
        "gold.journey_events.",
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    verbs.add_parser("list", help="one line per journey").set_defaults(handler=_cmd_list)
    s = verbs.add_parser("show", help="a journey's entry, holdout and steps")
    s.add_argument("name")
    s.set_defaults(handler=_cmd_show)
    m = verbs.add_parser(
        "simulate",
        help="replay the lake's scoring dates through a journey and count each step (writes nothing)",
    )
    m.add_argument("name")
    m.add_argument("--from", dest="start", type=iso_date, required=True, metavar="YYYY-MM-DD")
    m.add_argument("--to", dest="end", type=iso_date, required=True, metavar="YYYY-MM-DD")
    m.add_argument("--json", action="store_true", help="the counts as JSON")
    m.set_defaults(handler=_cmd_simulate)
