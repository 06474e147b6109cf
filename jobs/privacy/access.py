"""The right of access: everything p13n holds about one person, in one readable file.

`export_person` gathers the person's rows from every lake table (the rows an erasure would delete:
`erasure.plan_lake`), their serving profile
and real-time profile from Redis, and where they were exported; and writes them as one JSON document
(tables by layer, rows as objects) with owner-only permissions under `<data_dir>/privacy/`. The file
holds the person's raw data: it is for the person, delivered through the request's channel.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

from p13n.lake.duck import scan
from p13n.privacy.erasure import find_person, matching_connection, plan_lake


def export_person(
    settings,
    request_id: str,
    customer_id: str | None = None,
    email: str | None = None,
    redis_url: str | None = None,
    out: Path | None = None,
) -> tuple[Path, dict]:
    from p13n.secrets import pii_key

    person = find_person(settings, pii_key(settings), customer_id, email)
    root = settings.lake_root
    con = matching_connection()
    tables: dict[str, list[dict]] = {}
    for plan in plan_lake(settings, person):  # the rows an erasure would delete: the same matching
        rows = con.execute(f"SELECT * FROM {scan(root, plan.table)} WHERE {plan.predicate}").df()
        tables[plan.table] = json.loads(
            rows.to_json(orient="records", date_format="iso", default_handler=str)
        )
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
