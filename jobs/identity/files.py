"""`p13n identity resolve`: the pipeline's matcher on any CSV of person records."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from p13n.identity.ids import mint_id
from p13n.identity.records import ATTRIBUTES
from p13n.identity.resolve import resolve_records
from p13n.inputs import InputError, check_file


def read_records(input_path: Path) -> pd.DataFrame:
    """One user file of person records, checked: record_id (unique, never empty) and the attributes."""
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
    dupes = frame["record_id"][frame["record_id"].duplicated()].unique()
    if len(dupes):
        raise InputError(
            f"{input_path}: record_id must be unique; repeated: {', '.join(map(str, dupes[:5]))}"
        )
    if frame["record_id"].isna().any():
        row = int(frame.index[frame["record_id"].isna()][0]) + 2
        raise InputError(f"{input_path}: line {row}: record_id is empty")
    return frame[["record_id", *usable]]


DATE_FORMATS = ("%Y-%m-%d", "%m/%d/%Y", "%Y/%m/%d", "%Y%m%d")  # what `records.normalize_date` reads


def unreadable_dates(frame: pd.DataFrame) -> tuple[int, list[int]]:
    """(birth dates that are given but read in no known format, their first CSV lines): kept as missing."""
    if "birth_date" not in frame:
        return 0, []
    given = frame["birth_date"].dropna().astype(str).str.strip()
    given = given[given != ""]
    ok = pd.Series(False, index=given.index)
    for fmt in DATE_FORMATS:
        ok |= pd.to_datetime(given, format=fmt, errors="coerce").notna()
    bad = given.index[~ok]
    return len(bad), [int(i) + 2 for i in bad[:3]]


def resolve_file(
    input_path: Path | list[Path],
    output_path: Path,
    settings,
    *,
    threshold: float | None = None,
    link_only: bool = False,
    progress=None,
) -> dict:
    """Cluster the records of one file, or link several; write record_id,customer_id (with several
    files: record_id,file,customer_id, each record keeping its file of origin).

    The model is learned from the records themselves; columns a file lacks are simply not compared.
    Several files are linked and deduplicated together; with `link_only` each file is taken as already
    deduplicated: two records of one file never end up in one customer.
    """
    paths = [Path(p) for p in (input_path if isinstance(input_path, list | tuple) else [input_path])]
    names = [p.stem for p in paths] if len(paths) > 1 else ["input"]  # one file: the ids of earlier versions
    if len(set(names)) != len(names):
        raise InputError(
            f"the input files need different names (they label the records): {', '.join(map(str, paths))}"
        )
    frames = []
    say = progress or (lambda _m: None)
    bad_dates = 0
    for path, name in zip(paths, names, strict=True):
        f = read_records(path)
        n, lines = unreadable_dates(f)
        if n:
            say(f"{path}: {n:,} birth dates in no known format (e.g. lines {lines}) are taken as missing")
            bad_dates += n
        frames.append(f.assign(source=name))
    frame = pd.concat(frames, ignore_index=True)
    usable = [c for c in frame.columns if c in ATTRIBUTES]
    if len(frame) < 2:
        raise InputError(f"{paths[0]}: {len(frame)} record(s); resolving needs at least 2 to compare")
    if link_only and len(paths) < 2:
        raise InputError("--link-only links two or more files: give --input twice")
    t0 = time.perf_counter()
    cols = ["record_id", "source", *usable]
    records = frame[cols].astype(str).where(frame[cols].notna(), None)
    records.insert(0, "record_key", records["source"] + ":" + records["record_id"].astype(str))
    cfg = settings.identity
    res = resolve_records(
        records, cfg, one_per_customer=names if link_only else [], threshold=threshold, progress=progress
    )
    first = res.records.groupby("cluster")["record_key"].transform("min")
    out = pd.DataFrame(
        {
            "record_id": res.records["record_id"],
            "file": res.records["source"],
            "customer_id": [mint_id(k, "") for k in first],
        }
    ).sort_values(["file", "record_id"])
    if len(paths) == 1:
        out = out.drop(columns="file")
    output_path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(output_path, index=False)
    return {
        "records": len(out),
        "customers": int(out["customer_id"].nunique()),
        "compared": res.model.columns,
        "seconds": round(time.perf_counter() - t0, 1),
        "output": str(output_path),
        "unreadable_dates": bad_dates,
    }
