"""The run report: one self-contained HTML page per run date, with plots, in `<data_dir>/reports/`.

`build(settings, day)` writes `reports/<day>/index.html` and refreshes `reports/index.html` (every
report, newest first). The `run_report` DAG writes it at the end of each nightly; `p13n report`
writes it by hand; the Airflow UI links to it (the `p13n` plugin serves the folder at /p13n/reports).
"""

from __future__ import annotations

import datetime as dt
import html
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from p13n.config import Settings, get_settings
from p13n.report import charts, data


@dataclass
class Section:
    title: str
    anchor: str
    summary: str = ""
    figures: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    status: str = "ok"  # ok, warn, fail, missing


def build(settings: Settings | None, day: dt.date | str, progress=None) -> Path:
    """Write the report of `day` and the index of reports; returns the report's path."""
    from p13n.alerts import read_alerts
    from p13n.faults import fail_point
    from p13n.lake.duck import duckdb_connection

    settings = settings or get_settings()
    day = day if isinstance(day, dt.date) else dt.date.fromisoformat(day)
    fail_point("report.build")
    con, root = duckdb_connection(), settings.lake_root
    sections = [
        _ingestion(data.ingestion(con, root, day)),
        _validations(data.validations(con, root, day)),
        _identity(data.identity(con, root, day)),
        _segments(data.segments(con, root, day)),
        _models(data.models(con, root, day)),
        _recommendations(data.recommendations(con, root, day)),
        _delivery(data.publish_and_exports(con, root, day)),
        _experiments(data.experiments(con, root, day)),
        _attribution(data.attribution(con, root, day)),
        _journeys(data.journeys(con, root, day), data.journey_steps(con, root, day)),
        _cadence(data.cadence(con, root, day)),
    ]
    recent = dt.datetime.now(dt.UTC) - dt.timedelta(hours=24)
    alerts = [
        a
        for a in read_alerts(settings)
        if str(a.get("logical_date") or "").startswith(day.isoformat())
        or dt.datetime.fromisoformat(a["at"]) >= recent
    ]
    out_dir = settings.data_dir / "reports" / day.isoformat()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "index.html"
    _write(path, _page(day, sections, alerts[-20:], settings))
    _write(settings.data_dir / "reports" / "index.html", _index(settings.data_dir / "reports"))
    if progress:
        bad = [s.title for s in sections if s.status in ("fail", "warn")]
        progress(f"run report for {day}: {path}" + (f" (look at: {', '.join(bad)})" if bad else ""))
    return path


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # a reader (the Airflow UI) never sees half a page


# --- sections -----------------------------------------------------------------------------------------


def _table(df: pd.DataFrame | None, formats: dict[str, str] | None = None, max_rows: int = 60) -> str:
    if df is None or df.empty:
        return "<p class=muted>no rows</p>"
    formats = formats or {}
    view = df.head(max_rows).copy()
    for col in view.columns:
        fmt = formats.get(col)
        if fmt:
            view[col] = [("" if pd.isna(v) else format(v, fmt)) for v in view[col]]
        elif pd.api.types.is_integer_dtype(view[col]):
            view[col] = [f"{v:,}" for v in view[col]]
        elif pd.api.types.is_float_dtype(view[col]):
            view[col] = ["" if pd.isna(v) else f"{v:,.4g}" for v in view[col]]
    more = f"<p class=muted>{len(df) - max_rows:,} more rows not shown</p>" if len(df) > max_rows else ""
    return view.to_html(index=False, border=0, classes="t", na_rep="", escape=True) + more


def _missing(title: str, anchor: str, what: str) -> Section:
    return Section(title, anchor, f"{what} has not run for this date yet.", status="missing")


def _ingestion(df) -> Section:
    if df is None or df.empty:
        return _missing("Ingestion", "ingestion", "Ingestion")
    q, n = int(df["quarantined"].sum()), int(df["read"].sum())
    worst = df.sort_values("quarantine_share").iloc[-1]
    failed = df[df["expectations_failed"] > 0]
    status = "fail" if len(failed) else ("warn" if worst["quarantine_share"] > 0.05 else "ok")
    summary = (
        f"{len(df)} sources, {n:,} rows read, {int(df['silver'].sum()):,} promoted to silver, "
        f"{q:,} quarantined ({q / max(n, 1):.2%}); highest quarantine share: {worst['source']} "
        f"({worst['quarantine_share']:.2%})."
    )
    if len(failed):
        summary += f" Expectations failed on: {', '.join(failed['source'])}."
    table = df[
        [
            "source",
            "read",
            "silver",
            "quarantined",
            "quarantine_share",
            "top_reasons",
            "expectations_passed",
            "expectations_failed",
        ]
    ]
    return Section(
        "Ingestion and quarantine",
        "ingestion",
        summary,
        [charts.ingestion(df)],
        [_table(table, {"quarantine_share": ".2%"})],
        status,
    )


def _validations(df) -> Section:
    if df is None or df.empty:
        return _missing("Expectations", "expectations", "Validation")
    bad = df[~df["success"]]
    warned = df[df["warnings"].fillna("") != ""]
    summary = (
        f"{len(df)} tables validated with Great Expectations: {int(df['passed'].sum()):,} expectations "
        f"passed, {int(df['failed'].sum()):,} failed; {len(bad)} tables failed a critical expectation, "
        f"{len(warned)} have warnings."
    )
    status = "fail" if len(bad) else ("warn" if len(warned) else "ok")
    return Section("Expectations", "expectations", summary, [], [_table(df)], status)


def _identity(d) -> Section:
    if not d:
        return _missing("Identity resolution", "identity", "Identity resolution")
    runs = d["runs"]
    last = runs.iloc[-1]
    summary = (
        f"{int(last['records'] or 0):,} identity records resolved into {int(last['customers'] or 0):,} "
        "customers."
    )
    change_cols = sorted(c for c in runs.columns if c.startswith("changes: "))
    if change_cols:
        summary += (
            " Changes on the day: "
            + ", ".join(f"{c[9:]} {int(last[c]):,}" for c in change_cols if pd.notna(last[c]))
            + "."
        )
    if pd.notna(last["f1"]):
        summary += (
            f" Against the generator's truth: precision {last['precision']:.4f}, recall {last['recall']:.4f}."
        )
    figs = [charts.cluster_sizes(d["cluster_sizes"])] if d["cluster_sizes"] is not None else []
    return Section("Identity resolution", "identity", summary, figs, [_table(runs)])


def _segments(d) -> Section:
    if not d or d["sizes"]["lifecycle_stage"].empty:
        return _missing("Segments", "segments", "Scoring")
    sizes = d["sizes"]
    names = {
        "lifecycle_stage": "Lifecycle stage",
        "rfm_segment": "RFM segment",
        "persona": "Cluster persona",
        "churn_risk_band": "Churn risk band",
    }
    figs = [charts.bars(df, "value", "customers", names[col]) for col, df in sizes.items() if not df.empty]
    total = int(sizes["lifecycle_stage"]["customers"].sum())
    if d["moves"] is not None:
        moves = d["moves"]
        moved = int(moves.loc[moves["before"] != moves["after"], "customers"].sum())
        summary = (
            f"{total:,} customers scored; {moved:,} changed lifecycle stage since {d['previous']} "
            f"(heatmap: before → now)."
        )
        figs.append(charts.movements(moves))
    else:
        summary = (
            f"{total:,} customers scored. No earlier scoring to compare with: movements appear from the "
            "next run."
        )
    return Section("Segments", "segments", summary, figs)


def _models(df) -> Section:
    if df is None or df.empty:
        return _missing("Models", "models", "Model training")
    lines = []
    for model, g in df.groupby("model"):
        promoted = "promoted to champion" if g["promoted"].iloc[0] else "kept the champion"
        prev = g["previous_date"].dropna()
        lines.append(
            f"{model} v{g['version'].iloc[0]}: {promoted}"
            + (f", compared with {prev.iloc[0]}" if len(prev) else ", no earlier run")
        )
    table = df[["model", "metric", "value", "previous", "change"]]
    return Section(
        "Models against the previous run", "models", "; ".join(lines) + ".", [], [_table(table, max_rows=400)]
    )


def _recommendations(d) -> Section:
    if not d or d["lists"].empty:
        return _missing("Recommendations", "recommendations", "Recommendation")
    lists, per_item = d["lists"], d["per_item"]
    pers = lists[lists["list_type"] == "personalized"]
    parts = []
    if len(pers) and d["customers"]:
        parts.append(
            f"{int(pers['customers'].iloc[0]):,} of {d['customers']:,} customers "
            f"({pers['customers'].iloc[0] / d['customers']:.1%}) have a personalized list"
        )
    if d["catalog"]:
        parts.append(
            f"it uses {len(per_item):,} of {d['catalog']:,} catalog items "
            f"({len(per_item) / d['catalog']:.1%})"
        )
    if len(per_item):
        top = per_item.head(max(1, len(per_item) // 10)).sum() / per_item.sum()
        parts.append(f"the top 10% of those items fill {top:.1%} of the slots")
    figs = [
        charts.bars(lists, "list_type", "customers", "Customers per list"),
        charts.bars(d["sources"], "source", "rows", "Personalized slots by source", charts.GREEN),
    ]
    if len(per_item):
        figs.append(charts.item_concentration(per_item, d["catalog"]))
    return Section(
        "Recommendation coverage", "recommendations", "; ".join(parts) + ".", figs, [_table(lists)]
    )


def _delivery(d: dict) -> Section:
    tables, parts, status = [], [], "ok"
    pub = d["publish"]
    if pub is not None and len(pub):
        last = pub.iloc[-1]
        parts.append(
            f"published serving version {last['version']} ({int(last['keys']):,} keys, "
            f"{last['bytes'] / 1e6:,.1f} MB, {last['seconds']:.0f}s)"
        )
        tables.append("<h3>Serving store</h3>" + _table(pub.drop(columns=["keys_by_kind"])))
    else:
        parts.append("nothing published for this date")
        status = "warn"
    exp = d["exports"]
    if exp is not None and len(exp):
        failed = exp[~exp["status"].str.startswith("succeeded")]  # "succeeded with rejections" counts
        parts.append(
            f"{len(exp)} audience exports, {int(exp['added'].sum() + exp['updated'].sum()):,} profiles sent"
            + (f", {len(failed)} not succeeded" if len(failed) else "")
        )
        status = "fail" if len(failed) else status
        tables.append("<h3>Audience exports</h3>" + _table(exp, {"seconds": ".1f"}))
    wh = d["warehouse"]
    if wh is not None and len(wh):
        parts.append(f"{len(wh)} tables synced to Snowflake ({int(wh['rows'].sum()):,} rows)")
        tables.append("<h3>Snowflake</h3>" + _table(wh, {"seconds": ".1f"}))
    return Section("Publish and exports", "delivery", "; ".join(parts) + ".", [], tables, status)


def _experiments(df) -> Section:
    if df is None or df.empty:
        return _missing("Experiments", "experiments", "Measurement (export_audiences' measure task)")
    revenue = df[df["metric"] == "revenue"]
    estimated = revenue[revenue["lift"].notna()]
    significant = estimated[(estimated["ci_low"] > 0) | (estimated["ci_high"] < 0)]
    srm = df.loc[df["sample_ratio_mismatch"].fillna(False), "experiment"].unique()
    parts = [
        f"{df['experiment'].nunique()} experiments and holdouts, {len(revenue)} comparisons; "
        f"{len(significant)} with a revenue lift whose 95% interval excludes 0"
    ]
    young = revenue[revenue["window_complete"] < 1]
    if len(young):
        parts.append(
            f"{len(young)} still inside their {int(revenue['window_days'].iloc[0])}-day window "
            f"(on average {young['window_complete'].mean():.0%} of it observed): read them as interim"
        )
    if len(srm):
        parts.append(f"sample ratio mismatch in {', '.join(srm)}: their split is broken, do not trust them")
    figs = []
    plotted = estimated.assign(
        label=lambda d: d["experiment"] + " · " + d["arm"],
        low=lambda d: d["cuped_ci_low"].fillna(d["ci_low"]),
        high=lambda d: d["cuped_ci_high"].fillna(d["ci_high"]),
        lift=lambda d: d["cuped_lift"].fillna(d["lift"]),
    )
    if len(plotted):
        figs.append(charts.lifts(plotted, "Revenue per customer: lift against the baseline arm (CUPED)"))
    shown = df[
        [
            "experiment",
            "arm",
            "baseline_arm",
            "metric",
            "units",
            "baseline_units",
            "mean",
            "baseline_mean",
            "lift",
            "ci_low",
            "ci_high",
            "p_value",
            "cuped_lift",
            "seq_p_value",
            "srm_p_value",
            "window_complete",
        ]
    ]
    pct = {c: "+.1%" for c in ("lift", "ci_low", "ci_high", "cuped_lift")}
    table = _table(
        shown, pct | {"p_value": ".3f", "seq_p_value": ".3f", "srm_p_value": ".3f", "window_complete": ".0%"}
    )
    status = "warn" if len(srm) else "ok"
    return Section("Experiments", "experiments", "; ".join(parts) + ".", figs, [table], status)


def _attribution(df) -> Section:
    if df is None or df.empty:
        return _missing("Attribution", "attribution", "Attribution (score_customers' attribution task)")
    first = df.iloc[0]
    markov = df[df["model"] == "markov"].sort_values("share", ascending=False)
    last = df[df["model"] == "last_touch"].set_index("channel")["share"]
    parts = [
        f"{int(first['conversions_in_period']):,} conversions from {first['period_start']:%Y-%m-%d} to "
        f"{first['period_end']:%Y-%m-%d}, {int(first['unattributed_conversions']):,} of them without a "
        f"touch before (not credited); {int(first['open_journeys']):,} journeys not converted yet"
    ]
    if len(markov):
        parts.append(
            "Markov credit: "
            + ", ".join(
                f"{r.channel} {r.share:.0%} (last touch {last.get(r.channel, 0.0):.0%})"
                for r in markov.itertuples()
            )
        )
    wide = df.pivot_table(index="channel", columns="model", values="share", aggfunc="sum").reset_index()
    fmt = {c: ".1%" for c in wide.columns if c != "channel"}
    return Section(
        "Attribution", "attribution", "; ".join(parts) + ".", [charts.attribution(df)], [_table(wide, fmt)]
    )


def _journeys(df, steps=None) -> Section:
    if df is None or df.empty:
        return _missing("Journeys", "journeys", "Journeys (export_audiences' journeys task)")
    parts = [
        f"{int(df['entered'].sum()):,} customers entered {len(df)} journeys tonight "
        f"({int(df['held_out'].sum()):,} held out), {int(df['sent'].sum()):,} messages sent, "
        f"{int(df['suppressed'].sum()):,} suppressed (no consent, a cap, an open case), "
        f"{int(df['converted'].sum()):,} "
        f"converted; {int(df['in_journey'].sum()):,} customers in a journey now"
    ]
    figs = [charts.bars(df, "journey", "sent", "Messages sent tonight, per journey")]
    tables = [_table(df)]
    if steps is not None and not steps.empty:
        figs.append(charts.journey_steps(steps))
        tables.append(_table(steps))
    return Section("Journeys", "journeys", "; ".join(parts) + ".", figs, tables)


def _cadence(df) -> Section:
    if df is None or df.empty:
        return _missing("Cadence", "cadence", "The contact ledger (triggers, journeys, audiences)")
    total = int(df[["scheduled", "capped", "suppressed", "no_consent"]].sum().sum())
    parts = [
        f"{total:,} messages decided: {int(df['scheduled'].sum()):,} scheduled, "
        f"{int(df['capped'].sum()):,} over a cap, {int(df['suppressed'].sum()):,} suppressed (open case, "
        f"refund), {int(df['no_consent'].sum()):,} without consent for their channel"
    ]
    return Section("Cadence", "cadence", "; ".join(parts) + ".", [charts.cadence(df)], [_table(df)])


# --- the page -------------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#1f2933;background:#f7f9fb}
header{background:#1f2933;color:#fff;padding:14px 28px}header a{color:#cbd2d9}
main{max-width:1180px;margin:0 auto;padding:8px 28px 40px}
section{background:#fff;border:1px solid #e4e7eb;border-radius:6px;margin:18px 0;padding:4px 20px 14px}
h1{font-size:20px;margin:0}h2{font-size:17px;margin:14px 0 6px}h3{font-size:14px;margin:14px 0 4px}
.figs{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}.figs svg{max-width:100%;height:auto}
table.t{border-collapse:collapse;font-size:12px;margin:8px 0}table.t th,table.t td{padding:3px 8px;
border-bottom:1px solid #e4e7eb;text-align:right}table.t th{background:#f0f4f8}
table.t td:first-child,table.t th:first-child{text-align:left}
.muted{color:#7b8794}
.badge{display:inline-block;border-radius:10px;padding:0 8px;font-size:12px;margin-left:6px}
.ok{background:#e3f9e5;color:#207227}.warn{background:#fffbea;color:#8d6708}.fail{background:#ffe3e3;color:#a61b1b}
.missing{background:#f0f4f8;color:#52606d}nav a{margin-right:14px}
details{margin:8px 0}.alert{color:#a61b1b}
"""


def _page(day: dt.date, sections: list[Section], alerts: list[dict], settings: Settings) -> str:
    esc = html.escape
    nav = " ".join(
        f'<a href="#{s.anchor}">{esc(s.title)}<span class="badge {s.status}">{s.status}</span></a>'
        for s in sections
    )
    body = []
    for s in sections:
        figs = f'<div class="figs">{"".join(s.figures)}</div>' if s.figures else ""
        tables = "".join(s.tables)
        if tables and s.figures:
            tables = f"<details><summary>the numbers</summary>{tables}</details>"
        body.append(
            f'<section id="{s.anchor}"><h2>{esc(s.title)}<span class="badge {s.status}">{s.status}'
            f"</span></h2><p>{esc(s.summary)}</p>{figs}{tables}</section>"
        )
    alert_html = ""
    if alerts:
        items = "".join(f"<li class=alert>{esc(a['at'])} {esc(a['text'])}</li>" for a in alerts)
        alert_html = f'<section id="alerts"><h2>Alerts</h2><ul>{items}</ul></section>'
    made = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>p13n run report {day}</title>"
        f"<meta name=viewport content='width=device-width'><style>{_CSS}</style></head><body>"
        f"<header><h1>p13n nightly run · {day}</h1><div class=muted>env {esc(settings.env)} · "
        f"written {made} · <a href='../index.html'>all reports</a></div></header><main><nav>{nav}</nav>"
        f"{alert_html}{''.join(body)}</main></body></html>"
    )


def _index(folder: Path) -> str:
    days = sorted((p.parent.name for p in folder.glob("*/index.html")), reverse=True)
    items = "".join(f'<li><a href="{d}/index.html">{d}</a></li>' for d in days)
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>p13n run reports</title>"
        f"<style>{_CSS}</style></head><body><header><h1>p13n run reports</h1></header>"
        f"<main><section><ul>{items or '<li>none yet</li>'}</ul></section></main></body></html>"
    )


def report_task(ds: str) -> str:
    """The DAG's task: write the date's report and return its path (shown in the task's log)."""
    from p13n.orchestration import progress

    return str(build(get_settings(), ds, progress=progress))
