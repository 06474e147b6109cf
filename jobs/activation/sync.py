"""Incremental, resumable audience syncs.

Each (destination, audience) has a state in `ops.export_state`: per customer the status the platform
last confirmed (`member`, `removed`, `rejected` with the platform's reason, `blocked`: the platform
refuses to resubscribe them), the fingerprint of what was sent and when. A sync:

1. computes the audience (`p13n.activation.audiences.candidates`): members, and those excluded with
   the reason (no consent for the channel, erased, no address);
2. plans against the state: adds (eligible, not a member: new, or back after a removal), updates
   (a member whose exported fields changed), removes (a member no longer eligible: left the audience,
   revoked consent, erased; the last two are also unsubscribed); `blocked` customers are never sent;
   a `rejected` one is sent again only once what would be sent changes;
3. sends the plan in the platform's batch sizes, removes first (a revocation must not wait behind a
   long import), and merges each batch's outcome into the state right after the platform confirmed
   it. A crash therefore loses nothing and a rerun sends only what is not confirmed yet (at most the
   batch in flight again, which the platforms treat as an upsert).

Each run appends a summary row to `ops.export_runs`. `p13n export` prints it.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import pandas as pd

from p13n.faults import checkpoint
from p13n.lake.tables import OPS_EXPORT_RUNS, OPS_EXPORT_STATE, RESTRICTED_CUSTOMER_PROFILES

STATE_COLUMNS = [
    "destination",
    "audience",
    "customer_id",
    "status",
    "fingerprint",
    "remote_id",
    "detail",
    "run_id",
    "synced_at",
]


class SyncError(RuntimeError):
    def __init__(self, message: str, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


@dataclass
class Outcome:
    customer_id: str
    status: str  # member | removed | rejected | blocked
    remote_id: str | None = None
    detail: str | None = None


@dataclass
class Plan:
    adds: pd.DataFrame
    updates: pd.DataFrame
    removes: pd.DataFrame
    unchanged: int
    skipped: dict[str, int]


@dataclass
class RunSummary:
    destination: str
    audience: str
    as_of: str
    run_id: str
    eligible: int = 0
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    rejected: int = 0
    blocked: int = 0
    skipped_no_consent: int = 0
    skipped_erased: int = 0
    skipped_no_address: int = 0
    held_out: int = 0
    batches: int = 0
    api_calls: int = 0
    seconds: float = 0.0
    status: str = "running"
    errors: list[str] = field(default_factory=list)

    @property
    def profiles_per_second(self) -> float:
        return (self.added + self.updated + self.removed) / self.seconds if self.seconds else 0.0

    def row(self) -> dict:
        d = asdict(self)
        d["errors"] = "; ".join(self.errors[:20])
        d["profiles_per_second"] = round(self.profiles_per_second, 1)
        d["finished_at"] = dt.datetime.now(dt.UTC)
        return d

    def text(self) -> str:
        skipped = self.skipped_no_consent + self.skipped_erased + self.skipped_no_address
        return (
            f"{self.destination} · {self.audience} · {self.as_of}: {self.status}; "
            f"{self.eligible:,} eligible, sent {self.added:,} adds, {self.updated:,} updates, "
            f"{self.removed:,} removes ({self.unchanged:,} unchanged) in {self.batches} batches, "
            f"{self.seconds:.1f}s ({self.profiles_per_second:,.0f} profiles/s); skipped {skipped:,} "
            f"(no consent {self.skipped_no_consent:,}, erased {self.skipped_erased:,}, no address "
            f"{self.skipped_no_address:,}); held out {self.held_out:,}; rejected {self.rejected:,}, "
            f"blocked {self.blocked:,}" + (f"; errors: {'; '.join(self.errors[:3])}" if self.errors else "")
        )


def required(target: dict, key: str) -> str:
    """A destination setting of an audience (`activation.audiences.<name>.destinations.<platform>`)."""
    if not target.get(key):
        raise SyncError(
            f"the destination needs `{key}` (activation.audiences.<name>.destinations)", retryable=False
        )
    return target[key]


def chunks(items: list, n: int) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def plan(candidates: pd.DataFrame, state: pd.DataFrame) -> Plan:
    """Pure: the difference between the audience now and the destination's confirmed state."""
    from p13n.activation.audiences import fingerprint

    cand = candidates.copy()
    cand["fingerprint"] = [fingerprint(r) for r in cand.to_dict("records")]
    reasons = cand["exclude_reason"].fillna("")
    kinds = reasons.map(_kind)
    skipped = {k: int((kinds == k).sum()) for k in ("no consent", "erased", "no address")}
    eligible = cand[reasons == ""]
    st = (
        state.set_index("customer_id")
        if len(state)
        else pd.DataFrame(columns=STATE_COLUMNS).set_index("customer_id")
    )
    status = eligible["customer_id"].map(st["status"]) if len(st) else pd.Series(None, index=eligible.index)
    before = (
        eligible["customer_id"].map(st["fingerprint"]) if len(st) else pd.Series(None, index=eligible.index)
    )
    is_member = status == "member"
    changed = before != eligible["fingerprint"]
    adds = eligible[(status.isna() | (status == "removed") | ((status == "rejected") & changed))].copy()
    adds["is_new"] = True
    updates = eligible[is_member & changed].copy()
    updates["is_new"] = False
    members = st[st["status"] == "member"].index if len(st) else pd.Index([])
    gone = sorted(set(members) - set(eligible["customer_id"]))
    why = cand.set_index("customer_id")["exclude_reason"]
    removes = pd.DataFrame({"customer_id": gone})
    removes["reason"] = [why.get(c) or "left the audience" for c in gone]
    removes["unsubscribe"] = removes["reason"].map(_kind).isin(["no consent", "erased"]).astype(bool)
    unchanged = int((is_member & ~changed).sum())
    return Plan(adds, updates, removes, unchanged, skipped)


def _kind(reason: str | None) -> str:
    """An exclusion reason's kind: no consent (for the channel), erased, no address, or ''."""
    if not reason or reason == "left the audience":
        return ""
    if reason == "erased":
        return "erased"
    if reason in ("no email", "no phone"):
        return "no address"
    return "no consent" if reason.endswith("consent") else ""


# --- the state --------------------------------------------------------------------------------------


def read_state(settings, destination: str, audience: str) -> pd.DataFrame:
    from p13n.lake.duck import duckdb_connection, scan, table_exists

    if not table_exists(settings.lake_root, OPS_EXPORT_STATE):
        return pd.DataFrame(columns=STATE_COLUMNS)
    return (
        duckdb_connection()
        .execute(
            f"SELECT * FROM {scan(settings.lake_root, OPS_EXPORT_STATE)} "
            "WHERE destination = ? AND audience = ? "
            "QUALIFY row_number() OVER (PARTITION BY customer_id ORDER BY synced_at DESC) = 1",
            [destination, audience],
        )
        .df()
    )


def record(
    settings,
    destination: str,
    audience: str,
    run_id: str,
    outcomes: list[Outcome],
    fingerprints: dict[str, str],
) -> None:
    """Append one confirmed batch to the state: the latest row per (destination, audience, customer)
    is the state (an append costs a fraction of a merge; `compact` rewrites it after the sync)."""
    import pyarrow as pa

    from p13n.lake.duck import write_arrow

    now = dt.datetime.now(dt.UTC)
    rows = pa.table(
        {
            "destination": [destination] * len(outcomes),
            "audience": [audience] * len(outcomes),
            "customer_id": [o.customer_id for o in outcomes],
            "status": [o.status for o in outcomes],
            "fingerprint": [
                fingerprints.get(o.customer_id) if o.status != "removed" else None for o in outcomes
            ],
            "remote_id": [o.remote_id for o in outcomes],
            "detail": [o.detail for o in outcomes],
            "run_id": [run_id] * len(outcomes),
            "synced_at": pa.array([now] * len(outcomes), pa.timestamp("us", tz="UTC")),
        },
        schema=pa.schema(
            [(c, pa.string()) for c in STATE_COLUMNS[:-1]] + [("synced_at", pa.timestamp("us", tz="UTC"))]
        ),
    )
    write_arrow(settings, OPS_EXPORT_STATE, rows, partition_by=["destination"])


def compact(settings, destination: str, audience: str) -> None:
    """Keep one row per customer of (destination, audience) once the log holds twice as many."""
    from p13n.lake.duck import duckdb_connection, literal, scan, write_arrow

    con = duckdb_connection(settings=settings)
    where = "WHERE destination = ? AND audience = ?"
    rows, customers = con.execute(
        f"SELECT count(*), count(DISTINCT customer_id) FROM {scan(settings.lake_root, OPS_EXPORT_STATE)} "
        f"{where}",
        [destination, audience],
    ).fetchone()
    if rows <= 2 * customers:
        return
    latest = con.execute(
        f"SELECT * FROM {scan(settings.lake_root, OPS_EXPORT_STATE)} {where} "
        "QUALIFY row_number() OVER (PARTITION BY customer_id ORDER BY synced_at DESC) = 1",
        [destination, audience],
    ).fetch_arrow_table()
    where = f"destination = {literal(destination)} AND audience = {literal(audience)}"
    write_arrow(settings, OPS_EXPORT_STATE, latest, mode="overwrite", predicate=where)


def record_run(settings, summary: RunSummary) -> None:
    """The run's summary row in `ops.export_runs` (with the run's commit metadata, as every ops record)."""
    from p13n.lake.duck import append_rows

    append_rows(settings, OPS_EXPORT_RUNS, [summary.row()], schema_mode="merge")  # new columns join


# --- one sync ---------------------------------------------------------------------------------------


def destination_for(settings, name: str):
    cfg = getattr(settings.activation, name, None)
    if name not in ("klaviyo", "mailchimp"):
        raise SyncError(
            f"unknown destination {name!r} (klaviyo, mailchimp; or csv for files)", retryable=False
        )
    key = os.environ.get(cfg.credential_env, "")
    if not key:
        raise SyncError(
            f"{name}: no API key; set the environment variable {cfg.credential_env}", retryable=False
        )
    if name == "klaviyo":
        from p13n.activation.klaviyo import Klaviyo

        return Klaviyo(settings, key)
    from p13n.activation.mailchimp import Mailchimp

    return Mailchimp(settings, key)


def sync(
    settings,
    audience: str,
    destination: str,
    as_of: dt.date,
    client=None,
    progress: Callable[[str], None] = print,
) -> RunSummary:
    """Sync one audience to one destination (see the module docstring); returns the run's summary."""
    from p13n.activation.audiences import audience_settings, candidates, with_cadence
    from p13n.lake.duck import duckdb_connection
    from p13n.measurement.sends import record_audience

    cfg = audience_settings(settings, audience)
    target = cfg.destinations.get(destination)
    if target is None:
        raise SyncError(
            f"audience {audience} has no {destination} destination "
            f"(activation.audiences.{audience}.destinations)",
            retryable=False,
        )
    target = {**target, "channel": cfg.channel}  # the channel the destination subscribes them to
    client = client or destination_for(settings, destination)
    run_id = f"{as_of.isoformat()}-{uuid.uuid4().hex[:8]}"
    summary = RunSummary(destination, audience, as_of.isoformat(), run_id)
    t0 = time.perf_counter()
    con = duckdb_connection()
    frame = with_cadence(con, settings, audience, as_of, candidates(con, settings, audience, as_of))
    p = plan(frame, read_state(settings, destination, audience))
    summary.eligible = int(frame["exclude_reason"].isna().sum())
    summary.held_out = int(frame["exclude_reason"].isin(["held out", "global holdout"]).sum())
    summary.unchanged = p.unchanged
    summary.skipped_no_consent, summary.skipped_erased, summary.skipped_no_address = (
        p.skipped["no consent"],
        p.skipped["erased"],
        p.skipped["no address"],
    )
    progress(
        f"{destination} · {audience}: {len(p.adds):,} to add, {len(p.updates):,} to update, "
        f"{len(p.removes):,} to remove, {p.unchanged:,} unchanged"
    )
    # Removes need the address the customer had: from the audience if still there, else restricted.
    removes = _with_contacts(settings, frame, p.removes)
    try:
        for batch in chunks(removes.to_dict("records"), 1000):
            outcomes = client.remove(target, batch)
            record(settings, destination, audience, run_id, outcomes, {})
            summary.removed += len(outcomes)
            summary.batches += 1
            checkpoint("export.after_batch")
        sends = pd.concat([p.adds, p.updates]).to_dict("records")
        fingerprints = {r["customer_id"]: r["fingerprint"] for r in sends}
        for batch in client.batches(sends):
            outcomes = client.upsert(target, batch)
            record(settings, destination, audience, run_id, outcomes, fingerprints)
            new = {r["customer_id"] for r in batch if r.get("is_new")}
            for o in outcomes:
                if o.status == "member":
                    if o.customer_id in new:
                        summary.added += 1
                    else:
                        summary.updated += 1
                elif o.status == "rejected":
                    summary.rejected += 1
                    if len(summary.errors) < 20:
                        summary.errors.append(f"{o.customer_id}: {o.detail}")
                elif o.status == "blocked":
                    summary.blocked += 1
            summary.batches += 1
            progress(
                f"  batch {summary.batches}: {len(batch):,} profiles confirmed "
                f"({summary.added + summary.updated:,}/{len(sends):,})"
            )
            checkpoint("export.after_batch")
        summary.status = "succeeded" if not summary.rejected else "succeeded with rejections"
        compact(settings, destination, audience)
        members = read_state(settings, destination, audience)
        members = members.loc[members["status"] == "member", "customer_id"]
        record_audience(settings, audience, destination, as_of, frame, members)
    except SyncError as e:
        summary.status = "failed"
        summary.errors.insert(0, str(e))
        raise
    finally:
        summary.seconds = round(time.perf_counter() - t0, 3)
        summary.api_calls = getattr(client, "calls", 0)
        record_run(settings, summary)
        progress(summary.text())
    return summary


def _with_contacts(settings, frame: pd.DataFrame, removes: pd.DataFrame) -> pd.DataFrame:
    if removes.empty:
        return removes.assign(email=pd.Series(dtype=str), phone=pd.Series(dtype=str))
    known = frame.set_index("customer_id")
    removes = removes.copy()
    removes["email"] = removes["customer_id"].map(known["email"])
    removes["phone"] = removes["customer_id"].map(known["phone"]) if "phone" in known else None
    missing = removes[removes["email"].isna() | removes["phone"].isna()]["customer_id"].tolist()
    if missing:
        from p13n.lake.duck import duckdb_connection, scan, table_exists

        if table_exists(settings.lake_root, RESTRICTED_CUSTOMER_PROFILES):
            got = (
                duckdb_connection()
                .execute(
                    "SELECT customer_id, email, phone FROM "
                    f"{scan(settings.lake_root, RESTRICTED_CUSTOMER_PROFILES)} "
                    "WHERE customer_id IN (SELECT unnest(?::VARCHAR[]))",
                    [missing],
                )
                .df()
                .set_index("customer_id")
            )
            for col in ("email", "phone"):
                removes[col] = removes[col].fillna(removes["customer_id"].map(got[col]))
    # No address left (an erased customer's is gone): None, so the platforms skip the address calls.
    for col in ("email", "phone"):
        removes[col] = removes[col].astype(object).where(removes[col].notna(), None)
    return removes
