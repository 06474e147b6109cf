"""Privacy requests: the CLI (`p13n privacy ...`) and the `privacy_requests` DAG.

The queue is `privacy.requests_table` (request_id, kind forget|access, customer_id, requested_at,
status pending|done|failed, completed_at, detail): no contact data, ever. A request made by email
address keeps the address in `restricted.privacy_requests` (owner-only) until it is served; then
that row goes, with the table's history, and the queue's row records the outcome and the customer
it resolved to. A request that fails stays on record as failed with the reason.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import uuid

from p13n.config import get_settings
from p13n.lake.duck import append_rows, duckdb_connection, scan, table_exists
from p13n.lake.tables import RESTRICTED_PRIVACY_REQUESTS
from p13n.orchestration import progress

KINDS = ("forget", "access")


def _queue_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("request_id", pa.string()),
            ("kind", pa.string()),
            ("customer_id", pa.string()),
            ("requested_at", pa.timestamp("us", tz="UTC")),
            ("status", pa.string()),
            ("completed_at", pa.timestamp("us", tz="UTC")),
            ("detail", pa.string()),
        ]
    )


def request(kind: str, customer_id: str | None = None, email: str | None = None) -> str:
    """Queue a request for the DAG; returns its id. The person is checked now: an unknown customer
    id or an address of no one is refused here, not discovered at night."""

    from p13n.privacy.erasure import ErasureError, find_person, normalize_email, restricted_dir
    from p13n.secrets import pii_key

    if kind not in KINDS:
        raise ValueError(f"a privacy request is 'forget' or 'access', not {kind!r}")
    if not (customer_id or email):
        raise ValueError("name the person: --customer or --email")
    if email and not normalize_email(email):
        raise ErasureError(f"{email!r} is not an email address")
    settings = get_settings()
    find_person(settings, pii_key(settings), customer_id, email)
    rid = f"{kind}-{uuid.uuid4().hex[:12]}"
    if email:
        restricted_dir(settings, "restricted")
        append_rows(
            settings, RESTRICTED_PRIVACY_REQUESTS, [{"request_id": rid, "email": normalize_email(email)}]
        )
    row = {
        "request_id": rid,
        "kind": kind,
        "customer_id": customer_id,
        "requested_at": dt.datetime.now(dt.UTC),
        "status": "pending",
        "completed_at": None,
        "detail": None,
    }
    append_rows(settings, settings.privacy.requests_table, [row], schema=_queue_schema(), schema_mode="merge")
    return rid


def run_now(
    kind: str,
    customer_id: str | None,
    email: str | None,
    request_id: str | None = None,
    dry_run: bool = False,
) -> dict:
    """Serve one request at once (what the DAG does for each pending one); `dry_run` only says what an
    erasure would delete."""
    from p13n.privacy.access import export_person
    from p13n.privacy.erasure import forget, preview
    from p13n.services.redis import redis_for

    settings = get_settings()
    rid = request_id or f"{kind}-{uuid.uuid4().hex[:12]}"
    if dry_run:
        person, plans = preview(settings, customer_id, email)
        progress(
            f"{kind} {rid}: customer {person.customer_id}; an erasure would delete "
            f"{sum(p.rows for p in plans):,} rows (limit {settings.privacy.max_rows_per_request:,}):"
        )
        for p in plans:
            progress(f"  {p.table}: {p.rows:,}")
        return {
            "request_id": rid,
            "customer_id": person.customer_id,
            "tables": {p.table: p.rows for p in plans},
        }
    from p13n.privacy.erasure import AlreadyErased, find_person
    from p13n.secrets import pii_key

    try:  # an unknown person is refused before Redis starts
        find_person(settings, pii_key(settings), customer_id, email)
    except AlreadyErased as e:
        if kind != "forget":
            raise
        progress(f"forget {rid}: {e}; nothing left to do")
        return {"request_id": rid, "status": "already erased"}
    with redis_for(settings) as url:
        if kind == "forget":
            keys = (getattr(settings.activation, p).credential_env for p in ("klaviyo", "mailchimp"))
            platforms = any(os.environ.get(k) for k in keys)
            return forget(
                settings,
                rid,
                customer_id=customer_id,
                email=email,
                redis_url=url,
                platforms=platforms,
                progress=progress,
            )
        path, summary = export_person(settings, rid, customer_id=customer_id, email=email, redis_url=url)
        progress(f"access {rid}: {sum(summary.values()):,} rows from {len(summary)} tables written to {path}")
        return {"request_id": rid, "path": str(path), "tables": summary}


def pending_requests(settings) -> list[tuple[str, str, str | None, str | None]]:
    """(request_id, kind, customer_id, email) of every pending request, oldest first."""
    name = settings.privacy.requests_table
    if not table_exists(settings.lake_root, name):
        return []
    con = duckdb_connection()
    rows = con.execute(
        f"SELECT request_id, kind, customer_id FROM {scan(settings.lake_root, name)} "
        "WHERE status = 'pending' ORDER BY requested_at"
    ).fetchall()
    emails = {}
    if rows and table_exists(settings.lake_root, RESTRICTED_PRIVACY_REQUESTS):
        emails = dict(
            con.execute(
                f"SELECT request_id, email FROM {scan(settings.lake_root, RESTRICTED_PRIVACY_REQUESTS)}"
            ).fetchall()
        )
    return [(rid, kind, cid, emails.get(rid)) for rid, kind, cid in rows]


def process_requests(dry_run: bool = False) -> dict:
    """Serve every pending request, oldest first; one failing does not stop the others. `dry_run`
    prints what each would do and changes nothing."""
    from p13n.lake.duck import delete_rows, erase_table_history, literal, update_rows
    from p13n.privacy.erasure import ErasureError, find_person
    from p13n.secrets import pii_key

    settings = get_settings()
    name = settings.privacy.requests_table
    pending = pending_requests(settings)
    if not pending:
        progress("no pending privacy requests: nothing to do")
        return {"done": 0, "failed": 0}
    done = failed = 0
    for rid, kind, customer_id, email in pending:
        resolved = customer_id
        try:
            with contextlib.suppress(ErasureError):  # an unknown person fails in run_now, with the reason
                resolved = find_person(settings, pii_key(settings), customer_id, email).customer_id
            out = run_now(kind, customer_id, email, rid, dry_run=dry_run)
            if dry_run:
                continue
            status, detail = "done", out.get("path") or out.get("status")
            done += 1
        except Exception as e:  # noqa: BLE001 - recorded on the request, raised at the end
            status, detail = "failed", f"{type(e).__name__}: {str(e)[:300]}"
            failed += 1
            if dry_run:
                progress(f"{kind} {rid}: would fail: {detail}")
                continue
        updates = {
            "status": literal(status),
            "completed_at": "now()",
            "customer_id": literal(resolved),
            "detail": literal(str(detail)),
        }
        update_rows(settings, name, f"request_id = {literal(rid)}", updates)
        if email and table_exists(
            settings, RESTRICTED_PRIVACY_REQUESTS
        ):  # served or failed: the address goes
            delete_rows(settings, RESTRICTED_PRIVACY_REQUESTS, f"request_id = {literal(rid)}")
            erase_table_history(settings, RESTRICTED_PRIVACY_REQUESTS)
        progress(f"privacy request {rid} ({kind}): {status}")
    if failed and not dry_run:
        raise RuntimeError(f"{failed} of {len(pending)} privacy requests failed (see {name}.detail)")
    return {"done": done, "failed": failed}
