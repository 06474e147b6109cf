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

import datetime as dt
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, Window
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
    return graph.toPandas(), last


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
    """Match today's identity records, keep ids stable against the last run, write every table."""
    say = progress or (lambda _m: None)
    cfg = settings.identity
    spark = lake.spark
    records = read_identity_records(lake, settings).cache()
    res = resolve_records_spilled(records, cfg, settings.data_dir, progress=say)
    t0 = time.perf_counter()
    previous, previous_date = previous_snapshot(lake, run_date)
    assignment, changes = idmod.assign_ids(
        res.records, previous, run_date.isoformat(), evidence=_evidence_finder(res, previous)
    )
    graph = res.records.merge(assignment, on="record_key", how="inner", validate="one_to_one")
    graph = graph[["record_key", "source", "record_id", "profile_id", "customer_id"]].assign(
        run_date=run_date
    )
    metrics = evaluate_clusters(graph[["record_key", "customer_id"]], truth) if truth is not None else {}
    stop = gate_problem(changes, previous, metrics, cfg.gate)
    if stop:
        records.unpersist()
        raise IdentityGateError(f"identity {run_date}: {stop}; nothing written, the previous ids stand")
    lake.replace_partition(GOLD_IDENTITY_GRAPH, spark.createDataFrame(graph), "run_date", run_date, run=run)
    changes_df = changes.assign(change_date=run_date, previous_run=previous_date)
    lake.replace_partition(
        GOLD_IDENTITY_CHANGES,
        spark.createDataFrame(changes_df, _CHANGES_SCHEMA),
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
        ids = spark.createDataFrame(graph[["record_key", "customer_id"]])
        _write_current(lake, settings, records, ids, changes, pii_key, run=run)
    else:
        say(
            f"identity: {run_date} is older than the latest snapshot {latest}; current tables left as they "
            "are"
        )
    out.timings["publish_s"] = round(time.perf_counter() - t0, 2)
    out.metrics = metrics
    _write_run(lake, out, res, run=run)
    records.unpersist()
    return out


def resolve_records_spilled(records: DataFrame, cfg, scratch: Path, progress=None) -> Resolution:
    """`resolve_records` on the lake's records, handed over as Parquet files the executors write into a
    private (0700) scratch directory, removed afterwards: raw PII never outlives the run there.

    Collecting them to the driver instead (`toArrow`) is bounded by spark.driver.maxResultSize: at 1M
    customers the 6.6M records are past its 1 GiB.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="identity-records-", dir=scratch))
    try:
        records.write.mode("overwrite").parquet(str(work / "records"))
        return resolve_records(work / "records", cfg, progress=progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)


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
) -> None:
    cfg = settings.identity
    spark = lake.spark
    aliases = lake.read(GOLD_CUSTOMER_ALIASES).toPandas() if lake.exists(GOLD_CUSTOMER_ALIASES) else None
    aliases = idmod.update_aliases(aliases, changes)
    lake.write(
        GOLD_CUSTOMER_ALIASES,
        spark.createDataFrame(aliases, "alias_id string, customer_id string"),
        mode="overwrite",
        run=run,
    )

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
    lake.write(RESTRICTED_CUSTOMER_PROFILES, restricted, mode="overwrite", run=run)
    lake.write(GOLD_IDENTITY_KEYS, identity_keys(lake, settings, ids, pii_key), mode="overwrite", run=run)
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
    w = F.row_number().over(
        Window.partitionBy("key_type", "key_value").orderBy(F.desc("count"), "customer_id")
    )
    return counted.withColumn("_n", w).filter("_n = 1").select("key_type", "key_value", "customer_id")


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
