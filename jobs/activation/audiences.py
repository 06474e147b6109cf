"""Audiences: who is in each marketer-declared audience on a date, with the fields email templates use.

`candidates` reads the gold tables in DuckDB (no Spark) and returns one row per customer who matches
the audience's filters, eligible or not: `exclude_reason` says why one may not be exported (no
consent for the channel, an erasure on record, no contact address for the channel). Contact data
comes from `restricted.customer_profiles`, the one place that holds it, and only for the customers
an export sends; everything else is read from pseudonymized gold tables.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pandas as pd

from p13n.config import AudienceSettings, Settings
from p13n.lake.duck import scan, table_exists
from p13n.lake.tables import (
    GOLD_CUSTOMER_FEATURES,
    GOLD_CUSTOMER_PROFILES,
    GOLD_IDENTITY_GRAPH,
    GOLD_RECOMMENDATIONS,
    GOLD_SEGMENTS,
    GOLD_SEND_TIMES,
    GOLD_TRIGGERED_AUDIENCES,
    OPS_ERASURES,
    RESTRICTED_CUSTOMER_PROFILES,
    silver_table,
)

# What each exported profile carries (besides the contact address): the columns `where` may use.
COLUMNS = [
    "customer_id",
    "email",
    "phone",
    "first_name",
    "last_name",
    "segment",
    "rfm_segment",
    "lifecycle_stage",
    "churn_band",
    "clv_tier",
    "clv_12m",
    "loyalty_tier",
    "loyalty_points",
    "preferred_store",
    "best_send_hour",
    "best_send_weekday",
    "recommended_items",
]
PAYLOAD = [c for c in COLUMNS if c != "customer_id"]


class AudienceError(ValueError):
    """An audience cannot be computed: the message names the audience and the reason."""


def candidates(con, settings: Settings, name: str, as_of: dt.date) -> pd.DataFrame:
    """Everyone in audience `name` on `as_of`: COLUMNS + consent + `exclude_reason` (None: export)."""
    audience = audience_settings(settings, name)
    root = settings.lake_root
    for table in (GOLD_SEGMENTS, GOLD_CUSTOMER_PROFILES):
        if not table_exists(root, table):
            raise AudienceError(f"audience {name}: {table} does not exist yet (score the customers first)")
    day = f"DATE '{as_of.isoformat()}'"
    found = con.execute(
        f"SELECT count(*) FROM {scan(root, GOLD_SEGMENTS)} WHERE as_of_date = {day}"
    ).fetchone()
    if not found[0]:
        raise AudienceError(f"audience {name}: gold.segments has no rows for {as_of} (score that date first)")
    tiers = sorted(settings.serving.clv_tiers.items(), key=lambda kv: -kv[1])
    tier_case = " ".join(f"WHEN pct >= {p} THEN '{t}'" for t, p in tiers)
    optional = {
        t: table_exists(root, t)
        for t in (
            RESTRICTED_CUSTOMER_PROFILES,
            GOLD_CUSTOMER_FEATURES,
            GOLD_SEND_TIMES,
            GOLD_RECOMMENDATIONS,
            silver_table("products"),
            silver_table("store_visits"),
            silver_table("stores"),
            GOLD_IDENTITY_GRAPH,
            OPS_ERASURES,
            GOLD_TRIGGERED_AUDIENCES,
        )
    }
    joins, fields = [], []
    if optional[RESTRICTED_CUSTOMER_PROFILES]:
        joins.append(f"LEFT JOIN {scan(root, RESTRICTED_CUSTOMER_PROFILES)} r USING (customer_id)")
        fields.append("r.email, r.phone, r.first_name, r.last_name")
    else:
        fields.append("NULL AS email, NULL AS phone, NULL AS first_name, NULL AS last_name")
    if optional[GOLD_CUSTOMER_FEATURES]:
        joins.append(
            "LEFT JOIN (SELECT customer_id, loyalty_tier, loyalty_points FROM "
            f"{scan(root, GOLD_CUSTOMER_FEATURES)} WHERE as_of_date = {day}) f USING (customer_id)"
        )
        fields.append("f.loyalty_tier, f.loyalty_points::BIGINT AS loyalty_points")
    else:
        fields.append("NULL AS loyalty_tier, NULL::BIGINT AS loyalty_points")
    if optional[GOLD_SEND_TIMES]:
        joins.append(
            f"LEFT JOIN (SELECT customer_id, best_hour, best_weekday FROM {scan(root, GOLD_SEND_TIMES)}"
            f" WHERE as_of_date = {day}) t USING (customer_id)"
        )
        fields.append("t.best_hour AS best_send_hour, t.best_weekday AS best_send_weekday")
    else:
        fields.append("NULL::INT AS best_send_hour, NULL AS best_send_weekday")
    if all(optional[t] for t in (silver_table("store_visits"), GOLD_IDENTITY_GRAPH, silver_table("stores"))):
        joins.append(f"""LEFT JOIN (
            SELECT customer_id, arg_max(s.name, visits) AS preferred_store FROM (
                SELECT g.customer_id, v.store_id, count(*) AS visits
                FROM {scan(root, silver_table("store_visits"))} v
                JOIN {scan(root, GOLD_IDENTITY_GRAPH)} g ON g.source = 'store_visits' AND g.record_id =
                v.visit_id
                WHERE CAST(v.visited_at AS DATE) <= {day} GROUP BY ALL) x
            JOIN (SELECT store_id, arg_max(name, updated_at) AS name FROM {scan(root, silver_table("stores"))}
            GROUP BY 1) s
              USING (store_id)
            GROUP BY customer_id) st USING (customer_id)""")
        fields.append("st.preferred_store")
    else:
        fields.append("NULL AS preferred_store")
    k = settings.activation.recommended_items
    if optional[GOLD_RECOMMENDATIONS] and k:
        products = (
            f"(SELECT sku, arg_max(title, updated_at) AS name, arg_max(image_url, updated_at) AS image, "
            f"arg_max(price, updated_at) AS price FROM {scan(root, silver_table('products'))} GROUP BY sku)"
            if optional[silver_table("products")]
            else "(SELECT NULL AS sku, NULL AS name, NULL AS image, NULL AS price WHERE false)"
        )
        url = settings.activation.item_url.replace("'", "''")
        joins.append(f"""LEFT JOIN (
            SELECT customer_id, to_json(list(struct_pack(
                       sku := r.sku, name := p.name, image := p.image, price := round(p.price::DOUBLE, 2),
                       url := replace('{url}', '{{sku}}', r.sku)) ORDER BY r.rank))::VARCHAR AS
                       recommended_items
            FROM {scan(root, GOLD_RECOMMENDATIONS)} r LEFT JOIN {products} p USING (sku)
            WHERE r.as_of_date = {day} AND r.list_type = 'personalized' AND r.rank <= {k}
            GROUP BY customer_id) rec USING (customer_id)""")
        fields.append("coalesce(rec.recommended_items, '[]') AS recommended_items")
    else:
        fields.append("'[]' AS recommended_items")
    if optional[OPS_ERASURES]:
        joins.append(
            f"LEFT JOIN (SELECT DISTINCT customer_id, true AS erased FROM {scan(root, OPS_ERASURES)}) e "
            "USING (customer_id)"
        )
        fields.append("coalesce(e.erased, false) AS erased")
    else:
        fields.append("false AS erased")

    where, params = _filters(audience, name)
    if audience.trigger:
        if not optional[GOLD_TRIGGERED_AUDIENCES]:
            raise AudienceError(
                f"audience {name}: filters on triggers, and gold.triggered_audiences does not exist yet"
            )
        since = as_of - dt.timedelta(days=audience.trigger_days - 1)
        where.append(f"""customer_id IN (SELECT customer_id FROM {scan(root, GOLD_TRIGGERED_AUDIENCES)}
                         WHERE status = 'sent' AND trigger IN (SELECT unnest(?::VARCHAR[]))
                           AND trigger_date BETWEEN ? AND ?)""")
        params += [audience.trigger, since, as_of]
    channel = audience.channel
    contact = "email" if channel == "email" else "phone"
    sql = f"""
        WITH base AS (
            SELECT g.customer_id, g.persona AS segment, g.rfm_segment, g.lifecycle_stage,
                   g.churn_risk_band AS churn_band, CASE {tier_case} ELSE 'low' END AS clv_tier,
                   round(g.clv_12m, 2) AS clv_12m, p.consent_{channel} AS consent,
                   p.consent_email AS consent_email_column, p.consent_sms AS consent_sms_column,
                   {", ".join(fields)}
            FROM (SELECT *, percent_rank() OVER (ORDER BY clv_12m) AS pct
                  FROM {scan(root, GOLD_SEGMENTS)} WHERE as_of_date = {day}) g
            LEFT JOIN {scan(root, GOLD_CUSTOMER_PROFILES)} p USING (customer_id)
            {" ".join(joins)})
        SELECT * EXCLUDE (erased),
               CASE WHEN erased THEN 'erased'
                    WHEN consent IS DISTINCT FROM 'granted' THEN 'no {channel} consent'
                    WHEN {contact} IS NULL OR {contact} = '' THEN 'no {contact}'
               END AS exclude_reason
        FROM base
        {("WHERE " + " AND ".join(f"({w})" for w in where)) if where else ""}
        ORDER BY customer_id"""
    try:
        frame = con.execute(sql, params).df()
    except Exception as e:  # a marketer's `where` that does not parse or names an unknown column
        raise AudienceError(f"audience {name}: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    return hold_out(frame, settings, name, audience.holdout)


def hold_out(frame: pd.DataFrame, settings: Settings, name: str, share: float) -> pd.DataFrame:
    """Eligible customers of the global holdout or of the audience's own are not exported: their
    `exclude_reason` says which (`p13n.measurement.sends`), and the export logs them as held out."""
    from p13n.measurement.sends import holdout_reason

    if frame.empty or not (share or settings.activation.global_holdout):
        return frame
    eligible = frame["exclude_reason"].isna()
    reasons = [holdout_reason(settings, name, share, c) for c in frame.loc[eligible, "customer_id"]]
    frame.loc[eligible, "exclude_reason"] = reasons
    return frame


def with_cadence(con, settings: Settings, name: str, as_of: dt.date, frame: pd.DataFrame) -> pd.DataFrame:
    """A nightly audience's new entrants through the contact ledger (`p13n.cadence`): its message is
    the one a customer gets on entering the audience, so the eligible customers it never sent are
    allocated against every other program's messages, and one over a cap is not exported tonight
    (`exclude_reason` names the cap; the next night offers them again). Trigger audiences went
    through the ledger when they fired."""
    from p13n.cadence.ledger import blocked, candidates_frame, plan
    from p13n.lake.tables import SILVER_SENDS
    from p13n.measurement.sends import SENT, send_time

    audience = audience_settings(settings, name)
    if audience.trigger or frame.empty:
        return frame
    eligible = frame.loc[frame["exclude_reason"].isna(), "customer_id"]
    sent_before: set[str] = set()
    if table_exists(settings.lake_root, SILVER_SENDS):
        sent_before = {
            r[0]
            for r in con.execute(
                f"SELECT DISTINCT customer_id FROM {scan(settings.lake_root, SILVER_SENDS)} "
                "WHERE program = ? AND status = ? AND send_date < ?",
                [name, SENT, as_of],
            ).fetchall()
        }
    new = eligible[~eligible.isin(sent_before)]
    kind = "audience"
    rows = plan(
        settings,
        candidates_frame(new, [audience.channel] * len(new), kind, [name] * len(new), ["entry"] * len(new)),
        send_time(as_of),
        con,
        programs=[(kind, name)],
    )
    why = {c: reason for (_, c, _), reason in blocked(rows).items()}
    if why:
        frame = frame.copy()
        hit = frame["exclude_reason"].isna() & frame["customer_id"].isin(why)
        frame.loc[hit, "exclude_reason"] = frame.loc[hit, "customer_id"].map(why)
    return frame


def audience_settings(settings: Settings, name: str) -> AudienceSettings:
    audiences = settings.activation.audiences
    if name not in audiences:
        known = ", ".join(sorted(audiences)) or "none"
        raise AudienceError(f"no audience {name!r} in activation.audiences (declared: {known})")
    return audiences[name]


def _filters(a: AudienceSettings, name: str) -> tuple[list[str], list]:
    where, params = [], []
    for column, values in (
        ("segment", a.segment),
        ("rfm_segment", a.rfm_segment),
        ("lifecycle_stage", a.lifecycle_stage),
        ("churn_band", a.churn_band),
        ("clv_tier", a.clv_tier),
    ):
        if values:
            where.append(f"{column} IN (SELECT unnest(?::VARCHAR[]))")
            params.append(list(values))
    if a.where.strip():
        if ";" in a.where:
            raise AudienceError(f"audience {name}: `where` must be one SQL condition (no ';')")
        where.append(a.where)
    return where, params


def fingerprint(row: dict) -> str:
    """What was sent for a customer: a change of any payload field (consent aside) is an update."""
    payload = {c: _plain(row.get(c)) for c in PAYLOAD}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _plain(v):
    if v is None or (isinstance(v, float) and pd.isna(v)) or v is pd.NA:
        return None
    if hasattr(v, "item"):
        return v.item()
    return v
