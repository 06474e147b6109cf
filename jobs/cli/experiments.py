"""`experiments`: what the holdouts and A/B tests measured (gold.experiment_results)."""

from __future__ import annotations

import argparse
import json

from p13n.cli.common import CommandError, iso_date

SHOWN = ["experiment", "arm", "baseline_arm", "metric", "units", "baseline_units", "mean", "baseline_mean"]
SHOWN += ["lift", "ci_low", "ci_high", "p_value", "cuped_lift", "cuped_ci_low", "cuped_ci_high"]
SHOWN += ["seq_p_value", "srm_p_value", "sample_ratio_mismatch", "window_complete", "note"]


def _results(args: argparse.Namespace):
    from p13n.config import get_settings
    from p13n.lake.duck import duckdb_connection, scan, table_exists
    from p13n.lake.tables import GOLD_EXPERIMENT_RESULTS

    settings = get_settings()
    root = settings.lake_root
    if not table_exists(root, GOLD_EXPERIMENT_RESULTS):
        raise CommandError(
            f"{GOLD_EXPERIMENT_RESULTS} does not exist yet: run the nightly (make run) or "
            "`p13n experiments measure --date YYYY-MM-DD`",
            1,
        )
    con = duckdb_connection(settings=settings)
    t = scan(root, GOLD_EXPERIMENT_RESULTS)
    day = args.date or con.execute(f"SELECT max(as_of_date) FROM {t}").fetchone()[0]
    frame = con.execute(
        f"SELECT * FROM {t} WHERE as_of_date = ? ORDER BY experiment, arm, metric", [day]
    ).df()
    if frame.empty:
        raise CommandError(f"{GOLD_EXPERIMENT_RESULTS} has no rows for {day}", 1)
    if args.experiment:
        known = sorted(frame["experiment"].unique())
        frame = frame[frame["experiment"] == args.experiment]
        if frame.empty:
            raise CommandError(
                f"no experiment {args.experiment!r} on {day} (measured: {', '.join(known)})", 1
            )
    return day, frame


def _cmd_report(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    day, frame = _results(args)
    if args.json:
        print(json.dumps(frame[SHOWN].to_dict("records"), default=str, indent=1))
        return 0
    import sys

    console = Console() if sys.stdout.isatty() else Console(width=120)  # a file or pipe gets whole rows
    for (name, arm), rows in frame.groupby(["experiment", "arm"], sort=True):
        first = rows.iloc[0]
        table = Table(
            title=f"{name} · {day}: {arm} ({int(first['units']):,}) vs {first['baseline_arm']} "
            f"({int(first['baseline_units']):,})",
            title_justify="left",
        )
        for col in (
            "metric",
            arm[:12],
            first["baseline_arm"][:12],
            "lift [95% CI]",
            "p",
            "CUPED lift",
            "seq. p",
        ):
            table.add_column(col, justify="left" if col == "metric" else "right", no_wrap=True)
        notes, why = [], {}
        for _, r in rows.iterrows():
            fmt = "{:.4f}" if r["metric"] in ("conversion", "orders") else "{:,.2f}"
            lift = r["lift"]
            if lift is None or lift != lift:
                why.setdefault(r["note"] or "no estimate", []).append(r["metric"])
            table.add_row(
                r["metric"],
                fmt.format(r["mean"]) if r["mean"] == r["mean"] else "-",
                fmt.format(r["baseline_mean"]) if r["baseline_mean"] == r["baseline_mean"] else "-",
                "-"
                if lift is None or lift != lift
                else f"{lift:+.1%} [{r['ci_low']:+.1%}, {r['ci_high']:+.1%}]",
                "-" if r["p_value"] != r["p_value"] else f"{r['p_value']:.3f}",
                "-" if r["cuped_lift"] != r["cuped_lift"] else f"{r['cuped_lift']:+.1%}",
                "-" if r["seq_p_value"] != r["seq_p_value"] else f"{r['seq_p_value']:.3f}",
            )
        console.print(table)
        notes += [f"{', '.join(metrics)}: no estimate, {reason}" for reason, metrics in why.items()]
        if first["window_complete"] < 1:
            notes.append(
                f"interim: {first['window_complete']:.0%} of the {int(first['window_days'])}-day window "
                "observed on average; before it ends, act on the sequential p-value only"
            )
        if first["sample_ratio_mismatch"]:
            notes.append(
                f"SAMPLE RATIO MISMATCH (p={first['srm_p_value']:.2g}): the split differs from its design; "
                "do not trust these results"
            )
        for n in notes:
            console.print(f"  {n}", soft_wrap=True, highlight=False)
    return 0


def _cmd_measure(args: argparse.Namespace) -> int:
    from p13n.measurement.tasks import measure_task

    measure_task(args.date)
    return 0


def register(sub) -> None:
    """Add this group's commands to the `p13n` parser."""
    p = sub.add_parser(
        "experiments",
        help="what the holdouts and A/B tests measured (gold.experiment_results)",
        description="Audience and trigger holdouts (silver.sends) and the API's experiments "
        "(silver.exposures), measured nightly by export_audiences: per arm and metric, the lift against "
        "the baseline arm with its 95%% interval, p-value, CUPED and sequential variants, and a "
        "sample-ratio check.",
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    r = verbs.add_parser("report", help="print the results of a date (default: the latest measured)")
    r.add_argument(
        "--experiment", help="one experiment, e.g. audience:vip_win_back or api:personalized_vs_popular"
    )
    r.add_argument("--date", type=iso_date, metavar="YYYY-MM-DD")
    r.add_argument("--json", action="store_true", help="the rows as JSON")
    r.set_defaults(handler=_cmd_report)
    m = verbs.add_parser("measure", help="measure every experiment for a date and write its results")
    m.add_argument("--date", type=iso_date, required=True, metavar="YYYY-MM-DD")
    m.set_defaults(handler=_cmd_measure)
