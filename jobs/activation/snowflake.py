"""Gold tables synced to Snowflake for analysts and finance.

Per table (`activation.snowflake.tables`): the as-of date's rows (all rows for undated tables) are
loaded into a staging table `<TABLE>_STAGE` (replaced each run), then one MERGE on the business key
inserts new rows and updates only rows whose values changed; rows of that date (or, undated, of the
whole table) the lake no longer has are deleted, so erasures reach the warehouse too. A rerun with the
same data inserts, updates and deletes nothing. Columns listed in `exclude` never leave the lake (the
profiles' record pointers), and the profiles carry HMAC pseudonyms only: no raw PII is synced.
Nested values are synced as JSON text; timestamps as TIMESTAMP_NTZ in UTC.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable

import pyarrow as pa

from p13n.lake.duck import duckdb_connection, scan, table_exists

# Raw contact data never leaves the lake, whatever a table holds (the pseudonyms `*_hmac` do).
CONTACT_COLUMNS = {"email", "phone", "first_name", "last_name", "street", "postal_code", "birth_date"}


def snowflake_type(t: pa.DataType) -> str:
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_integer(t):
        return "NUMBER(38,0)"
    if pa.types.is_floating(t):
        return "FLOAT"
    if pa.types.is_decimal(t):
        return f"NUMBER({t.precision},{t.scale})"
    if pa.types.is_date(t):
        return "DATE"
    if pa.types.is_timestamp(t):
        return "TIMESTAMP_NTZ"
    return "VARCHAR"


def to_frame(table: pa.Table):
    """Arrow rows as the pandas frame write_pandas loads: upper-case names, UTC-naive timestamps,
    nested values as JSON text."""
    cols = {}
    for f in table.schema:
        col = table[f.name]
        if pa.types.is_timestamp(f.type) and f.type.tz:
            col = col.cast(pa.timestamp("us", tz="UTC")).cast(pa.timestamp("us"))
        if pa.types.is_nested(f.type):
            col = pa.array(
                [None if v is None else json.dumps(v, default=str) for v in col.to_pylist()], pa.string()
            )
        cols[f.name.upper()] = col
    return pa.table(cols).to_pandas(date_as_object=True)


def merge_sql(target: str, stage: str, columns: list[str], keys: list[str]) -> str:
    on = " AND ".join(f"t.{k} = s.{k}" for k in keys)
    values = [c for c in columns if c not in keys]
    changed = " OR ".join(f"t.{c} IS DISTINCT FROM s.{c}" for c in values) or "false"
    sets = ", ".join(f"{c} = s.{c}" for c in values)
    update = f"WHEN MATCHED AND ({changed}) THEN UPDATE SET {sets} " if values else ""
    return (
        f"MERGE INTO {target} t USING {stage} s ON {on} {update}"
        f"WHEN NOT MATCHED THEN INSERT ({', '.join(columns)}) VALUES ({', '.join('s.' + c for c in columns)})"
    )


def sync_tables(settings, as_of: dt.date, progress: Callable[[str], None] = print) -> dict:
    """Sync every configured table; returns {table: {rows, inserted, updated, deleted, seconds}}."""
    import snowflake.connector.pandas_tools as pandas_tools  # looked up at call time: fakesnow patches it

    from p13n.sources.systems import snowflake_connection

    sf = settings.activation.snowflake
    con_duck = duckdb_connection()
    out = {}
    with snowflake_connection(settings, sf.database, sf.schema_name) as con:
        cur = con.cursor()
        cur.execute(f"CREATE DATABASE IF NOT EXISTS {sf.database}")
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {sf.database}.{sf.schema_name}")
        cur.execute(f"USE SCHEMA {sf.database}.{sf.schema_name}")
        for name, spec in sf.tables.items():
            if not table_exists(settings.lake_root, name):
                progress(f"snowflake: {name} does not exist in the lake yet; skipped")
                continue
            t0 = time.perf_counter()
            where = f"WHERE as_of_date = DATE '{as_of.isoformat()}'" if spec.dated else ""
            present = [
                r[0]
                for r in con_duck.execute(
                    f"DESCRIBE SELECT * FROM {scan(settings.lake_root, name)}"
                ).fetchall()
            ]
            dropped = [c for c in present if c in spec.exclude or c in CONTACT_COLUMNS]
            exclude = f" EXCLUDE ({', '.join(dropped)})" if dropped else ""
            rows = con_duck.execute(
                f"SELECT *{exclude} FROM {scan(settings.lake_root, name)} {where}"
            ).fetch_arrow_table()
            frame = to_frame(rows)
            target = name.split(".", 1)[1].upper()
            stage = f"{target}_STAGE"
            columns = list(frame.columns)
            keys = [k.upper() for k in spec.keys]
            ddl = ", ".join(f"{f.name.upper()} {snowflake_type(f.type)}" for f in rows.schema)
            cur.execute(f"CREATE OR REPLACE TABLE {stage} ({ddl})")
            cur.execute(f"CREATE TABLE IF NOT EXISTS {target} ({ddl})")
            if len(frame):
                pandas_tools.write_pandas(con, frame, stage)
            cur.execute(merge_sql(target, stage, columns, keys))
            inserted, updated = (int(x) for x in cur.fetchone())
            match = " AND ".join(f"s.{k} = t.{k}" for k in keys)
            scope = f"t.AS_OF_DATE = '{as_of.isoformat()}' AND " if spec.dated else ""
            cur.execute(
                f"DELETE FROM {target} t WHERE {scope}NOT EXISTS (SELECT 1 FROM {stage} s WHERE {match})"
            )
            deleted = int(cur.fetchone()[0])
            cur.execute(f"DROP TABLE IF EXISTS {stage}")
            out[name] = {
                "rows": len(frame),
                "inserted": inserted,
                "updated": updated,
                "deleted": deleted,
                "seconds": round(time.perf_counter() - t0, 2),
            }
            progress(
                f"snowflake {sf.database}.{sf.schema_name}.{target}: {len(frame):,} rows, {inserted:,} "
                f"inserted, {updated:,} updated, {deleted:,} deleted ({out[name]['seconds']}s)"
            )
    return out
