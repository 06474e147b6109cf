"""The right to erasure: one person deleted from everything p13n holds, and kept out afterwards.

`forget(settings, request_id, customer_id=... | email=...)`:

1. **Who**: the customer's identity records (`gold.identity_graph`), their source keys and
   pseudonyms (`gold.identity_keys`), and their raw contact values (`restricted.*`, by record id),
   plus the keyed hashes of those values: the person's *identifiers*.
2. **The lake**: every Delta table of every layer (bronze, silver, quarantine, restricted, gold, ops
   except the registries below) loses the rows where a text column equals one of the identifiers, or
   where a raw-record column (`_raw`, `raw`) contains one of the contact values. Each table changed
   is then vacuumed with `privacy.vacuum_retention_hours` (0: at once) and, with
   `privacy.truncate_history`, its log is cut at a new checkpoint, so no older table version (data
   files, or the min/max statistics of the log) still holds the person.
3. **Serving**: the customer's keys in every kept Redis version (lists, profile, segment
   memberships, id lookups) and their real-time keys.
4. **Platforms and warehouse**: Klaviyo's data-privacy deletion and Mailchimp's permanent delete for
   the audiences they were exported to (`ops.export_state`), and every synced Snowflake table's rows.
5. **Kept out**: `ops.erasures` (customer id and request: every job skips these customers) and
   `ops.suppressions` (HMAC of each identifier, no raw value), which the stream consumer and the
   silver promotion check, so a late or replayed record of the person does not bring them back.
6. **Audit**: `ops.privacy_audit`, one row per request: when, what was deleted where (table names
   and row counts), and the outcome; no PII.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from p13n.lake.duck import append_rows, duckdb_connection, scan, table_exists
from p13n.lake.tables import (
    GOLD_CUSTOMER_ALIASES,
    GOLD_CUSTOMER_PROFILES,
    GOLD_IDENTITY_GRAPH,
    GOLD_IDENTITY_KEYS,
    OPS_ERASURES,
    OPS_EXPORT_STATE,
    OPS_PRIVACY_AUDIT,
    OPS_SUPPRESSIONS,
    RESTRICTED_CUSTOMER_PROFILES,
    RESTRICTED_PRIVACY_PENDING,
)

KEEP = {
    OPS_ERASURES,
    OPS_SUPPRESSIONS,
    OPS_PRIVACY_AUDIT,
    RESTRICTED_PRIVACY_PENDING,
}  # the registries: they must outlive the erasure
RAW_COLUMNS = ("_raw", "raw", "_extra")
CONTACT_FIELDS = ("email", "phone")
LAYERS = ("bronze", "silver", "quarantine", "restricted", "gold", "ops")
PERSON_ID_COLUMNS = ("customer_id", "alias_id")  # where a p13n customer id (or an old one) is written
# Tokens of a raw record: an email address, and a run of digits with phone separators (any spelling).
EMAIL_TOKEN = r"[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}"
PHONE_TOKEN = r"\+?\(?[0-9][0-9 ().-]{6,}[0-9]"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ErasureError(RuntimeError):
    pass


class AlreadyErased(ErasureError):
    """The customer was erased before: a rerun of the request has nothing left to do."""


@dataclass
class Person:
    """Who a request names, as the values that identify them and nobody else.

    Each kind of value is matched only where that kind is written: customer ids in customer-id
    columns, a source's record ids in that source's record-id column, source account ids (Shopify,
    CRM, loyalty) in the columns of those names, keyed hashes (64 hex digits) anywhere, emails and
    phones after normalizing the spelling, and inside raw records only as whole parsed tokens."""

    customer_id: str
    ids: set[str] = field(default_factory=set)  # the customer id and its aliases
    records: dict[str, set[str]] = field(default_factory=dict)  # identity source -> record ids
    keys: dict[str, set[str]] = field(default_factory=dict)  # account-id column -> values
    hashes: set[str] = field(default_factory=set)
    emails: set[str] = field(default_factory=set)  # trimmed, lower-case
    phones: set[str] = field(default_factory=set)  # E.164

    @property
    def contacts(self) -> set[str]:
        return self.emails | self.phones

    @property
    def identifiers(self) -> set[str]:
        """Every value above (Redis lookups and suppression hashes are keyed on them)."""
        out = self.ids | self.hashes | self.contacts
        for values in (*self.records.values(), *self.keys.values()):
            out |= values
        out |= {f"{s}:{r}" for s, rs in self.records.items() for r in rs}
        return {v for v in out if v}

    def to_json(self) -> str:
        return json.dumps(
            {
                k: sorted(v)
                if isinstance(v, set)
                else {a: sorted(b) for a, b in v.items()}
                if isinstance(v, dict)
                else v
                for k, v in vars(self).items()
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Person:
        d = json.loads(text)
        return cls(
            d["customer_id"],
            set(d["ids"]),
            {k: set(v) for k, v in d["records"].items()},
            {k: set(v) for k, v in d["keys"].items()},
            set(d["hashes"]),
            set(d["emails"]),
            set(d["phones"]),
        )


def keyed_hash(value: str, key: bytes) -> str:
    """HMAC-SHA256 hex, the same function the silver pseudonyms use (`standardize.hmac_sha256`)."""
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def normalize_email(value: str | None) -> str | None:
    v = (value or "").strip().lower()
    return v if re.fullmatch(EMAIL_TOKEN, v) else None


def normalize_phone(value: str | None) -> str | None:
    """E.164, by the rule silver uses (`standardize._phone_e164`): `809.973.1390` -> `+18099731390`."""
    raw = (value or "").strip()
    digits = re.sub(r"[^0-9]", "", raw)
    if raw.startswith("+") and 8 <= len(digits) <= 15:
        return "+" + digits
    if len(digits) == 10 and digits[0] not in "01":
        return "+1" + digits
    if len(digits) == 11 and digits.startswith("1"):
        return "+" + digits
    return None


_MACROS = (
    "CREATE OR REPLACE MACRO p13n_digits(x) AS regexp_replace(x, '[^0-9]', '', 'g')",
    "CREATE OR REPLACE MACRO p13n_phone(x) AS CASE "
    "WHEN starts_with(trim(x), '+') AND length(p13n_digits(x)) BETWEEN 8 AND 15 THEN '+' || p13n_digits(x) "
    "WHEN length(p13n_digits(x)) = 10 AND NOT regexp_matches(p13n_digits(x), '^[01]') THEN '+1' || "
    "p13n_digits(x) "
    "WHEN length(p13n_digits(x)) = 11 AND starts_with(p13n_digits(x), '1') THEN '+' || p13n_digits(x) END",
)


def matching_connection():
    con = duckdb_connection()
    for m in _MACROS:
        con.execute(m)
    return con


def _rows(con, root: str, table: str, where: str, params: list, columns: str = "*") -> list[tuple]:
    if not table_exists(root, table):
        return []
    return con.execute(f"SELECT {columns} FROM {scan(root, table)} WHERE {where}", params).fetchall()


def find_person(settings, key: bytes, customer_id: str | None = None, email: str | None = None) -> Person:
    """Resolve a request to exactly one known customer, or refuse (`ErasureError`) before anything
    is touched: an id no customer has, an address of no one or of several people."""
    con = matching_connection()
    root = settings.lake_root
    customer_id = (customer_id or "").strip() or None
    if not customer_id:
        address = normalize_email(email)
        if not address:
            raise ErasureError(
                f"{email!r} is not an email address"
                if email
                else "name the person: a customer id or an email address"
            )
        found = _rows(
            con,
            root,
            RESTRICTED_CUSTOMER_PROFILES,
            "lower(trim(email)) = ?",
            [address],
            "DISTINCT customer_id",
        )
        if not found:
            found = _rows(
                con,
                root,
                GOLD_IDENTITY_KEYS,
                "key_type = 'email_hmac' AND key_value = ?",
                [keyed_hash(address, key)],
                "DISTINCT customer_id",
            )
        if len(found) != 1:
            raise ErasureError(
                f"the email address matches {len(found)} customers"
                + ("" if found else " (nothing to erase?)")
            )
        customer_id = found[0][0]
    current = _rows(con, root, GOLD_CUSTOMER_ALIASES, "alias_id = ?", [customer_id], "DISTINCT customer_id")
    if len(current) == 1:  # an id the customer had before a merge: the request is for today's customer
        customer_id = current[0][0]
    graph = _rows(
        con, root, GOLD_IDENTITY_GRAPH, "customer_id = ?", [customer_id], "DISTINCT source, record_id"
    )
    if not graph and not _rows(con, root, GOLD_CUSTOMER_PROFILES, "customer_id = ?", [customer_id], "1"):
        pending = _rows(con, root, RESTRICTED_PRIVACY_PENDING, "customer_id = ?", [customer_id], "person")
        if pending:  # a failed erasure, retried: its identifiers were kept for it
            return Person.from_json(pending[-1][0])
        done = _rows(con, root, OPS_ERASURES, "customer_id = ?", [customer_id], "request_id, erased_at")
        if done:
            raise AlreadyErased(
                f"customer {customer_id} was erased by request {done[-1][0]} at {done[-1][1]:%Y-%m-%d %H:%M} "
                "UTC"
            )
        raise ErasureError(
            f"unknown customer id {customer_id!r}: not in gold.identity_graph or gold.customer_profiles "
            "(nothing was changed)"
        )
    person = Person(customer_id, {customer_id})
    person.ids |= {
        r[0] for r in _rows(con, root, GOLD_CUSTOMER_ALIASES, "customer_id = ?", [customer_id], "alias_id")
    }
    for source, record_id in graph:
        person.records.setdefault(source, set()).add(str(record_id))
    columns = {t: c for spec in settings.identity.sources.values() for t, c in spec.keys.items()}
    for key_type, value in _rows(
        con, root, GOLD_IDENTITY_KEYS, "customer_id = ?", [customer_id], "key_type, key_value"
    ):
        if _HEX64.match(value or ""):
            person.hashes.add(value)
        elif value:
            for column in {key_type, columns.get(key_type, key_type)}:
                person.keys.setdefault(column, set()).add(value)
    # Raw contact values: the golden record's, and every identity record's in restricted.
    contacts = _rows(
        con, root, RESTRICTED_CUSTOMER_PROFILES, "customer_id = ?", [customer_id], "email, phone"
    )
    spec = settings.identity.sources
    for source, ids in person.records.items():
        table = f"restricted.{source}"
        if source not in spec or not table_exists(root, table):
            continue
        cols = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {scan(root, table)}").fetchall()}
        pk = spec[source].record_id
        if pk in cols:
            picked = [f"{c}" if c in cols else "NULL" for c in CONTACT_FIELDS]
            contacts += _rows(
                con,
                root,
                table,
                f"CAST({pk} AS VARCHAR) IN (SELECT unnest(?::VARCHAR[]))",
                [sorted(ids)],
                ", ".join(picked),
            )
    for mail, phone in contacts:
        person.emails |= {normalize_email(mail)} - {None}
        person.phones |= {normalize_phone(phone)} - {None}
    person.hashes |= {keyed_hash(c, key) for c in person.contacts | person.ids}
    for values in (*person.records.values(), *person.keys.values()):
        person.hashes |= {keyed_hash(v, key) for v in values}
    return person


# --- the lake -----------------------------------------------------------------------------------


def lake_tables(root: str) -> list[str]:
    """Every Delta table under the lake root, as `layer.name`."""
    from p13n.lake.duck import list_tables

    return list_tables(root)


def _lit(values) -> str:
    return ", ".join("'" + str(v).replace("'", "''") + "'" for v in sorted(values))


def _is_text(kind: str) -> bool:
    """A DuckDB column type that is one string (not a list or struct of them)."""
    return re.fullmatch(r"(VARCHAR|STRING|TEXT)(\(\d+\))?", kind.strip(), re.I) is not None


def _conditions(settings, table: str, schema: list[tuple[str, str]], person: Person) -> dict[str, str]:
    """Per column of the table, the DuckDB condition on that column alone that names the person."""
    source = table.split(".", 1)[1]
    spec = settings.identity.sources.get(source)
    out: dict[str, str] = {}
    for name, kind in schema:
        col = f'"{name}"'
        text = _is_text(kind)
        conds = []
        if spec is not None and name == spec.record_id and person.records.get(source):
            conds.append(f"CAST({col} AS VARCHAR) IN ({_lit(person.records[source])})")
        if not text:
            if conds:
                out[name] = " OR ".join(conds)
            continue
        if name in RAW_COLUMNS:
            if person.emails:
                conds.append(
                    f"list_has_any(regexp_extract_all(lower({col}), '{EMAIL_TOKEN}'), "
                    f"[{_lit(person.emails)}])"
                )
            if person.phones:
                conds.append(
                    f"list_has_any(list_transform(regexp_extract_all({col}, '{PHONE_TOKEN}'), "
                    f"x -> p13n_phone(x)), [{_lit(person.phones)}])"
                )
            if conds:
                out[name] = " OR ".join(conds)
            continue
        if person.hashes:
            conds.append(f"{col} IN ({_lit(person.hashes)})")
        if name in PERSON_ID_COLUMNS or name.endswith("customer_id"):
            conds.append(f"{col} IN ({_lit(person.ids)})")
        if person.keys.get(name):
            conds.append(f"{col} IN ({_lit(person.keys[name])})")
        if name == "record_key" and person.records:
            conds.append(f"{col} IN ({_lit(f'{s}:{r}' for s, rs in person.records.items() for r in rs)})")
        if "email" in name and not name.endswith("_hmac") and person.emails:
            conds.append(f"lower(trim({col})) IN ({_lit(person.emails)})")
        if "phone" in name and not name.endswith("_hmac") and person.phones:
            conds.append(f"p13n_phone({col}) IN ({_lit(person.phones)})")
        if conds:
            out[name] = " OR ".join(conds)
    return out


@dataclass
class TablePlan:
    table: str
    rows: int
    predicate: str  # exact values of the rows to delete, for delta-rs and DuckDB alike


def plan_lake(settings, person: Person, tables: list[str] | None = None) -> list[TablePlan]:
    """What an erasure would delete: per table, the rows that name the person and the predicate that
    deletes exactly those (`column IN (the values found)`), without changing anything."""
    con = matching_connection()
    root = settings.lake_root
    plans = []
    for table in tables or lake_tables(root):
        if table in KEEP or table == settings.privacy.requests_table:
            continue
        schema = [(r[0], r[1]) for r in con.execute(f"DESCRIBE SELECT * FROM {scan(root, table)}").fetchall()]
        conds = _conditions(settings, table, schema, person)
        if not conds:
            continue
        picks = ", ".join(f'list(DISTINCT "{c}") FILTER (WHERE {w})' for c, w in conds.items())
        found = con.execute(
            f"SELECT count(*), {picks} FROM {scan(root, table)} WHERE "
            f"{' OR '.join(f'({w})' for w in conds.values())}"
        ).fetchone()
        if not found[0]:
            continue
        kinds = dict(schema)
        parts = []
        for (name, _), values in zip(conds.items(), found[1:], strict=True):
            if values:
                text = _is_text(kinds[name])
                target = f'"{name}"' if text else f'CAST("{name}" AS VARCHAR)'
                parts.append(f"{target} IN ({_lit(values)})")
        plans.append(TablePlan(table, int(found[0]), " OR ".join(parts)))
    return plans


def match_sql(settings, table: str, person: Person) -> str | None:
    """A DuckDB condition for the table's rows that name the person (tests and the access export)."""
    plans = plan_lake(settings, person, [table])
    return plans[0].predicate if plans else None


def erase_lake(
    settings, person: Person, progress: Callable[[str], None] = print, plans: list[TablePlan] | None = None
) -> dict[str, int]:
    """Delete the person's rows from every table; vacuum and cut the history of those changed."""
    from p13n.lake.duck import delete_rows, erase_table_history

    deleted: dict[str, int] = {}
    for plan in plans if plans is not None else plan_lake(settings, person):
        deleted[plan.table] = delete_rows(settings, plan.table, plan.predicate)
        erase_table_history(settings, plan.table)
        progress(f"  {plan.table}: {deleted[plan.table]:,} rows deleted")
    return deleted


# --- serving, platforms, warehouse --------------------------------------------------------------


def erase_redis(settings, url: str, person: Person) -> int:
    """Delete the customer from every kept version and their real-time keys; returns keys touched."""
    import redis

    from p13n.serving.keys import Keys

    keys = Keys(settings.serving.namespace)
    r = redis.Redis.from_url(url)
    touched = 0
    try:
        ns = settings.serving.namespace
        for raw in r.zrange(keys.versions, 0, -1):
            v = raw.decode()
            touched += r.unlink(f"{ns}:v:{v}:c:{person.customer_id}")
            for k in r.scan_iter(f"{ns}:v:{v}:s:*", count=1000):
                touched += r.lrem(k, 0, person.customer_id)
            for k in r.scan_iter(f"{ns}:v:{v}:x:*", count=1000):
                fields = [f for f in person.identifiers if len(f) < 100]
                if fields:
                    touched += r.hdel(k, *fields)
        for k in list(r.scan_iter(f"{ns}:rt:{person.customer_id}*", count=1000)):
            touched += r.unlink(k)
        # The exposure log names customers: drop their entries.
        stream = f"{ns}:exposures"
        if r.exists(stream):
            ids = [
                i for i, f in r.xrange(stream) if f.get(b"customer_id", b"").decode() == person.customer_id
            ]
            if ids:
                touched += r.xdel(stream, *ids)
        _rewrite_persistence(r)
    finally:
        r.close()
    return touched


def _rewrite_persistence(r) -> None:
    """Redis's files on disk without the person: an append-only file is rewritten (it would keep their
    writes until then), a snapshot taken (it replaces the previous one whole)."""
    import redis

    try:
        if r.info("persistence").get("aof_enabled"):
            r.bgrewriteaof()
        elif (r.config_get("save") or {}).get("save"):
            r.bgsave()
    except redis.exceptions.ResponseError:
        pass  # one already running (it may predate the deletes): the next one, due by `save`, drops them


def erase_platforms(settings, person: Person, clients: dict | None = None) -> dict[str, int]:
    """Klaviyo's data-privacy deletion and Mailchimp's permanent delete, where the person was sent."""
    from p13n.activation.sync import destination_for

    if not table_exists(settings.lake_root, OPS_EXPORT_STATE):
        return {}
    sent = (
        duckdb_connection()
        .execute(
            f"SELECT DISTINCT destination, audience FROM {scan(settings.lake_root, OPS_EXPORT_STATE)} WHERE "
            "customer_id = ?",
            [person.customer_id],
        )
        .fetchall()
    )
    out: dict[str, int] = {}
    clients = clients or {}
    for destination, audience in sent:
        client = clients.get(destination) or destination_for(settings, destination)
        clients[destination] = client
        target = settings.activation.audiences.get(audience)
        list_id = (target.destinations.get(destination) or {}).get("list_id") if target else None
        out[destination] = out.get(destination, 0) + client.forget(sorted(person.emails), list_id)
    return out


def erase_warehouse(settings, person: Person) -> dict[str, int]:
    from p13n.sources.systems import snowflake_connection

    sf = settings.activation.snowflake
    out = {}
    with snowflake_connection(settings, sf.database, sf.schema_name) as con:
        cur = con.cursor()
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {sf.database}.{sf.schema_name}")
        cur.execute(
            f"SELECT table_name FROM {sf.database}.information_schema.tables WHERE table_schema = "
            f"'{sf.schema_name}'"
        )
        present = {r[0].upper() for r in cur.fetchall()}
        for name in sf.tables:
            target = name.split(".", 1)[1].upper()
            if target in present:
                cur.execute(
                    f"DELETE FROM {sf.database}.{sf.schema_name}.{target} WHERE CUSTOMER_ID = %s",
                    (person.customer_id,),
                )
                out[target] = int(cur.fetchone()[0])
    return out


def _names_person(cell: str, person: Person) -> bool:
    v = cell.strip()
    return bool(v) and (
        v in person.ids
        or v in person.hashes
        or normalize_email(v) in person.emails
        or normalize_phone(v) in person.phones
    )


def erase_files(settings, person: Person) -> int:
    """Files under the data directory: the CSV exports lose the lines with a cell that names the
    person (parsed, normalized: never a substring of someone else's value); access-request files about
    them and every working copy of a run's inputs (`p13n.recommend.cache`) are deleted. Returns lines,
    files and copies removed."""
    import csv
    import io

    n = 0
    base = settings.data_dir / "exports"
    for path in sorted(base.rglob("*.csv")) if base.exists() else []:
        text = path.read_text()
        rows = list(csv.reader(io.StringIO(text)))
        kept = [r for i, r in enumerate(rows) if i == 0 or not any(_names_person(c, person) for c in r)]
        if len(kept) != len(rows):
            n += len(rows) - len(kept)
            out = io.StringIO()
            csv.writer(out, lineterminator="\n").writerows(kept)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(out.getvalue())
            tmp.replace(path)
    # Working copies of a run's inputs (recomputable) go whole, whoever they hold.
    from p13n.recommend.cache import clear

    n += clear(settings)
    # Access-request files about the person (delivered to them already) go whole.
    folder = settings.data_dir / "privacy"
    for path in sorted(folder.glob("*.json")) if folder.exists() else []:
        try:
            about = json.loads(path.read_text()).get("customer_id")
        except (ValueError, AttributeError):
            continue
        if about in person.ids:
            path.unlink()
            n += 1
    return n


# --- the whole request --------------------------------------------------------------------------


def preview(
    settings, customer_id: str | None = None, email: str | None = None
) -> tuple[Person, list[TablePlan]]:
    """Who the request resolves to and what the lake would lose (`--dry-run`): nothing is changed."""
    from p13n.secrets import pii_key

    person = find_person(settings, pii_key(settings), customer_id, email)
    return person, plan_lake(settings, person)


def forget(
    settings,
    request_id: str,
    customer_id: str | None = None,
    email: str | None = None,
    redis_url: str | None = None,
    platforms: bool = True,
    clients: dict | None = None,
    progress: Callable[[str], None] = print,
) -> dict:
    """Erase one person everywhere (see the module docstring); returns the audit row.

    Refuses before touching anything when the request does not resolve to one known customer or
    when the lake would lose more than `privacy.max_rows_per_request` rows. The customer is recorded
    in `ops.erasures` only once everything succeeded; a failed erasure keeps its identifiers in
    `restricted.privacy_pending` so that a retry finds what is left."""
    import pandas as pd

    from p13n.lake.duck import delete_rows, erase_table_history, literal, write_arrow
    from p13n.secrets import pii_key

    key = pii_key(settings)
    t0 = time.perf_counter()
    try:
        person = find_person(settings, key, customer_id, email)
    except AlreadyErased as e:  # a rerun: nothing left, nothing to record again
        progress(f"erasure {request_id}: {e}; nothing left to do")
        return {"request_id": request_id, "customer_id": customer_id, "status": "already erased"}
    plans = plan_lake(settings, person)
    total, cap = sum(p.rows for p in plans), settings.privacy.max_rows_per_request
    if total > cap:
        raise ErasureError(
            f"customer {person.customer_id}: the erasure would delete {total:,} rows, more than "
            f"privacy.max_rows_per_request ({cap:,}); nothing was deleted (see --dry-run)"
        )
    progress(f"erasure {request_id}: customer {person.customer_id}, {total:,} rows in {len(plans)} tables")
    now = dt.datetime.now(dt.UTC)
    restricted_dir(settings, "restricted")
    append_rows(
        settings,
        RESTRICTED_PRIVACY_PENDING,
        [
            {
                "request_id": request_id,
                "customer_id": person.customer_id,
                "person": person.to_json(),
                "added_at": now,
            }
        ],
    )
    # Suppressions first: from here on the stream and ingestion drop the person's records.
    hashes = sorted({keyed_hash(i, key) for i in person.identifiers} | person.hashes)
    append_rows(
        settings, OPS_SUPPRESSIONS, [{"hash": h, "request_id": request_id, "added_at": now} for h in hashes]
    )
    audit = {
        "request_id": request_id,
        "customer_id": person.customer_id,
        "requested_at": now,
        "status": "running",
    }
    try:
        # The platforms first: where the person was sent is in ops.export_state, which the lake loses.
        sent = erase_platforms(settings, person, clients) if platforms else {}
        redis_keys = erase_redis(settings, redis_url, person) if redis_url else 0
        warehouse = erase_warehouse(settings, person)
        lake = erase_lake(settings, person, progress, plans)
        files = erase_files(settings, person)
        erased = {"customer_id": person.customer_id, "request_id": request_id, "erased_at": now}
        append_rows(settings, OPS_ERASURES, [erased], schema_mode="merge")
        delete_rows(settings, RESTRICTED_PRIVACY_PENDING, f"customer_id = {literal(person.customer_id)}")
        erase_table_history(settings, RESTRICTED_PRIVACY_PENDING)
        audit |= {
            "status": "completed",
            "lake": json.dumps(lake),
            "redis_keys": redis_keys,
            "platforms": json.dumps(sent),
            "warehouse": json.dumps(warehouse),
            "export_lines": files,
        }
    except Exception as e:
        audit |= {"status": "failed", "error": f"{type(e).__name__}: {str(e)[:300]}"}
        raise
    finally:
        audit["seconds"] = round(time.perf_counter() - t0, 2)
        audit["completed_at"] = dt.datetime.now(dt.UTC)
        row = {
            k: audit.get(k)
            for k in (
                "request_id",
                "customer_id",
                "requested_at",
                "completed_at",
                "status",
                "lake",
                "redis_keys",
                "platforms",
                "warehouse",
                "export_lines",
                "seconds",
                "error",
            )
        }
        frame = pd.DataFrame([row]).astype(
            {
                "lake": "string",
                "platforms": "string",
                "warehouse": "string",
                "error": "string",
                "redis_keys": "Int64",
                "export_lines": "Int64",
            }
        )
        write_arrow(settings, OPS_PRIVACY_AUDIT, frame)
    progress(f"erasure {request_id}: {audit['status']} in {audit['seconds']}s")
    return audit


def restricted_dir(settings, layer: str) -> None:
    """A restricted zone's folder, owner-only (the files inside are then unreadable to others)."""
    root = settings.lake_root
    if "://" not in root or root.startswith("file://"):
        path = Path(root.removeprefix("file://")) / layer
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o700)


def suppressed_hashes(settings) -> set[str]:
    if not table_exists(settings.lake_root, OPS_SUPPRESSIONS):
        return set()
    return {
        r[0]
        for r in duckdb_connection()
        .execute(f"SELECT hash FROM {scan(settings.lake_root, OPS_SUPPRESSIONS)}")
        .fetchall()
    }
