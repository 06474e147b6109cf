"""`p13n identity resolve`: the pipeline's matcher on any CSV of person records."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from p13n.identity.ids import mint_id
from p13n.identity.records import ATTRIBUTES
from p13n.identity.resolve import resolve_records
from p13n.inputs import InputError, check_file


def resolve_file(
    spark, input_path: Path, output_path: Path, settings, *, threshold: float | None = None, progress=None
) -> dict:
    """Cluster the records of `input_path` (record_id + any of ATTRIBUTES); write record_id,customer_id.

    The model is learned from the file itself; columns the file lacks are simply not compared.
    """
    from pyspark.sql import functions as F

    check_file(input_path)
    try:
        header = pd.read_csv(input_path, nrows=0, dtype=str).columns.str.strip().tolist()
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{input_path}: not a readable CSV file ({str(exc).splitlines()[0]})") from None
    if "record_id" not in header:
        raise InputError(f"{input_path}: needs a record_id column (columns: {', '.join(header)})")
    usable = [c for c in header if c in ATTRIBUTES]
    if not usable:
        raise InputError(
            f"{input_path}: no person attribute among its columns; expected some of {', '.join(ATTRIBUTES)}"
        )
    try:
        frame = pd.read_csv(input_path, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"{input_path}: not a readable CSV file ({str(exc).splitlines()[0]})") from None
    frame.columns = frame.columns.str.strip()
    if len(frame) < 2:
        raise InputError(f"{input_path}: {len(frame)} record(s); resolving needs at least 2 to compare")
    dupes = frame["record_id"][frame["record_id"].duplicated()].unique()
    if len(dupes):
        raise InputError(
            f"{input_path}: record_id must be unique; repeated: {', '.join(map(str, dupes[:5]))}"
        )
    if frame["record_id"].isna().any():
        row = int(frame.index[frame["record_id"].isna()][0]) + 2
        raise InputError(f"{input_path}: line {row}: record_id is empty")
    t0 = time.perf_counter()
    df = spark.createDataFrame(frame[["record_id", *usable]].astype(object).where(frame.notna(), None))
    df = df.select(
        F.concat(F.lit("input:"), F.col("record_id")).alias("record_key"),
        F.lit("input").alias("source"),
        *[F.col(c).cast("string") for c in ["record_id", *usable]],
    )
    cfg = settings.identity
    res = resolve_records(
        df,
        one_per_customer=[],
        threshold=threshold or cfg.match_probability,
        max_cluster_records=cfg.max_cluster_records,
        birth_date_guard=cfg.birth_date_guard,
        em_max_pairs=cfg.em_max_pairs,
        u_max_pairs=cfg.u_max_pairs,
        seed=cfg.seed,
        backend=cfg.backend,
        duckdb_memory_gb=cfg.duckdb_memory_gb,
        max_pairs_per_profile=cfg.max_pairs_per_profile,
        progress=progress,
    )
    first = res.records.groupby("cluster")["record_key"].transform("min")
    out = pd.DataFrame(
        {"record_id": res.records["record_id"], "customer_id": [mint_id(k, "") for k in first]}
    ).sort_values("record_id")
    output_path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(output_path, index=False)
    return {
        "records": len(out),
        "customers": int(out["customer_id"].nunique()),
        "compared": res.model.columns,
        "seconds": round(time.perf_counter() - t0, 1),
        "output": str(output_path),
    }
