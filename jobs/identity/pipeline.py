"""Identity resolution over the lake: the IO edge around the matcher, golden record and id assignment.

Tables written for a run date D (every write keyed on D; a rerun of D gives the same tables):

* `gold.identity_graph` (partition `run_date`): every identity record → its customer id, a snapshot
  per run. The previous snapshot (the latest before D) is what today's ids are inherited from.
* `gold.identity_changes` (partition `change_date`): new customers, merges, splits, retirements,
  with the evidence.
* `gold.customer_aliases`: every id a merge retired → the customer id holding its records now.
* `gold.identity_keys`: strong identifiers (email and phone pseudonyms, platform ids) → customer id,
  one customer per key, for attributing orders, clicks and POS sales to customers.
* `gold.customer_profiles`: the golden record, PII as HMAC pseudonyms; `restricted.customer_profiles`
  holds its raw PII (for activation) and nothing else.
* `ops.identity_runs` (partition `run_date`): counts, timings, refused links and, where the ground
  truth of generated data is available, precision, recall and F1.

The current-state tables (aliases, keys, profiles) are only replaced by a run at least as recent as
the latest snapshot, so a backfill of an old date does not roll them back.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from p13n.config import Settings
from p13n.identity import ids as idmod
from p13n.identity.evaluation import evaluate_clusters, format_metrics
from p13n.identity.golden import household_ids, merge_consents, survive
from p13n.identity.records import identity_records
from p13n.identity.resolve import Resolution, resolve_records
from p13n.lake import Lake
from p13n.lake.tables import (
    GOLD_CUSTOMER_ALIASES,
    GOLD_CUSTOMER_PROFILES,
    GOLD_IDENTITY_CHANGES,
    GOLD_IDENTITY_GRAPH,
    GOLD_IDENTITY_KEYS,
    OPS_IDENTITY_RUNS,
    RESTRICTED_CUSTOMER_PROFILES,
)
from p13n.runctx import RunContext
from p13n.sources.standardize import hmac_sha256
from p13n.spark import to_pandas

PII_FIELDS = ("first_name", "last_name", "email", "phone", "street", "postal_code", "birth_date")
CONSENT_SOURCE = "consent_preferences"


@dataclass
class IdentityRun:
    run_date: str
    counts: dict = field(default_factory=dict)
    changes: dict = field(default_factory=dict)
    refused: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)

    def summary(self) -> str:
        c = self.counts
        lines = [
            f"identity {self.run_date}: {c.get('records', 0):,} records → "
            f"{c.get('customers', 0):,} customers ({c.get('profiles', 0):,} profiles, "
            f"{c.get('accepted_edges', 0):,} links kept of {c.get('candidate_edges', 0):,})",
            "  changes: " + (", ".join(f"{k} {v:,}" for k, v in sorted(self.changes.items())) or "none"),
        ]
        if self.refused:
            lines.append("  links refused: " + "; ".join(f"{k}: {v:,}" for k, v in self.refused.items()))
        if self.metrics:
            lines.append("  vs ground truth: " + format_metrics(self.metrics))
        return "\n".join(lines)


def read_identity_records(lake: Lake, settings: Settings) -> DataFrame:
    sources = settings.identity.sources
    silver = {n: lake.read(f"silver.{n}") for n in sources if lake.exists(f"silver.{n}")}
    restricted = {n: lake.read(f"restricted.{n}") for n in sources if lake.exists(f"restricted.{n}")}
    return identity_records(restricted, silver, sources)


def previous_snapshot(lake: Lake, run_date: dt.date) -> tuple[pd.DataFrame | None, dt.date | None]:
    """The graph of the latest run before `run_date` (record_key, customer_id), and its date."""
    if not lake.exists(GOLD_IDENTITY_GRAPH):
        return None, None
    dates = [r[0] for r in lake.read(GOLD_IDENTITY_GRAPH, columns=["run_date"]).distinct().collect()]
    before = [d for d in dates if d < run_date]
    if not before:
        return None, None
    last = max(before)
    graph = lake.read(
        GOLD_IDENTITY_GRAPH, columns=["record_key", "customer_id"], where=[("run_date", "=", last)]
    )
    return to_pandas(graph), last


def resolve_identities(
    lake: Lake,
    settings: Settings,
    run_date: dt.date,
    pii_key: bytes,
    *,
    run: RunContext | None = None,
    truth: pd.DataFrame | None = None,
    progress=None,
) -> IdentityRun:
    """Match today's identity records, keep ids stable against the last run, write every table.

    The run works in a private (0700) scratch directory under `data_dir`, removed at the end (raw PII
    never outlives the run there): the executors write the records into it once, as Parquet, for the
    matcher (DuckDB, in this process) and for the golden record (Spark) alike; the graph goes back to
    Spark the same way. Collecting the records to the driver instead (`toArrow`) is bounded by
    spark.driver.maxResultSize (at 1M customers the 6.6M records are past its 1 GiB), and handing
    Spark a pandas frame sends it through the driver in one task.
    """
    say = progress or (lambda _m: None)
    with scratch_dir(settings.data_dir, "identity-") as work:
        records = spill(read_identity_records(lake, settings), work / "records")
        res = resolve_records(work / "records", settings.identity, progress=say)
        return _publish(lake, settings, run_date, pii_key, res, records, work, run=run, truth=truth, say=say)


def _publish(lake, settings, run_date, pii_key, res: Resolution, records, work: Path, *, run, truth, say):
    t0 = time.perf_counter()
    step = _stopwatch(say)
    previous, previous_date = previous_snapshot(lake, run_date)
    assignment, changes = idmod.assign_ids(
        res.records, previous, run_date.isoformat(), evidence=_evidence_finder(res, previous)
    )
    graph = res.records[["record_key", "source", "record_id", "profile_id"]].assign(
        customer_id=assignment["customer_id"].to_numpy(), run_date=run_date
    )  # assignment's rows are res.records' rows, in order
    step("ids assigned")
    metrics = {}
    if truth is not None:
        metrics = evaluate_clusters(graph[["record_key", "customer_id"]], truth)
        step("evaluated against the truth")
    stop = gate_problem(changes, previous, metrics, settings.identity.gate)
    if stop:
        raise IdentityGateError(f"identity {run_date}: {stop}; nothing written, the previous ids stand")
    graph_df = from_pandas(lake.spark, graph, work / "graph")
    # every task writes its share: the graph is one large partition (6.7M rows at 1M customers)
    lake.replace_partition(GOLD_IDENTITY_GRAPH, graph_df, "run_date", run_date, run=run, colocate=False)
    step(GOLD_IDENTITY_GRAPH)
    changes_df = changes.assign(change_date=run_date, previous_run=previous_date)
    lake.replace_partition(
        GOLD_IDENTITY_CHANGES,
        lake.spark.createDataFrame(changes_df, _CHANGES_SCHEMA),
        "change_date",
        run_date,
        run=run,
    )
    latest = max(run_date, _latest_snapshot(lake) or run_date)
    out = IdentityRun(
        run_date.isoformat(), counts=dict(res.counts), refused=res.refused, timings=dict(res.timings)
    )
    out.counts["customers"] = int(graph["customer_id"].nunique())
    out.changes = changes["change_type"].value_counts().to_dict()
    if run_date >= latest:
        ids = graph_df.select("record_key", "customer_id")
        _write_current(lake, settings, records, ids, changes, pii_key, run=run, step=step)
    else:
        say(
            f"identity: {run_date} is older than the latest snapshot {latest}; current tables left as they "
            "are"
        )
    out.timings["publish_s"] = round(time.perf_counter() - t0, 2)
    out.metrics = metrics
    _write_run(lake, out, res, run=run)
    return out


@contextlib.contextmanager
def scratch_dir(parent: Path, prefix: str):
    """A private (0700) directory under `parent`, removed on leaving, however the block ends."""
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def spill(df: DataFrame, path: Path) -> DataFrame:
    """`df` written by the executors as Parquet at `path`, and read back from there."""
    df.write.mode("overwrite").parquet(str(path))
    return df.sparkSession.read.parquet(str(path))


def from_pandas(spark, frame: pd.DataFrame, path: Path, rows_per_file: int = 1_000_000) -> DataFrame:
    """A pandas frame as a Spark DataFrame read from Parquet at `path` (written here with pyarrow, a
    file per `rows_per_file` rows, so that several tasks read it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for i, start in enumerate(range(0, max(len(frame), 1), rows_per_file)):
        pq.write_table(table.slice(start, rows_per_file), path / f"part-{i:05d}.parquet")
    return spark.read.parquet(str(path))


class IdentityGateError(RuntimeError):
    """The night's identity run failed its gate (`identity.gate`) and wrote nothing."""


def gate_problem(changes: pd.DataFrame, previous: pd.DataFrame | None, metrics: dict, gate) -> str | None:
    """Why this run must not be published, or None: too many of the previous run's customers merged
    in one night, or (ground truth known) F1 or over-merged customers past their limits."""
    if previous is not None and len(previous):
        before = previous["customer_id"].nunique()
        merged = int((changes["change_type"] == "merge").sum())
        if merged > max(gate.min_merges, gate.max_merge_share * before):
            return (
                f"{merged:,} of the previous run's {before:,} customers would merge tonight "
                f"({merged / before:.1%}; identity.gate.max_merge_share is {gate.max_merge_share:.1%})"
            )
    if metrics:
        if metrics["f1"] < gate.min_f1:
            f1 = metrics["f1"]
            return f"F1 against the ground truth is {f1:.4f}, below identity.gate.min_f1 {gate.min_f1}"
        share = metrics["customers_overmerged"] / max(metrics["customers"], 1)
        if share > gate.max_overmerged_share:
            return (
                f"{metrics['customers_overmerged']:,} customers hold records of several people ({share:.2%}; "
                f"identity.gate.max_overmerged_share is {gate.max_overmerged_share:.2%})"
            )
    return None


def _stopwatch(say):
    """A function saying how long the step it names took (since the previous call)."""
    last = [time.perf_counter()]

    def step(name: str) -> None:
        now = time.perf_counter()
        say(f"identity: {name} in {now - last[0]:.1f} s")
        last[0] = now

    return step


def _latest_snapshot(lake: Lake) -> dt.date | None:
    rows = lake.read(GOLD_IDENTITY_GRAPH, columns=["run_date"]).agg(F.max("run_date")).first()
    return rows[0] if rows else None


def _evidence_finder(res: Resolution, previous: pd.DataFrame | None):
    """A function explaining, from the links kept today, why two previous ids are now one customer."""
    if previous is None or previous.empty or res.edges.empty:
        return None
    owners = res.records[["record_key", "profile_id"]].merge(previous, on="record_key")
    owners = owners[["profile_id", "customer_id"]].drop_duplicates()
    edges = res.edges[["profile_l", "profile_r", "match_probability", "rule"]]

    def explain(_cluster, ids: list[str]) -> str:
        a, b = (owners.loc[owners["customer_id"] == i, "profile_id"] for i in ids)
        left_a, left_b = edges["profile_l"].isin(a), edges["profile_l"].isin(b)
        right_a, right_b = edges["profile_r"].isin(a), edges["profile_r"].isin(b)
        hits = edges[(left_a & right_b) | (left_b & right_a)]
        if hits.empty:
            return "linked through other records of the customer"
        best = hits.sort_values("match_probability", ascending=False, kind="stable").iloc[0]
        if best["rule"] == "model":
            return f"probabilistic match (p={best['match_probability']:.3f})"
        return f"same {best['rule']}"

    return explain


def _write_current(
    lake: Lake,
    settings: Settings,
    records: DataFrame,
    ids: DataFrame,
    changes: pd.DataFrame,
    pii_key: bytes,
    *,
    run: RunContext | None,
    step,
) -> None:
    cfg = settings.identity
    spark = lake.spark
    aliases = to_pandas(lake.read(GOLD_CUSTOMER_ALIASES)) if lake.exists(GOLD_CUSTOMER_ALIASES) else None
    aliases = idmod.update_aliases(aliases, changes)
    lake.write(
        GOLD_CUSTOMER_ALIASES,
        spark.createDataFrame(aliases, "alias_id string, customer_id string"),
        mode="overwrite",
        run=run,
    )
    step(GOLD_CUSTOMER_ALIASES)

    with_ids = records.join(ids, on="record_key", how="inner")
    golden = household_ids(survive(with_ids, cfg.survivorship, cfg.source_priority))
    if lake.exists(f"silver.{CONSENT_SOURCE}"):
        events = (
            lake.read(f"silver.{CONSENT_SOURCE}")
            .withColumn("record_key", F.concat(F.lit(f"{CONSENT_SOURCE}:"), F.col("consent_event_id")))
            .join(ids, on="record_key", how="inner")
            .select(
                "customer_id",
                F.coalesce("email_hmac", "phone_hmac").alias("identifier"),
                "channel",
                "status",
                "recorded_at",
            )
        )
        golden = golden.join(merge_consents(events), on="customer_id", how="left")
    golden = golden.cache()
    restricted = golden.select("customer_id", *PII_FIELDS)
    public = golden
    for name in PII_FIELDS:
        public = public.withColumn(f"{name}_hmac", hmac_sha256(F.col(name).cast("string"), pii_key)).drop(
            name
        )
    lake.write(GOLD_CUSTOMER_PROFILES, public, mode="overwrite", run=run, schema_mode="add_columns")
    step(GOLD_CUSTOMER_PROFILES)
    lake.write(RESTRICTED_CUSTOMER_PROFILES, restricted, mode="overwrite", run=run)
    step(RESTRICTED_CUSTOMER_PROFILES)
    lake.write(GOLD_IDENTITY_KEYS, identity_keys(lake, settings, ids, pii_key), mode="overwrite", run=run)
    step(GOLD_IDENTITY_KEYS)
    golden.unpersist()


def identity_keys(lake: Lake, settings: Settings, ids: DataFrame, pii_key: bytes) -> DataFrame:
    """(key_type, key_value, customer_id): one customer per key, the one holding most of its records."""
    parts = []
    for name, spec in settings.identity.sources.items():
        table = f"silver.{name}"
        if not lake.exists(table):
            continue
        rows = lake.read(table).withColumn(
            "record_key", F.concat(F.lit(f"{name}:"), F.col(spec.record_id).cast("string"))
        )
        cols = {"email_hmac": "email_hmac", "phone_hmac": "phone_hmac"} | {k: c for k, c in spec.keys.items()}
        for key_type, col in cols.items():
            if col in rows.columns:
                parts.append(
                    rows.select(
                        "record_key",
                        F.lit(key_type).alias("key_type"),
                        F.col(col).cast("string").alias("key_value"),
                    ).filter(F.col("key_value").isNotNull())
                )
    keys = parts[0]
    for p in parts[1:]:
        keys = keys.unionByName(p)
    counted = (
        keys.join(ids, on="record_key", how="inner").groupBy("key_type", "key_value", "customer_id").count()
    )
    most = F.min_by("customer_id", F.struct(-F.col("count"), F.col("customer_id")))  # ties: smallest id
    return counted.groupBy("key_type", "key_value").agg(most.alias("customer_id"))


def _write_run(lake: Lake, out: IdentityRun, res: Resolution, *, run: RunContext | None) -> None:
    row = {
        "run_date": dt.date.fromisoformat(out.run_date),
        "counts": json.dumps(out.counts),
        "changes": json.dumps(out.changes),
        "refused": json.dumps(out.refused),
        "timings": json.dumps(out.timings),
        "model_columns": ",".join(res.model.columns),
        "precision": out.metrics.get("precision"),
        "recall": out.metrics.get("recall"),
        "f1": out.metrics.get("f1"),
        "metrics": json.dumps(out.metrics),
    }
    df = lake.spark.createDataFrame([row], _RUNS_SCHEMA)
    lake.replace_partition(OPS_IDENTITY_RUNS, df, "run_date", row["run_date"], run=run)


_CHANGES_SCHEMA = (
    "change_type string, customer_id string, previous_id string, records long, evidence string, "
    "change_date date, previous_run date"
)
_RUNS_SCHEMA = (
    "run_date date, counts string, changes string, refused string, timings string, model_columns string, "
    "precision double, recall double, f1 double, metrics string"
)
