"""The right of access: everything p13n holds about one person, in one readable file.

`export_person` gathers the person's rows from every lake table (the same matching as erasure:
their identifiers in any text column, their contact values in raw records), their serving profile
and real-time profile from Redis, and where they were exported; and writes them as one JSON document
(tables by layer, rows as objects) with owner-only permissions under `<data_dir>/privacy/`. The file
holds the person's raw data: it is for the person, delivered through the request's channel.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

from p13n.lake.duck import duckdb_connection, scan, table_uri
from p13n.privacy.erasure import KEEP, find_person, lake_tables, person_predicate


def export_person(settings, request_id: str, customer_id: str | None = None, email: str | None = None,
                  redis_url: str | None = None, out: Path | None = None) -> tuple[Path, dict]:  # fmt: skip
    from deltalake import DeltaTable

    from p13n.secrets import pii_key

    person = find_person(settings, pii_key(settings), customer_id, email)
    root = settings.lake_root
    con = duckdb_connection()
    tables: dict[str, list[dict]] = {}
    for table in lake_tables(root):
        if table in KEEP:
            continue
        predicate = person_predicate(DeltaTable(table_uri(root, table)).schema().to_arrow(), person)
        if not predicate:
            continue
        rows = con.execute(f"SELECT * FROM {scan(root, table)} WHERE {predicate}").df()
        if len(rows):
            tables[table] = json.loads(rows.to_json(orient="records", date_format="iso", default_handler=str))
    doc = {
        "request_id": request_id,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(),
        "customer_id": person.customer_id,
        "summary": {t: len(r) for t, r in tables.items()},
        "tables": tables,
        "serving": _redis_profile(settings, redis_url, person.customer_id) if redis_url else None,
    }
    path = out or settings.data_dir / "privacy" / f"{request_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2, default=str)
    return path, doc["summary"]


def _redis_profile(settings, url: str, customer_id: str) -> dict:
    import redis

    ns = settings.serving.namespace
    r = redis.Redis.from_url(url, decode_responses=True)
    try:
        live = r.get(f"{ns}:live")
        out = {"version": live}
        if live:
            out["lists_and_profile"] = r.hgetall(f"{ns}:v:{live}:c:{customer_id}")
        out["realtime"] = r.hgetall(f"{ns}:rt:{customer_id}")
        for part in ("viewed", "cart"):
            out[f"realtime_{part}"] = r.zrange(f"{ns}:rt:{customer_id}:{part}", 0, -1, withscores=True)
        return out
    finally:
        r.close()
