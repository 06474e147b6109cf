"""Privacy requests: the CLI (`p13n privacy ...`) and the `privacy_requests` DAG.

Requests wait in `privacy.requests_table` (request_id, kind forget|access, customer_id or email,
requested_at, status pending|done|failed). Processing a request fills in `completed_at`, the
`status` and the `detail` (for access: the file written), and blanks the email it named: the
request log keeps no contact data once served.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid

from p13n.config import get_settings
from p13n.lake.duck import duckdb_connection, scan, table_exists, table_uri
from p13n.orchestration import progress

COLUMNS = ["request_id", "kind", "customer_id", "email", "requested_at", "status", "completed_at", "detail"]


def request(kind: str, customer_id: str | None = None, email: str | None = None) -> str:
    """Queue a request for the DAG; returns its id."""
    from deltalake import write_deltalake

    if kind not in ("forget", "access"):
        raise ValueError(f"a privacy request is 'forget' or 'access', not {kind!r}")
    if not (customer_id or email):
        raise ValueError("name the person: --customer or --email")
    settings = get_settings()
    rid = f"{kind}-{uuid.uuid4().hex[:12]}"
    import pyarrow as pa

    schema = pa.schema([("request_id", pa.string()), ("kind", pa.string()), ("customer_id", pa.string()),
                        ("email", pa.string()), ("requested_at", pa.timestamp("us", tz="UTC")),
                        ("status", pa.string()), ("completed_at", pa.timestamp("us", tz="UTC")),
                        ("detail", pa.string())])  # fmt: skip
    row = pa.Table.from_pylist([{"request_id": rid, "kind": kind, "customer_id": customer_id, "email": email,
                                 "requested_at": dt.datetime.now(dt.UTC), "status": "pending",
                                 "completed_at": None, "detail": None}], schema=schema)  # fmt: skip
    write_deltalake(table_uri(settings.lake_root, settings.privacy.requests_table), row, mode="append")
    return rid


def run_now(kind: str, customer_id: str | None, email: str | None, request_id: str | None = None) -> dict:
    """Serve one request at once (what the DAG does for each pending one)."""
    from p13n.privacy.access import export_person
    from p13n.privacy.erasure import forget
    from p13n.services.redis import redis_for

    settings = get_settings()
    rid = request_id or f"{kind}-{uuid.uuid4().hex[:12]}"
    with redis_for(settings) as url:
        if kind == "forget":
            keys = (getattr(settings.activation, p).credential_env for p in ("klaviyo", "mailchimp"))
            platforms = any(os.environ.get(k) for k in keys)
            return forget(settings, rid, customer_id=customer_id, email=email, redis_url=url, platforms=platforms,
                          progress=progress)  # fmt: skip
        path, summary = export_person(settings, rid, customer_id=customer_id, email=email, redis_url=url)
        progress(f"access {rid}: {sum(summary.values()):,} rows from {len(summary)} tables written to {path}")
        return {"request_id": rid, "path": str(path), "tables": summary}


def process_requests() -> dict:
    """Serve every pending request, oldest first; one failing does not stop the others."""
    from deltalake import DeltaTable

    settings = get_settings()
    name = settings.privacy.requests_table
    if not table_exists(settings.lake_root, name):
        progress("no privacy requests table yet: nothing to do")
        return {"done": 0, "failed": 0}
    pending = duckdb_connection().execute(
        f"SELECT request_id, kind, customer_id, email FROM {scan(settings.lake_root, name)} "
        "WHERE status = 'pending' ORDER BY requested_at").fetchall()  # fmt: skip
    done = failed = 0
    for rid, kind, customer_id, email in pending:
        try:
            out = run_now(kind, customer_id, email, rid)
            status, detail = "done", out.get("path") or out.get("status")
            done += 1
        except Exception as e:  # noqa: BLE001 - recorded on the request, raised at the end
            status, detail = "failed", f"{type(e).__name__}: {str(e)[:300]}"
            failed += 1
        DeltaTable(table_uri(settings.lake_root, name)).update(
            predicate=f"request_id = '{rid}'",
            updates={"status": f"'{status}'", "completed_at": "now()", "email": "NULL",
                     "detail": "'" + str(detail).replace("'", "''") + "'"},
        )  # fmt: skip
        progress(f"privacy request {rid} ({kind}): {status}")
    if failed:
        raise RuntimeError(f"{failed} of {len(pending)} privacy requests failed (see {name}.detail)")
    return {"done": done, "failed": failed}
