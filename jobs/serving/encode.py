"""Gold tables of one date -> Redis commands, built in DuckDB (no Python loop per customer).

`command_parts()` yields, a kind at a time, one row per Redis command: its kind (c customers, i items,
l lists, x lookups, s segments, m version tables), the key it writes, the command already framed in the
Redis protocol (RESP), and for a sample of the hash keys the md5 of their canonical content
(`field=value` lines sorted by field), which the verifier recomputes from what Redis holds.

No raw PII is read: profiles take segments, scores, consents and send times; lookups take only the
configured source-system key types.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pyarrow as pa

from p13n.config import Settings
from p13n.lake.tables import (
    GOLD_BOUGHT_TOGETHER,
    GOLD_CUSTOMER_PROFILES,
    GOLD_IDENTITY_KEYS,
    GOLD_ITEM_SIMILARITY,
    GOLD_POPULAR_ITEMS,
    GOLD_RECOMMENDATIONS,
    GOLD_SEGMENTS,
    GOLD_SEND_TIMES,
    GOLD_TRENDING,
)
from p13n.serving.keys import CUSTOMER_LISTS

# Tables a publish reads for its date (`as_of_date` partition) and what each feeds.
DATED_TABLES = {
    GOLD_RECOMMENDATIONS: "customer lists",
    GOLD_SEGMENTS: "profiles and segments",
    GOLD_SEND_TIMES: "profiles (best send time)",
    GOLD_ITEM_SIMILARITY: "similar items",
    GOLD_BOUGHT_TOGETHER: "bought together",
    GOLD_TRENDING: "trending lists",
    GOLD_POPULAR_ITEMS: "popular lists",
}

# One hash key in this many carries the digest of its content, which the publish reads back from Redis.
SAMPLE_EVERY = 16

# Customers' commands come in parts of this many (about 250 MB of commands at 1,000 per customer).
CUSTOMERS_PER_PART = 250_000

_MACROS = """
CREATE OR REPLACE MACRO crlf() AS chr(13) || chr(10);
CREATE OR REPLACE MACRO bulk(x) AS '$' || strlen(x) || crlf() || x || crlf();
CREATE OR REPLACE MACRO milli(x) AS CAST(round(x * 1000) AS BIGINT)::VARCHAR;
CREATE OR REPLACE MACRO slug(x) AS trim(regexp_replace(lower(x), '[^a-z0-9]+', '-', 'g'), '-');
"""


def _ordered_join(entry: str, order: str, sep: str, where: str = "") -> str:
    """An aggregate joining `entry` in `order` with `sep` (over the rows matching `where`): the entries
    and their order keys gathered side by side (one aggregation appends to both in the same row order),
    then the entries picked by the order keys' sorting permutation. `order` must be unique within a
    group (a rank, a field name). `string_agg(... ORDER BY ...)` runs out of memory at a million
    customers and sorting a list of (order, entry) structs takes twice as long (DuckDB 1.5, measured)."""
    only = f" FILTER (WHERE {where})" if where else ""
    return f"array_to_string(list_select(list({entry}){only}, list_grade_up(list({order}){only})), '{sep}')"


def _scan(settings: Settings, table: str) -> str:
    from p13n.lake.duck import scan

    return scan(settings.lake_root, table)


def _hash_commands(source: str, kind: str) -> str:
    """HSET per key from rows (key, field, value) of `source`: one command per key, its fields in any
    order (a hash has none), and for one key in `SAMPLE_EVERY` the digest the verifier checks. Ordering
    fields and digesting every key tripled this query's time (measured at 100k customers)."""
    sampled = f"hash(key) % {SAMPLE_EVERY} = 0"
    digest_lines = _ordered_join("field || '=' || value", "field", chr(10), where=sampled)
    return f"""
        SELECT '{kind}' AS kind, key,
               '*' || (2 + 2 * count(*)) || crlf() || bulk('HSET') || bulk(key)
                   || string_agg(bulk(field) || bulk(value), '') AS cmd,
               CASE WHEN {sampled} THEN md5({digest_lines}) END AS digest,
               count(*) AS fields
        FROM {source} GROUP BY key
    """


def _chunked_commands(source: str, kind: str, verb: str, per_command: int, pairs: bool) -> str:
    """Big hashes and lists in commands of `per_command` members: (key, field[, value]) rows."""
    member = "bulk(field) || bulk(value)" if pairs else "bulk(field)"
    width = 2 if pairs else 1
    return f"""
        SELECT '{kind}' AS kind, key,
               '*' || (2 + {width} * count(*)) || crlf() || bulk('{verb}') || bulk(key)
                   || {_ordered_join(member, "n", "")} AS cmd,
               NULL::VARCHAR AS digest, count(*) AS fields
        FROM (SELECT *, (row_number() OVER (PARTITION BY key ORDER BY field) - 1) AS n FROM {source})
        GROUP BY key, n // {per_command}
    """


def commands(con, settings: Settings, as_of: dt.date, version: str, erased: set[str], **kw) -> pa.Table:
    """The commands of one version in one table (see `command_parts`)."""
    return pa.concat_tables(list(command_parts(con, settings, as_of, version, erased, **kw)))


def command_parts(
    con,
    settings: Settings,
    as_of: dt.date,
    version: str,
    erased: set[str],
    part: tuple[int, int] | None = None,
    reasons: list[tuple[str, str, str]] | None = None,
    entities: bool = True,
) -> Iterator[pa.Table]:
    """The commands of one version, a table per kind as each is encoded, with kind, key, cmd, digest
    and fields columns. The connection's temporary tables are the generator's until it is exhausted.

    `part=(i, n)` keeps the customers and items whose id hashes to i of n (a Spark task's share) and
    leaves out the small version-wide keys (lists, reasons, segment sizes), which the driver writes;
    then `reasons` (rid, source, reason), computed once by the driver, keeps reason ids global.
    `entities=False` builds only the version-wide keys (see `version_wide`)."""
    s = settings.serving
    prefix = f"{s.namespace}:v:{version}:"
    day = f"DATE '{as_of.isoformat()}'"
    mine = (lambda col: f"hash({col}) % {part[1]} = {part[0]}") if part else (lambda col: "true")
    con.execute(_MACROS)
    con.execute("CREATE OR REPLACE TEMP TABLE erased (customer_id VARCHAR)")
    if erased:
        con.executemany("INSERT INTO erased VALUES (?)", [(c,) for c in sorted(erased)])
    con.execute(f"""
        CREATE OR REPLACE TEMP VIEW recs AS
        SELECT r.* EXCLUDE (as_of_date, reason), coalesce(reason, '') AS reason
        FROM {_scan(settings, GOLD_RECOMMENDATIONS)} r
        WHERE as_of_date = {day} AND customer_id NOT IN (SELECT customer_id FROM erased)
          AND {mine("customer_id")}
    """)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE item_rows AS
        SELECT * FROM (
            SELECT 'similar' AS field, sku, similar_sku AS item, rank, score, basis AS source, '' AS reason
            FROM {_scan(settings, GOLD_ITEM_SIMILARITY)} WHERE as_of_date = {day}
            UNION ALL
            SELECT 'bought_together', sku, other_sku, rank, confidence, 'bought_together', ''
            FROM {_scan(settings, GOLD_BOUGHT_TOGETHER)} WHERE as_of_date = {day})
        WHERE {mine("sku")}
    """)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE list_rows AS
        SELECT 'trending' AS kind, scope, rank, sku, score, 'trending' AS source, '' AS reason
        FROM {_scan(settings, GOLD_TRENDING)} WHERE as_of_date = {day}
        UNION ALL
        SELECT 'popular', CASE WHEN scope = 'all' THEN 'all' ELSE slug(scope) END, rank, sku, buyers,
               'popular', ''
        FROM {_scan(settings, GOLD_POPULAR_ITEMS)} WHERE as_of_date = {day}
    """)
    # Reason ids: one per distinct (source, reason) of the version.
    if reasons is None:
        con.execute("""
            CREATE OR REPLACE TEMP TABLE reasons AS
            SELECT (row_number() OVER (ORDER BY source, reason) - 1)::VARCHAR AS rid, source, reason
            FROM (SELECT DISTINCT source, reason FROM recs
                  UNION SELECT DISTINCT source, reason FROM item_rows
                  UNION SELECT DISTINCT source, reason FROM list_rows)
        """)
    else:
        con.execute("CREATE OR REPLACE TEMP TABLE reasons (rid VARCHAR, source VARCHAR, reason VARCHAR)")
        con.executemany("INSERT INTO reasons VALUES (?, ?, ?)", reasons)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE list_fields AS
        SELECT '{prefix}l:' || kind AS key, scope AS field,
               {_ordered_join("sku || ',' || milli(score) || ',' || rid", "rank", ";")} AS value
        FROM list_rows JOIN reasons USING (source, reason) GROUP BY kind, scope
    """)
    # Segments: persona, RFM segment, lifecycle stage, churn band, each a paged list of customer ids.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE segment_members AS
        SELECT '{prefix}s:' || name AS key, customer_id AS field FROM (
            SELECT customer_id, unnest([
                'persona.' || slug(persona), 'rfm.' || slug(rfm_segment),
                'lifecycle.' || slug(lifecycle_stage), 'churn.' || slug(churn_risk_band)]) AS name
            FROM {_scan(settings, GOLD_SEGMENTS)}
            WHERE as_of_date = {day} AND customer_id NOT IN (SELECT customer_id FROM erased)
              AND {mine("customer_id")})
        WHERE name IS NOT NULL
    """)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE meta_fields AS
        SELECT '{prefix}reasons' AS key, rid AS field, json_array(source, nullif(reason, ''))::VARCHAR
               AS value
        FROM reasons
        UNION ALL
        SELECT '{prefix}segments', substr(key, {len(prefix) + 3}), count(*)::VARCHAR
        FROM segment_members GROUP BY key
    """)
    key_types = ", ".join(f"'{k}'" for k in s.lookup_key_types) or "NULL"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE lookup_fields AS
        SELECT '{prefix}x:' || key_type AS key, key_value AS field, customer_id AS value
        FROM {_scan(settings, GOLD_IDENTITY_KEYS)}
        WHERE key_type IN ({key_types}) AND customer_id NOT IN (SELECT customer_id FROM erased)
          AND {mine("customer_id")}
    """)
    if part is None:
        yield con.execute(_hash_commands("list_fields", "l")).to_arrow_table()
        yield con.execute(_chunked_commands("meta_fields", "m", "HSET", 1000, pairs=True)).to_arrow_table()
    if not entities:
        return
    # One query per kind: at a million customers, their UNION ALL never returned (DuckDB 1.5.5, every
    # thread parked, even on one thread), where each query on its own completes. The cheap kinds come
    # first, so a caller writing each part as it comes has them in Redis while the customers are encoded.
    yield con.execute(_chunked_commands("lookup_fields", "x", "HSET", 1000, pairs=True)).to_arrow_table()
    yield con.execute(_chunked_commands("segment_members", "s", "RPUSH", 1000, pairs=False)).to_arrow_table()
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE item_fields AS
        SELECT '{prefix}i:' || sku AS key, field,
               {_ordered_join("item || ',' || milli(score) || ',' || rid", "rank", ";")} AS value
        FROM item_rows JOIN reasons USING (source, reason) GROUP BY sku, field
    """)
    yield con.execute(_hash_commands("item_fields", "i")).to_arrow_table()
    # One row per customer: a column per list (NULL when the customer has none of it) ...
    entry = "sku || ',' || milli(score) || ',' || rid"
    per_list = ", ".join(
        f"{_ordered_join(entry, 'rank', ';', where=f'list_type = {chr(39)}{t}{chr(39)}')} AS {t}"
        for t in CUSTOMER_LISTS
    )
    customer_lists = ", ".join(f"'{t}'" for t in CUSTOMER_LISTS)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE customer_lists AS
        SELECT customer_id, {per_list}
        FROM recs JOIN reasons USING (source, reason)
        WHERE list_type IN ({customer_lists})
        GROUP BY customer_id
    """)
    # ... and its profile.
    tiers = sorted(s.clv_tiers.items(), key=lambda kv: -kv[1])
    tier_case = " ".join(f"WHEN pct >= {p} THEN '{t}'" for t, p in tiers)
    consents = ("email", "sms", "push", "personalization")
    consent_pairs = ", ".join(f"'{c}', coalesce(p.consent_{c}, 'unknown')" for c in consents)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE customer_profiles AS
        SELECT g.customer_id, json_object(
                   'segment', g.persona, 'rfm_segment', g.rfm_segment, 'lifecycle_stage',
                   g.lifecycle_stage,
                   'clv_tier', CASE {tier_case} ELSE 'low' END, 'churn_band', g.churn_risk_band,
                   'consents',
                   json_object({consent_pairs}),
                   'best_send_time', CASE WHEN t.best_hour IS NULL THEN NULL
                                          ELSE json_object('hour', t.best_hour, 'weekday', t.best_weekday)
                                          END
               )::VARCHAR AS profile
        FROM (SELECT *, percent_rank() OVER (ORDER BY clv_12m) AS pct
              FROM {_scan(settings, GOLD_SEGMENTS)} WHERE as_of_date = {day}) g
        LEFT JOIN (SELECT * FROM {_scan(settings, GOLD_SEND_TIMES)} WHERE as_of_date = {day}) t
            USING (customer_id)
        LEFT JOIN {_scan(settings, GOLD_CUSTOMER_PROFILES)} p USING (customer_id)
        WHERE g.customer_id NOT IN (SELECT customer_id FROM erased) AND {mine("g.customer_id")}
    """)
    # The biggest kind in slices, so the first are written while the rest are encoded.
    for batch in con.execute(_customer_commands(prefix)).fetch_record_batch(CUSTOMERS_PER_PART):
        yield pa.Table.from_batches([batch])


def _customer_commands(prefix: str) -> str:
    """HSET per customer from `customer_lists` and `customer_profiles`: its fields are known, so the
    digest's sorted `field=value` lines need no sort, and no second aggregation is needed."""
    fields = sorted((*CUSTOMER_LISTS, "profile"))
    key = f"'{prefix}c:' || customer_id"
    present = " + ".join(f"({f} IS NOT NULL)::BIGINT" for f in fields)
    # concat() skips NULLs: a customer without a list (or a profile) has no field for it.
    body = ", ".join(f"bulk('{f}') || bulk({f})" for f in fields)
    lines = ", ".join(f"'{f}=' || {f}" for f in fields)
    return f"""
        SELECT 'c' AS kind, {key} AS key,
               '*' || (2 + 2 * ({present})) || crlf() || bulk('HSET') || bulk({key}) || concat({body}) AS cmd,
               CASE WHEN hash({key}) % {SAMPLE_EVERY} = 0 THEN md5(concat_ws(chr(10), {lines})) END AS digest,
               {present} AS fields
        FROM (SELECT coalesce(l.customer_id, p.customer_id) AS customer_id, l.* EXCLUDE (customer_id),
                     p.profile
              FROM customer_lists l FULL JOIN customer_profiles p ON l.customer_id = p.customer_id)
    """


def version_wide(
    con, settings: Settings, as_of: dt.date, version: str, erased: set[str]
) -> tuple[pa.Table, list]:
    """For a publish in parts: the version-wide commands (lists, reasons, segment sizes) and the reason
    table (rid, source, reason) every part is given, so reason ids are the same in all of them."""
    cmds = commands(con, settings, as_of, version, erased, entities=False)
    return cmds, con.execute("SELECT rid, source, reason FROM reasons ORDER BY rid").fetchall()
