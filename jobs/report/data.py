"""What the run report shows, read from the lake's run records (`ops.*`) and gold tables with DuckDB.

Each function takes a DuckDB connection, the lake root and the run's date, and returns plain frames
or dicts; a table that does not exist yet gives None (the report says that stage has not run).
"""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd

from p13n.lake.duck import scan, table_exists
from p13n.lake.tables import (
    GOLD_ATTRIBUTION,
    GOLD_CUSTOMER_PROFILES,
    GOLD_EXPERIMENT_RESULTS,
    GOLD_IDENTITY_GRAPH,
    GOLD_JOURNEY_EVENTS,
    GOLD_JOURNEY_STATE,
    GOLD_RECOMMENDATIONS,
    GOLD_SEGMENTS,
    OPS_CONTACT_LEDGER,
    OPS_EXPORT_RUNS,
    OPS_IDENTITY_RUNS,
    OPS_INGEST_RUNS,
    OPS_MODEL_RUNS,
    OPS_PUBLISH_RUNS,
    OPS_VALIDATIONS,
    OPS_WAREHOUSE_SYNCS,
    silver_table,
)


def _frame(con, root: str, table: str, sql: str, params: list | None = None) -> pd.DataFrame | None:
    if not table_exists(root, table):
        return None
    return con.execute(sql.replace("{t}", scan(root, table)), params or []).df()


def ingestion(con, root: str, day: dt.date) -> pd.DataFrame | None:
    """Per source for the day's batch: rows read, promoted, quarantined, top reasons, expectations."""
    df = _frame(
        con,
        root,
        OPS_INGEST_RUNS,
        """SELECT source, bronze_rows AS "read", silver_rows AS silver, quarantined, top_reasons,
                  expectations_passed, expectations_failed
           FROM {t} WHERE batch_date = ? ORDER BY source""",  # one row per source: a rerun replaces the date
        [day],
    )
    if df is not None:
        df["reasons"] = [json.loads(v or "[]") for v in df["top_reasons"]]  # [[reason, rows], …]
        df["top_reasons"] = ["; ".join(f"{r} ×{n}" for r, n in reasons[:3]) for reasons in df["reasons"]]
        df["quarantine_share"] = (df["quarantined"] / df["read"].where(df["read"] > 0)).fillna(0.0)
    return df


def validations(con, root: str, day: dt.date) -> pd.DataFrame | None:
    """The latest Great Expectations outcome of every table validated for the day."""
    return _frame(
        con,
        root,
        OPS_VALIDATIONS,
        """SELECT table_name, success, passed, failed, failures, warnings FROM {t} WHERE run_date = ?
           QUALIFY row_number() OVER (PARTITION BY table_name ORDER BY validated_at DESC) = 1
           ORDER BY success, table_name""",
        [day],
    )


def identity(con, root: str, day: dt.date) -> dict | None:
    """The identity runs up to the day (counts, merges and splits) and the day's cluster sizes."""
    runs = _frame(
        con,
        root,
        OPS_IDENTITY_RUNS,
        "SELECT run_date, counts, changes, precision, recall, f1 FROM {t} WHERE run_date <= ? ORDER BY "
        "run_date",
        [day],
    )
    if runs is None or runs.empty:
        return None
    rows = []
    for r in runs.itertuples():
        counts, changes = json.loads(r.counts or "{}"), json.loads(r.changes or "{}")
        rows.append(
            {
                "run_date": r.run_date,
                "records": counts.get("records"),
                "customers": counts.get("customers"),
                **{f"changes: {k}": v for k, v in sorted(changes.items())},
                "precision": r.precision,
                "recall": r.recall,
                "f1": r.f1,
            }
        )
    sizes = _frame(
        con,
        root,
        GOLD_IDENTITY_GRAPH,
        """SELECT records, count(*) AS customers FROM (SELECT customer_id, count(*) AS records FROM {t}
           WHERE run_date = (SELECT max(run_date) FROM {t} WHERE run_date <= ?) GROUP BY customer_id)
           GROUP BY records ORDER BY records""",
        [day],
    )
    return {"runs": pd.DataFrame(rows), "cluster_sizes": sizes}


def segments(con, root: str, day: dt.date) -> dict | None:
    """Segment sizes on the day, and lifecycle-stage movements since the previous scoring."""
    if not table_exists(root, GOLD_SEGMENTS):
        return None
    t = scan(root, GOLD_SEGMENTS)
    sizes = {
        col: con.execute(
            f"SELECT {col} AS value, count(*) AS customers FROM {t} WHERE as_of_date = ? GROUP BY 1 ORDER BY "
            "2 DESC",
            [day],
        ).df()
        for col in ("lifecycle_stage", "rfm_segment", "persona", "churn_risk_band")
    }
    previous = con.execute(f"SELECT max(as_of_date) FROM {t} WHERE as_of_date < ?", [day]).fetchone()[0]
    moves = None
    if previous is not None:
        moves = con.execute(
            f"""SELECT coalesce(p.lifecycle_stage, '(new)') AS before, coalesce(n.lifecycle_stage, '(gone)')
            AS after,
                       count(*) AS customers
                FROM (SELECT * FROM {t} WHERE as_of_date = ?) n
                FULL JOIN (SELECT * FROM {t} WHERE as_of_date = ?) p USING (customer_id) GROUP BY ALL""",
            [day, previous],
        ).df()
    return {"sizes": sizes, "previous": previous, "moves": moves}


def models(con, root: str, day: dt.date) -> pd.DataFrame | None:
    """Each model's numeric metrics on the day next to its previous run's, and the gate decision."""
    df = _frame(
        con,
        root,
        OPS_MODEL_RUNS,
        """SELECT model, as_of_date, version, promoted, reasons, metrics FROM {t} WHERE as_of_date <= ?
           QUALIFY row_number() OVER (PARTITION BY model, as_of_date ORDER BY version DESC) = 1""",
        [day],
    )
    if df is None or df.empty:
        return None
    df["as_of_date"] = pd.to_datetime(df["as_of_date"]).dt.date
    out = []
    for model, runs in df.sort_values("as_of_date").groupby("model"):
        now = runs[runs["as_of_date"] == day]
        if now.empty:
            continue
        cur = now.iloc[-1]
        before = runs[runs["as_of_date"] < day]
        prev = json.loads(before.iloc[-1]["metrics"]) if len(before) else {}
        prev_date = before.iloc[-1]["as_of_date"] if len(before) else None
        for name, value in _numeric(json.loads(cur["metrics"] or "{}")).items():
            old = _numeric(prev).get(name)
            out.append(
                {
                    "model": model,
                    "version": cur["version"],
                    "promoted": bool(cur["promoted"]),
                    "metric": name,
                    "value": value,
                    "previous": old,
                    "previous_date": prev_date,
                    "change": None if old is None else value - old,
                }
            )
    return pd.DataFrame(out) if out else None


def _numeric(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Flatten one level of nested metrics and keep the numbers."""
    flat = {}
    for k, v in metrics.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, int | float):
            flat[prefix + k] = float(v)
        elif isinstance(v, dict) and not prefix:
            flat |= _numeric(v, f"{k}.")
    return flat


def recommendations(con, root: str, day: dt.date) -> dict | None:
    """Coverage of the day's lists: customers per list type, sources of the personalized list, and how
    often each item is recommended (catalog coverage and concentration)."""
    if not table_exists(root, GOLD_RECOMMENDATIONS):
        return None
    t = scan(root, GOLD_RECOMMENDATIONS)
    lists = con.execute(
        f"""SELECT list_type, count(DISTINCT customer_id) AS customers, count(*) AS "rows",
                   count(DISTINCT sku) AS items FROM {t} WHERE as_of_date = ? GROUP BY 1 ORDER BY 1""",
        [day],
    ).df()
    sources = con.execute(
        f"""SELECT source, count(*) AS "rows" FROM {t} WHERE as_of_date = ? AND list_type = 'personalized'
            GROUP BY 1 ORDER BY 2 DESC""",
        [day],
    ).df()
    per_item = con.execute(
        f"""SELECT count(*) AS times FROM {t} WHERE as_of_date = ? AND list_type = 'personalized'
            GROUP BY sku ORDER BY 1 DESC""",
        [day],
    ).df()["times"]
    customers = None
    if table_exists(root, GOLD_CUSTOMER_PROFILES):
        customers = con.execute(f"SELECT count(*) FROM {scan(root, GOLD_CUSTOMER_PROFILES)}").fetchone()[0]
    catalog = None
    if table_exists(root, silver_table("products")):
        catalog = con.execute(
            f"SELECT count(DISTINCT sku) FROM {scan(root, silver_table('products'))}"
        ).fetchone()[0]
    return {
        "lists": lists,
        "sources": sources,
        "per_item": per_item,
        "customers": customers,
        "catalog": catalog,
    }


def publish_and_exports(con, root: str, day: dt.date) -> dict:
    """The day's publishes to the serving store, audience exports and warehouse syncs."""
    return {
        "publish": _frame(
            con,
            root,
            OPS_PUBLISH_RUNS,
            """SELECT version, previous, keys, keys_by_kind, bytes, seconds, forced, published_at
               FROM {t} WHERE as_of_date = ? ORDER BY published_at""",
            [day],
        ),
        "exports": _frame(
            con,
            root,
            OPS_EXPORT_RUNS,
            """SELECT audience, destination, status, eligible, added, updated, removed, unchanged, rejected,
                      skipped_no_consent + skipped_erased + skipped_no_address AS skipped, seconds
               FROM {t} WHERE as_of = ? QUALIFY row_number() OVER (PARTITION BY audience, destination
               ORDER BY finished_at DESC) = 1 ORDER BY audience, destination""",
            [day.isoformat()],
        ),
        "warehouse": _frame(
            con,
            root,
            OPS_WAREHOUSE_SYNCS,
            """SELECT table_name, "rows", inserted, updated, deleted, seconds FROM {t} WHERE as_of_date = ?
               QUALIFY row_number() OVER (PARTITION BY table_name ORDER BY synced_at DESC) = 1
               ORDER BY table_name""",
            [day],
        ),
    }


def experiments(con, root: str, day: dt.date) -> pd.DataFrame | None:
    """The date's gold.experiment_results (every arm against its baseline, per metric)."""
    return _frame(
        con,
        root,
        GOLD_EXPERIMENT_RESULTS,
        "SELECT * FROM {t} WHERE as_of_date = ? ORDER BY experiment, arm, metric",
        [day],
    )


def attribution(con, root: str, day: dt.date) -> pd.DataFrame | None:
    """The date's gold.attribution (every model's credit per channel)."""
    return _frame(
        con,
        root,
        GOLD_ATTRIBUTION,
        "SELECT * FROM {t} WHERE as_of_date = ? ORDER BY model, share DESC",
        [day],
    )


def journeys(con, root: str, day: dt.date) -> pd.DataFrame | None:
    """Per journey, the night's events by kind and the customers in it after the night."""
    events = _frame(
        con,
        root,
        GOLD_JOURNEY_EVENTS,
        "SELECT journey, event, count(*) AS n FROM {t} WHERE as_of_date = ? GROUP BY ALL",
        [day],
    )
    if events is None:
        return None
    table = events.pivot_table(index="journey", columns="event", values="n", aggfunc="sum", fill_value=0)
    active = _frame(
        con,
        root,
        GOLD_JOURNEY_STATE,
        "SELECT journey, count(*) AS in_journey FROM {t} WHERE as_of_date = ? AND status = 'active' "
        "GROUP BY ALL",
        [day],
    )
    out = table.reset_index()
    if active is not None:
        out = out.merge(active, on="journey", how="outer").fillna(0)
    cols = ["journey", "entered", "held_out", "sent", "suppressed", "converted", "completed", "in_journey"]
    for c in cols:
        if c not in out:
            out[c] = 0
    return out[cols].astype({c: int for c in cols[1:]})


def cadence(con, root: str, day: dt.date) -> pd.DataFrame | None:
    """The contact ledger's decisions of the date (the night's and that day's triggers): per program
    and channel, messages scheduled, capped, suppressed and without consent."""
    df = _frame(
        con,
        root,
        OPS_CONTACT_LEDGER,
        "SELECT program_type, program, channel, status, count(*) AS n FROM {t} WHERE ledger_date = ? "
        "GROUP BY ALL",
        [day],
    )
    if df is None or df.empty:
        return df
    table = df.pivot_table(
        index=["program_type", "program", "channel"],
        columns="status",
        values="n",
        aggfunc="sum",
        fill_value=0,
    ).reset_index()
    for c in ("scheduled", "capped", "suppressed", "no_consent"):
        if c not in table:
            table[c] = 0
    cols = ["program_type", "program", "channel", "scheduled", "capped", "suppressed", "no_consent"]
    return table[cols].sort_values(["program_type", "program", "channel"]).reset_index(drop=True)


def journey_steps(con, root: str, day: dt.date) -> pd.DataFrame | None:
    """Per journey and step of the night: customers who reached it, messages sent and suppressed
    (capped among them), conversions (`p13n.journeys.engine.step_counts`, as the simulation reports)."""
    from p13n.journeys.engine import step_counts
    from p13n.journeys.model import JourneyError, journeys

    events = _frame(con, root, GOLD_JOURNEY_EVENTS, "SELECT * FROM {t} WHERE as_of_date = ?", [day])
    if events is None or events.empty:
        return None
    try:
        known = journeys()
    except JourneyError:
        return None
    rows = [
        {"journey": name, **c}
        for name, journey in sorted(known.items())
        for c in step_counts(journey, events)[1:]
    ]
    return pd.DataFrame(rows)
