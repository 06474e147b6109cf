"""The matcher end to end: records in, (record → cluster) out. Used by the pipeline and the CLI alike."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from p13n.config import IdentitySettings
from p13n.identity import clustering, matching
from p13n.identity.records import normalize


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
    records: DataFrame,
    cfg: IdentitySettings,
    *,
    one_per_customer: list[str] | None = None,
    threshold: float | None = None,
    progress=None,
) -> Resolution:
    """Match `records` (record_key, source, record_id and any person attributes) into clusters with
    the `identity` settings; `one_per_customer` and `threshold` override theirs (a file's link-only
    run, the CLI's --threshold)."""
    say = progress or (lambda _msg: None)
    one_per_customer = cfg.one_per_customer if one_per_customer is None else one_per_customer
    threshold = threshold or cfg.match_probability
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    prof, record_map = matching.profiles(normalize(records), one_per_customer)
    prof = prof.cache()
    record_map = record_map.cache()
    n_records, n_profiles = record_map.count(), prof.count()
    timings["profiles_s"] = time.perf_counter() - t0
    say(f"identity: {n_records:,} records → {n_profiles:,} distinct profiles")

    compared = matching.compared_attributes(matching.present_attributes(prof, matching.NORMALIZED))
    if len(compared) < 2:
        return _exact_only(prof, record_map, compared, threshold, timings, n_records, n_profiles, say)

    t0 = time.perf_counter()
    strong = [c for c in matching.STRONG if prof.filter(F.col(c).isNotNull()).limit(1).count()]
    det = matching.deterministic_edges(prof, strong) if strong else None
    linker, model = matching.train(
        prof,
        threshold=threshold,
        em_max_pairs=cfg.em_max_pairs,
        u_max_pairs=cfg.u_max_pairs,
        seed=cfg.seed,
        backend=cfg.backend,
        duckdb_memory_gb=cfg.duckdb_memory_gb,
        max_pairs_per_profile=cfg.max_pairs_per_profile,
    )
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
    del linker
    frames = [scored.assign(rule="model")]
    if det is not None:
        frames.append(det.toPandas().assign(match_probability=1.0))
    edges = pd.concat(frames, ignore_index=True)
    del frames, scored
    for c in exact_levels:
        edges[c] = edges[c].fillna(-1).astype("int8")
    timings["score_s"] = time.perf_counter() - t0
    say(
        f"identity: {len(edges):,} candidate links ({int((edges['rule'] == 'model').sum()):,} from the model)"
    )

    t0 = time.perf_counter()
    prof_pd = prof.select("profile_id", "records", "guard_source", "dob").toPandas()
    result = clustering.cluster_profiles(
        prof_pd,
        edges,
        max_records=cfg.max_cluster_records,
        exact_levels=exact_levels,
        birth_date_guard=cfg.birth_date_guard,
    )
    recs = record_map.toPandas().merge(result.assignment, on="profile_id", how="left", validate="many_to_one")
    timings["cluster_s"] = time.perf_counter() - t0
    prof.unpersist()
    record_map.unpersist()
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


def _exact_only(prof, record_map, compared, threshold, timings, n_records, n_profiles, say) -> Resolution:
    """One attribute (or none) to compare: no model can weigh it, so records match exactly on what is
    there (records with the same normalized values are one customer; a profile is one cluster)."""
    say(
        f"identity: only {', '.join(compared) or 'no attribute'} to compare; a model needs two: records are "
        "matched exactly on it"
    )
    prof_pd = prof.select("profile_id", "records", "guard_source", "dob").toPandas()
    assignment = pd.DataFrame({"profile_id": prof_pd["profile_id"], "cluster": prof_pd["profile_id"]})
    recs = record_map.toPandas().merge(assignment, on="profile_id", how="left", validate="many_to_one")
    prof.unpersist()
    record_map.unpersist()
    empty = pd.DataFrame(columns=["profile_l", "profile_r", "rule", "match_probability"])
    return Resolution(
        records=recs,
        profiles=prof_pd,
        edges=empty,
        model=matching.MatchModel({}, threshold, compared, metrics={"exact_only": 1}),
        timings={k: round(v, 2) for k, v in timings.items()},
        counts={
            "records": n_records,
            "profiles": n_profiles,
            "blocked_pairs": 0,
            "blocking_rules_changed": 0,
            "candidate_edges": 0,
            "accepted_edges": 0,
            "clusters": len(prof_pd),
        },
    )


def _exact_levels(settings: dict) -> dict[str, int]:
    """gamma_<col> → the comparison vector value of an exact match (the highest non-null level)."""
    out = {}
    for comparison in settings.get("comparisons", []):
        levels = [lv for lv in comparison["comparison_levels"] if not lv.get("is_null_level")]
        out[f"gamma_{comparison['output_column_name']}"] = len(levels) - 1
    return out
