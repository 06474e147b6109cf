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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from p13n.lake.duck import duckdb_connection, scan, table_exists, table_uri

ERASURES, SUPPRESSIONS, AUDIT = "ops.erasures", "ops.suppressions", "ops.privacy_audit"
KEEP = {ERASURES, SUPPRESSIONS, AUDIT}  # the registries: they must outlive the erasure
RAW_COLUMNS = ("_raw", "raw", "_extra")
CONTACT_FIELDS = ("email", "phone")
LAYERS = ("bronze", "silver", "quarantine", "restricted", "gold", "ops")


class ErasureError(RuntimeError):
    pass


@dataclass
class Person:
    customer_id: str
    identifiers: set[str] = field(default_factory=set)  # matched by equality in any text column
    contacts: set[str] = field(default_factory=set)  # raw contact values: also searched in raw records
    emails: set[str] = field(default_factory=set)


def keyed_hash(value: str, key: bytes) -> str:
    """HMAC-SHA256 hex, the same function the silver pseudonyms use (`standardize.hmac_sha256`)."""
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def find_person(settings, key: bytes, customer_id: str | None = None, email: str | None = None) -> Person:
    con = duckdb_connection()
    root = settings.lake_root
    if not customer_id:
        if not email:
            raise ErasureError("name the person: a customer id or an email address")
        found = []
        if table_exists(root, "restricted.customer_profiles"):
            found = con.execute(
                f"SELECT DISTINCT customer_id FROM {scan(root, 'restricted.customer_profiles')} "
                "WHERE lower(trim(email)) = lower(trim(?))", [email]).fetchall()  # fmt: skip
        if not found and table_exists(root, "gold.identity_keys"):
            hashes = [keyed_hash(email, key), keyed_hash(email.strip().lower(), key)]
            found = con.execute(
                f"SELECT DISTINCT customer_id FROM {scan(root, 'gold.identity_keys')} "
                "WHERE key_type = 'email_hmac' AND key_value IN (SELECT unnest(?::VARCHAR[]))", [hashes]).fetchall()  # fmt: skip
        if len(found) != 1:
            raise ErasureError(
                f"the email address matches {len(found)} customers"
                + ("" if found else " (nothing to erase?)")
            )
        customer_id = found[0][0]
    person = Person(customer_id, {customer_id})
    records: list[tuple[str, str]] = []
    if table_exists(root, "gold.identity_graph"):
        records = con.execute(
            f"SELECT DISTINCT source, record_id FROM {scan(root, 'gold.identity_graph')} WHERE customer_id = ?",
            [customer_id]).fetchall()  # fmt: skip
        person.identifiers |= {r for _, r in records}
        person.identifiers |= {
            r[0] for r in con.execute(
                f"SELECT DISTINCT record_key FROM {scan(root, 'gold.identity_graph')} WHERE customer_id = ?",
                [customer_id]).fetchall()}  # fmt: skip
    if table_exists(root, "gold.identity_keys"):
        person.identifiers |= {
            r[0] for r in con.execute(
                f"SELECT key_value FROM {scan(root, 'gold.identity_keys')} WHERE customer_id = ?", [customer_id]
            ).fetchall()}  # fmt: skip
    if table_exists(root, "gold.customer_aliases"):
        person.identifiers |= {
            r[0] for r in con.execute(
                f"SELECT alias_id FROM {scan(root, 'gold.customer_aliases')} WHERE customer_id = ?", [customer_id]
            ).fetchall()}  # fmt: skip
    # Raw contact values: the golden record's, and every identity record's in restricted.
    contacts: set[str] = set()
    if table_exists(root, "restricted.customer_profiles"):
        for row in con.execute(
            f"SELECT email, phone FROM {scan(root, 'restricted.customer_profiles')} WHERE customer_id = ?", [customer_id]
        ).fetchall():  # fmt: skip
            contacts |= {v for v in row if v}
            person.emails |= {row[0]} if row[0] else set()
    by_source: dict[str, list[str]] = {}
    for source, record_id in records:
        by_source.setdefault(source, []).append(record_id)
    spec = settings.identity.sources
    for source, ids in by_source.items():
        table = f"restricted.{source}"
        if source not in spec or not table_exists(root, table):
            continue
        cols = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {scan(root, table)}").fetchall()}
        wanted = [c for c in CONTACT_FIELDS if c in cols]
        pk = spec[source].record_id
        if not wanted or pk not in cols:
            continue
        for row in con.execute(
            f"SELECT {', '.join(wanted)} FROM {scan(root, table)} WHERE CAST({pk} AS VARCHAR) IN (SELECT unnest(?::VARCHAR[]))",
            [ids]).fetchall():  # fmt: skip
            contacts |= {v for v in row if v}
            if "email" in wanted and row[wanted.index("email")]:
                person.emails.add(row[wanted.index("email")])
    person.contacts = {c for c in contacts if len(c) >= 6}
    person.identifiers |= person.contacts
    person.identifiers |= {keyed_hash(c, key) for c in contacts}
    person.identifiers |= {keyed_hash(c.strip().lower(), key) for c in contacts}
    person.identifiers = {i for i in person.identifiers if i and len(i) >= 6}
    return person


# --- the lake -----------------------------------------------------------------------------------


def lake_tables(root: str) -> list[str]:
    """Every Delta table under the lake root (local paths), as `layer.name`."""
    out = []
    for layer in LAYERS:
        base = Path(root) / layer
        if base.is_dir():
            out += [f"{layer}.{p.name}" for p in sorted(base.iterdir()) if (p / "_delta_log").is_dir()]
    return out


def _sql_list(values) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in sorted(values))


def person_predicate(schema, person: Person) -> str | None:
    """SQL (DuckDB and delta-rs alike) matching a table's rows that hold one of the person's
    identifiers in a text column, or one of their contact values inside a raw-record column."""
    import pyarrow as pa

    schema = pa.schema(schema)  # delta-rs hands an Arrow schema over the C data interface
    text = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
            or str(f.type) in ("string", "large_string", "string_view")]  # fmt: skip
    idents = _sql_list(person.identifiers)
    conds = [f'"{c}" IN ({idents})' for c in text if c not in RAW_COLUMNS]
    for c in (c for c in text if c in RAW_COLUMNS):
        conds += [
            f"strpos(\"{c}\", '{v.replace(chr(39), chr(39) * 2)}') > 0" for v in sorted(person.contacts)
        ]
    return " OR ".join(conds) or None


def erase_lake(settings, person: Person, progress: Callable[[str], None] = print) -> dict[str, int]:
    """Delete the person's rows from every table; vacuum and cut the history of those changed."""
    from deltalake import DeltaTable

    root = settings.lake_root
    deleted: dict[str, int] = {}
    for table in lake_tables(root):
        if table in KEEP:
            continue
        dt_ = DeltaTable(table_uri(root, table))
        predicate = person_predicate(dt_.schema().to_arrow(), person)
        if not predicate:
            continue
        n = (
            duckdb_connection()
            .execute(f"SELECT count(*) FROM {scan(root, table)} WHERE {predicate}")
            .fetchone()[0]
        )
        if not n:
            continue
        dt_.delete(predicate)
        deleted[table] = int(n)
        _erase_history(settings, dt_)
        progress(f"  {table}: {n:,} rows deleted")
    return deleted


def _erase_history(settings, table) -> None:
    """Vacuum the files the delete replaced; with `privacy.truncate_history`, checkpoint and drop the
    older log entries (their file statistics may hold the person's values)."""
    from deltalake import DeltaTable

    cfg = settings.privacy
    table = DeltaTable(table.table_uri)
    table.vacuum(retention_hours=cfg.vacuum_retention_hours, enforce_retention_duration=False, dry_run=False)
    if not cfg.truncate_history:
        return
    table.create_checkpoint()
    version = table.version()
    log = Path(table.table_uri.removeprefix("file://")) / "_delta_log"
    for f in log.iterdir():
        stem = f.name.split(".", 1)[0]
        if stem.isdigit() and int(stem) < version:
            f.unlink()


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
    finally:
        r.close()
    return touched


def erase_platforms(settings, person: Person, clients: dict | None = None) -> dict[str, int]:
    """Klaviyo's data-privacy deletion and Mailchimp's permanent delete, where the person was sent."""
    from p13n.activation.sync import destination_for

    if not table_exists(settings.lake_root, "ops.export_state"):
        return {}
    sent = duckdb_connection().execute(
        f"SELECT DISTINCT destination, audience FROM {scan(settings.lake_root, 'ops.export_state')} WHERE customer_id = ?",
        [person.customer_id]).fetchall()  # fmt: skip
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
            f"SELECT table_name FROM {sf.database}.information_schema.tables WHERE table_schema = '{sf.schema_name}'"
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


def erase_files(settings, person: Person) -> int:
    """Files under the data directory: the CSV exports lose the lines that hold the person's contact
    values; access-request files about them are deleted. Returns lines and files removed."""
    n = 0
    base = settings.data_dir / "exports"
    for path in base.rglob("*.csv") if base.exists() else []:
        lines = path.read_text().splitlines(keepends=True)
        kept = [ln for ln in lines if not any(c in ln for c in person.contacts | {person.customer_id})]
        if len(kept) != len(lines):
            n += len(lines) - len(kept)
            path.write_text("".join(kept))
    # Access-request files about the person (delivered to them already) go whole.
    for path in (
        (settings.data_dir / "privacy").glob("*.json") if (settings.data_dir / "privacy").exists() else []
    ):
        text = path.read_text()
        if any(c in text for c in person.contacts | {person.customer_id}):
            path.unlink()
            n += 1
    return n


# --- the whole request --------------------------------------------------------------------------


def forget(settings, request_id: str, customer_id: str | None = None, email: str | None = None,
           redis_url: str | None = None, platforms: bool = True, clients: dict | None = None,
           progress: Callable[[str], None] = print) -> dict:  # fmt: skip
    """Erase one person everywhere (see the module docstring); returns the audit row."""
    import pandas as pd
    from deltalake import write_deltalake

    from p13n.secrets import pii_key

    key = pii_key(settings)
    t0 = time.perf_counter()
    person = find_person(settings, key, customer_id, email)
    progress(f"erasure {request_id}: customer {person.customer_id}, {len(person.identifiers)} identifiers")
    root = settings.lake_root
    now = dt.datetime.now(dt.UTC)
    # Registries first: from here on every job skips the customer and the stream drops their events.
    write_deltalake(table_uri(root, ERASURES), pd.DataFrame(
        {"customer_id": [person.customer_id], "request_id": [request_id], "erased_at": [now]}), mode="append",
        schema_mode="merge")  # fmt: skip
    write_deltalake(table_uri(root, SUPPRESSIONS), pd.DataFrame(
        {"hash": sorted(keyed_hash(i, key) for i in person.identifiers), "request_id": request_id, "added_at": now}),
        mode="append")  # fmt: skip
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
        lake = erase_lake(settings, person, progress)
        files = erase_files(settings, person)
        audit |= {"status": "completed", "lake": json.dumps(lake), "redis_keys": redis_keys,
                  "platforms": json.dumps(sent), "warehouse": json.dumps(warehouse), "export_lines": files}  # fmt: skip
    except Exception as e:
        audit |= {"status": "failed", "error": f"{type(e).__name__}: {str(e)[:300]}"}
        raise
    finally:
        audit["seconds"] = round(time.perf_counter() - t0, 2)
        audit["completed_at"] = dt.datetime.now(dt.UTC)
        row = {k: audit.get(k) for k in ("request_id", "customer_id", "requested_at", "completed_at", "status",
                                         "lake", "redis_keys", "platforms", "warehouse", "export_lines",
                                         "seconds", "error")}  # fmt: skip
        frame = pd.DataFrame([row]).astype({"lake": "string", "platforms": "string", "warehouse": "string",
                                            "error": "string", "redis_keys": "Int64", "export_lines": "Int64"})  # fmt: skip
        write_deltalake(table_uri(root, AUDIT), frame, mode="append")
    progress(f"erasure {request_id}: {audit['status']} in {audit['seconds']}s")
    return audit


def suppressed_hashes(settings) -> set[str]:
    if not table_exists(settings.lake_root, SUPPRESSIONS):
        return set()
    return {
        r[0]
        for r in duckdb_connection()
        .execute(f"SELECT hash FROM {scan(settings.lake_root, SUPPRESSIONS)}")
        .fetchall()
    }
