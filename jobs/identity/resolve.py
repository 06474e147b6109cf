"""The matcher end to end: records in, (record → cluster) out. Used by the pipeline and the CLI alike."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from p13n.config import IdentitySettings
from p13n.identity import clustering, matching
from p13n.identity.records import normalize
from p13n.lake.duck import literal


@dataclass
class Resolution:
    records: pd.DataFrame  # record_key, source, record_id, profile_id, cluster
    profiles: pd.DataFrame  # profile_id, records, guard_source, dob
    edges: pd.DataFrame  # accepted edges: profile_l, profile_r, rule, match_probability
    model: matching.MatchModel
    refused: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


def resolve_records(
    records,
    cfg: IdentitySettings,
    *,
    one_per_customer: list[str] | None = None,
    threshold: float | None = None,
    progress=None,
) -> Resolution:
    """Match `records` (record_key, source, record_id and any person attributes: a pandas DataFrame,
    an Arrow table, or a directory of Parquet files) into clusters with the
    `identity` settings; `one_per_customer` and `threshold` override theirs (a file's link-only run,
    the CLI's --threshold).

    Everything before and after Splink (normalizing, profiles, blocking budgets, deterministic edges,
    clustering) runs in this process on DuckDB and pandas: a file never starts Spark, and the lake's
    records arrive as Parquet files the executors wrote (`p13n.identity.pipeline`).
    """
    con = matching.duckdb_connection(cfg.duckdb_memory_gb)
    try:
        return _resolve(con, records, cfg, one_per_customer, threshold, progress or (lambda _msg: None))
    finally:
        matching.close(con)


def _resolve(con, records, cfg, one_per_customer, threshold, say) -> Resolution:
    one_per_customer = cfg.one_per_customer if one_per_customer is None else one_per_customer
    threshold = threshold or cfg.match_probability
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if isinstance(records, str | Path):  # a directory of Parquet files (the lake's records, spilled)
        files = literal(f"{records}/*.parquet")
        con.execute(f"CREATE TEMP VIEW records_in AS SELECT * FROM read_parquet({files})")
    else:
        con.register("records_in", records)
    con.execute(f"CREATE TEMP TABLE normalized AS {normalize(con, 'records_in')}")
    con.execute("DROP VIEW records_in")
    matching.profiles(con, "normalized", one_per_customer)
    con.execute("DROP TABLE normalized")
    n_records = con.sql("SELECT count(*) FROM record_map").fetchone()[0]
    n_profiles = con.sql("SELECT count(*) FROM profiles").fetchone()[0]
    timings["profiles_s"] = time.perf_counter() - t0
    say(f"identity: {n_records:,} records → {n_profiles:,} distinct profiles")
    prof_pd = con.sql("SELECT profile_id, records, guard_source, dob FROM profiles").df()
    record_map = con.sql("SELECT * FROM record_map").df()

    present = matching.present_attributes(con, matching.NORMALIZED)
    compared = matching.compared_attributes(present)
    strong = matching.present_attributes(con, matching.STRONG, min_share=0)
    det = matching.deterministic_edges(con, strong) if strong else None
    counts = {"records": n_records, "profiles": n_profiles}
    if len(compared) < 2:
        say(
            f"identity: only {', '.join(compared) or 'no attribute'} to compare; a model needs two: "
            "records are matched exactly on it"
        )
        return _without_model(prof_pd, record_map, det, cfg, compared, threshold, timings, counts)

    t0 = time.perf_counter()
    try:
        linker, model = matching.train(
            con,
            present,
            n_profiles,
            threshold=threshold,
            em_max_pairs=cfg.em_max_pairs,
            u_max_pairs=cfg.u_max_pairs,
            seed=cfg.seed,
            backend=cfg.backend,
            max_pairs_per_profile=cfg.max_pairs_per_profile,
        )
    except matching.NotEnoughToMatch as exc:  # a tiny file, say: what is identical is still one customer
        say(f"identity: {exc}; records are matched exactly on their normalized attributes")
        return _without_model(prof_pd, record_map, det, cfg, compared, threshold, timings, counts)
    timings["train_s"] = time.perf_counter() - t0
    say(f"identity: model trained on {', '.join(model.columns)}")
    for note in model.blocking_changes:
        say(f"identity: blocking rule {note}")
    say(
        f"identity: scoring up to {sum(model.block_pairs.values()):,} pairs ("
        + ", ".join(f"{rule} {n:,}" for rule, n in model.block_pairs.items())
        + ")"
    )

    t0 = time.perf_counter()
    exact_levels = _exact_levels(model.settings)
    try:
        scored = matching.probabilistic_edges(linker, threshold, list(exact_levels))
    finally:
        matching.release(linker)
    # Splink's own work (training and predicting), to weigh the matcher's work around it
    timings["splink_s"] = model.metrics["splink_train_s"] + time.perf_counter() - t0
    del linker
    frames = [scored.assign(rule="model")]
    if det is not None:
        frames.append(det.assign(match_probability=1.0))
    edges = pd.concat(frames, ignore_index=True)
    del frames, scored
    for c in exact_levels:
        edges[c] = edges[c].fillna(-1).astype("int8")
    timings["score_s"] = time.perf_counter() - t0
    say(
        f"identity: {len(edges):,} candidate links ({int((edges['rule'] == 'model').sum()):,} from the model)"
    )

    t0 = time.perf_counter()
    result = clustering.cluster_profiles(
        prof_pd,
        edges,
        max_records=cfg.max_cluster_records,
        exact_levels=exact_levels,
        birth_date_guard=cfg.birth_date_guard,
    )
    recs = record_map.merge(result.assignment, on="profile_id", how="left", validate="many_to_one")
    timings["cluster_s"] = time.perf_counter() - t0
    return Resolution(
        records=recs,
        profiles=prof_pd,
        edges=result.accepted,
        model=model,
        refused=dict(result.refused),
        timings={k: round(v, 2) for k, v in timings.items()},
        counts={
            "records": n_records,
            "profiles": n_profiles,
            "blocked_pairs": sum(model.block_pairs.values()),
            "blocking_rules_changed": len(model.blocking_changes),
            "candidate_edges": len(edges),
            "accepted_edges": len(result.accepted),
            "clusters": int(result.assignment["cluster"].nunique()),
        },
    )


def _without_model(prof_pd, record_map, det, cfg, compared, threshold, timings, counts) -> Resolution:
    """No model can be learned (one attribute to compare, or no pair to train on): records match
    exactly on what is there (identical normalized values are one profile) and through the strong
    identifiers they share (deterministic edges, with the clustering guards)."""
    accepted = pd.DataFrame(columns=["profile_l", "profile_r", "rule", "match_probability"])
    refused: dict = {}
    assignment = pd.DataFrame({"profile_id": prof_pd["profile_id"], "cluster": prof_pd["profile_id"]})
    if det is not None and len(det):
        result = clustering.cluster_profiles(
            prof_pd,
            det.assign(match_probability=1.0),
            max_records=cfg.max_cluster_records,
            birth_date_guard=cfg.birth_date_guard,
        )
        assignment, accepted, refused = result.assignment, result.accepted, dict(result.refused)
    recs = record_map.merge(assignment, on="profile_id", how="left", validate="many_to_one")
    return Resolution(
        records=recs,
        profiles=prof_pd,
        edges=accepted,
        model=matching.MatchModel({}, threshold, compared, metrics={"exact_only": 1}),
        refused=refused,
        timings={k: round(v, 2) for k, v in timings.items()},
        counts={
            **counts,
            "blocked_pairs": 0,
            "blocking_rules_changed": 0,
            "candidate_edges": 0 if det is None else len(det),
            "accepted_edges": len(accepted),
            "clusters": int(assignment["cluster"].nunique()),
        },
    )


def _exact_levels(settings: dict) -> dict[str, int]:
    """gamma_<col> → the comparison vector value of an exact match (the highest non-null level)."""
    out = {}
    for comparison in settings.get("comparisons", []):
        levels = [lv for lv in comparison["comparison_levels"] if not lv.get("is_null_level")]
        out[f"gamma_{comparison['output_column_name']}"] = len(levels) - 1
    return out
