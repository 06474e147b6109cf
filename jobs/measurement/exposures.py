"""The read API's experiment exposures, from their Redis stream into `silver.exposures`, exactly once.

The API appends an exposure (experiment, arm, list served, the items in it, version, customer, time)
to the stream `<namespace>:exposures` for every request an experiment intercepts. Landing reads the
stream after the last landed entry and commits the rows together with that entry's position as a
Delta transaction (app id `redis:<stream>`), the way the Kafka path commits its offsets: a landing
killed before its commit lands the same entries again next time, one killed after it starts from the
committed position, so no exposure is lost or counted twice. Landed entries are then trimmed from
the stream, which keeps Redis' memory flat.

Only known customers are kept: an exposure of a customer who is not in `gold.customer_profiles` (an
id made up by a client) or who was erased since (`ops.erasures`) is dropped at landing, counted.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pyarrow as pa

from p13n.lake.tables import GOLD_CUSTOMER_PROFILES, OPS_ERASURES, SILVER_EXPOSURES

SCHEMA = pa.schema(
    [
        ("exposure_id", pa.string()),  # the stream entry's id
        ("experiment", pa.string()),
        ("arm", pa.string()),
        ("list_type", pa.string()),  # the list served (the arm's)
        ("version", pa.string()),  # the published version: its lists are gold.recommendations' rows
        ("items", pa.list_(pa.string())),  # the skus served, in order (after fallbacks, cart excluded)
        ("fallback", pa.string()),  # why another list was served (unknown_customer, no_<type>_list)
        ("customer_id", pa.string()),
        ("exposed_at", pa.timestamp("us", tz="UTC")),
        ("exposure_date", pa.date32()),
    ]
)
_SEQ_BITS = 20  # a stream id "ms-seq" as one Delta transaction version: ms << 20 | seq


@dataclass
class Landed:
    read: int = 0
    landed: int = 0
    unknown: int = 0
    last_id: str | None = None

    def text(self) -> str:
        return (
            f"exposures: {self.read:,} read from Redis, {self.landed:,} landed in {SILVER_EXPOSURES}, "
            f"{self.unknown:,} dropped (unknown or erased customer)"
        )


def _version(entry_id: str) -> int:
    ms, _, seq = entry_id.partition("-")
    return (int(ms) << _SEQ_BITS) | min(int(seq or 0), (1 << _SEQ_BITS) - 1)


def _entry_id(version: int) -> str:
    return f"{version >> _SEQ_BITS}-{version & ((1 << _SEQ_BITS) - 1)}"


def app_id(stream: str) -> str:
    return f"redis:{stream}"


def landed_position(settings, stream: str) -> str | None:
    """The id of the last stream entry landed (from the table's Delta transactions), or None."""
    from p13n.lake.duck import open_table, table_exists

    if not table_exists(settings.lake_root, SILVER_EXPOSURES):
        return None
    version = open_table(settings, SILVER_EXPOSURES).transaction_version(app_id(stream))
    return _entry_id(version) if version is not None else None


def to_rows(entries: list[tuple[bytes, dict]]) -> pa.Table:
    """Stream entries (id, fields) → rows of `silver.exposures` (pure)."""
    cols: dict[str, list] = {n: [] for n in SCHEMA.names}
    for entry_id, fields in entries:
        f = {
            k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
            for k, v in fields.items()
        }
        at = dt.datetime.fromtimestamp(float(f.get("ts") or 0), dt.UTC)
        cols["exposure_id"].append(entry_id.decode() if isinstance(entry_id, bytes) else entry_id)
        for name in ("experiment", "arm", "list_type", "version", "customer_id"):
            cols[name].append(f.get(name))
        items = f.get("items")  # None: an entry logged before the API logged its items
        cols["items"].append([x for x in items.split(",") if x] if items is not None else None)
        cols["fallback"].append(f.get("fallback") or None)
        cols["exposed_at"].append(at)
        cols["exposure_date"].append(at.date())
    return pa.table(cols, schema=SCHEMA)


def known_customers(settings, customer_ids: list[str]) -> set[str]:
    """The ids among `customer_ids` that are current customers and were never erased."""
    from p13n.lake.duck import duckdb_connection, scan, table_exists

    root = settings.lake_root
    if not customer_ids or not table_exists(root, GOLD_CUSTOMER_PROFILES):
        return set()
    erased = (
        f"AND customer_id NOT IN (SELECT customer_id FROM {scan(root, OPS_ERASURES)})"
        if table_exists(root, OPS_ERASURES)
        else ""
    )
    rows = (
        duckdb_connection(settings=settings)
        .execute(
            f"SELECT customer_id FROM {scan(root, GOLD_CUSTOMER_PROFILES)} "
            f"WHERE customer_id IN (SELECT unnest(?::VARCHAR[])) {erased}",
            [sorted(set(customer_ids))],
        )
        .fetchall()
    )
    return {r[0] for r in rows}


def land_exposures(settings, client, stream: str, *, batch: int = 50_000, progress=None) -> Landed:
    """Land every exposure of `stream` after the committed position; trim what was landed."""
    from p13n.lake.duck import table_exists, write_arrow

    out = Landed()
    start = landed_position(settings, stream)
    while True:
        entries = client.xrange(stream, min=f"({start}" if start else "-", count=batch)
        if not entries:
            break
        rows = to_rows(entries)
        out.read += rows.num_rows
        known = known_customers(settings, rows.column("customer_id").to_pylist())
        keep = pa.array([c in known for c in rows.column("customer_id").to_pylist()])
        kept = rows.filter(keep)
        out.unknown += rows.num_rows - kept.num_rows
        last = entries[-1][0]
        last = last.decode() if isinstance(last, bytes) else last
        txns = [(app_id(stream), _version(last))]
        if table_exists(settings.lake_root, SILVER_EXPOSURES):  # merge: tables from before `items`
            write_arrow(settings, SILVER_EXPOSURES, kept, txns=txns, schema_mode="merge")
        else:
            write_arrow(settings, SILVER_EXPOSURES, kept, partition_by=["exposure_date"], txns=txns)
        out.landed += kept.num_rows
        start = out.last_id = last
        if progress:
            progress(f"  {out.landed:,} exposures landed (up to entry {last})")
    if start:
        client.xtrim(stream, minid=_entry_id(_version(start) + 1), approximate=False)
    return out
