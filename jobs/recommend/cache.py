"""The recommenders' inputs, read once per run and shared by its tasks.

`recommend_products` runs four tasks on the same `Data` (interactions, train, next_basket, lists),
each in a process of its own under the scheduler (at 20k customers: 37.8 s of Spark queries and
conversions in a local-mode process, about 8 s through a warm Spark Connect server; 0.3 s from the
files here). The first task writes what it read under `<data_dir>/cache/recommend/<key>/`; the others
load it when their key matches. The key is the run date, the Delta version of every table `read_data`
reads (an erasure, a rerun of ingestion or scoring rewrites a table and so changes it), the
recommender settings and the package version: a changed input never reads an old copy. A worker that
cannot see the folder (another machine) reads the lake as before.

The next_basket task keeps its lists there too (`save_part`) for the lists task, which fits the model
itself when they are not there. The folder is owner-only; the lists task, the run's last reader,
removes its entry; an erasure removes every entry (`privacy.erasure.erase_files`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from p13n import __version__
from p13n.config import Settings
from p13n.lake import Lake
from p13n.lake.tables import GOLD_CUSTOMER_PROFILES, GOLD_SEGMENTS, OPS_ERASURES, silver_table
from p13n.recommend.pipeline import Data, read_data

ITEM_ARRAYS = ("category", "brand", "price", "title", "repeatable", "unavailable")


def folder(settings: Settings) -> Path:
    return settings.data_dir / "cache" / "recommend"


def inputs() -> tuple[str, ...]:
    from p13n.customers.pipeline import INPUTS

    return (
        *INPUTS.values(),
        silver_table("push_notifications"),
        silver_table("wishlists"),
        silver_table("inventory_snapshots"),
        silver_table("products"),
        GOLD_SEGMENTS,
        GOLD_CUSTOMER_PROFILES,
        OPS_ERASURES,
    )


def key(lake: Lake, settings: Settings, as_of: dt.date) -> str:
    """What `read_data` would read for `as_of` now, as a hash."""
    versions = {t: lake.delta_table(t).version() if lake.exists(t) else -1 for t in sorted(set(inputs()))}
    text = json.dumps(
        [as_of.isoformat(), versions, settings.recommend.model_dump(mode="json"), __version__], sort_keys=True
    )
    return f"{as_of.isoformat()}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def load_data(lake: Lake, settings: Settings, as_of: dt.date) -> tuple[Data, Path, bool]:
    """`read_data(lake, settings, as_of)`, from this run's copy when there is one. Returns the data, the
    copy's folder (for `drop`) and whether the data came from it."""
    k = key(lake, settings, as_of)
    path = folder(settings) / k
    if (path / "meta.json").exists():
        try:
            return load(path), path, True
        except (OSError, ValueError, KeyError, pa.ArrowException):
            shutil.rmtree(path, ignore_errors=True)  # a broken copy: read the lake
    data = read_data(lake, settings, as_of)
    try:
        save(data, folder(settings), k)
    except OSError as exc:  # a copy is an optimization: the next tasks read the lake too
        print(f"recommendation inputs: no copy kept in {folder(settings)}: {exc}", flush=True)
    return data, path, False


def save(data: Data, base: Path, k: str) -> Path:
    """Write `data` as Parquet files into `base/k`, complete or not at all (staged, then renamed)."""
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    base.parent.chmod(0o700)
    base.chmod(0o700)
    stage = base / f".{k}.tmp"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(mode=0o700)
    pq.write_table(pa.Table.from_pandas(data.events, preserve_index=False), stage / "events.parquet")
    pq.write_table(
        pa.table({"customer_id": data.users.to_numpy(), "consented": data.consented}), stage / "users.parquet"
    )
    pq.write_table(
        pa.table({"sku": data.items.to_numpy(), **{a: getattr(data, a) for a in ITEM_ARRAYS}}),
        stage / "items.parquet",
    )
    pq.write_table(
        pa.table({"user": data.segment.index.to_numpy(), "persona": data.segment.to_numpy()}),
        stage / "segments.parquet",
    )
    meta = {"end": data.end.isoformat(), "versions": data.versions}
    (stage / "meta.json").write_text(json.dumps(meta))
    target = base / k
    shutil.rmtree(target, ignore_errors=True)
    stage.rename(target)
    return target


def load(path: Path) -> Data:
    meta = json.loads((path / "meta.json").read_text())
    users = pq.read_table(path / "users.parquet").to_pandas()
    items = pq.read_table(path / "items.parquet").to_pandas()
    seg = pq.read_table(path / "segments.parquet").to_pandas()
    arrays = {a: items[a].to_numpy(str if items[a].dtype == object else None) for a in ITEM_ARRAYS}
    return Data(
        users=pd.Index(users["customer_id"].to_numpy(), name="customer_id"),
        items=pd.Index(items["sku"].to_numpy(), name="sku"),
        events=pq.read_table(path / "events.parquet").to_pandas(),
        **arrays,
        segment=pd.Series(
            seg["persona"].to_numpy(), index=pd.Index(seg["user"].to_numpy(), name="user"), name="persona"
        ),
        consented=users["consented"].to_numpy(bool),
        end=pd.Timestamp(meta["end"]),
        versions=meta["versions"],
    )


def save_part(copy: Path, name: str, frame: pd.DataFrame) -> bool:
    """Keep a frame a later task of the run reads (`name`.parquet beside the inputs' copy), complete or
    not at all; False when the copy's folder is not there (its inputs were not kept) or the frame could
    not be written (a full disk: keeping it is an optimization, as the copy is)."""
    if not (copy / "meta.json").exists():
        return False
    stage = copy / f".{name}.parquet.tmp"
    try:
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), stage)
        stage.rename(copy / f"{name}.parquet")
    except OSError as exc:
        stage.unlink(missing_ok=True)
        print(f"recommendation inputs: {name} not kept in {copy}: {exc}", flush=True)
        return False
    return True


def load_part(copy: Path, name: str) -> pd.DataFrame | None:
    """The frame `save_part` kept under `name`, or None (not kept, or unreadable)."""
    try:
        return pq.read_table(copy / f"{name}.parquet").to_pandas()
    except (OSError, pa.ArrowException):
        return None


def drop(copy: Path) -> None:
    """Remove a run's copy (the last task that reads it calls this) and any copy over a day old."""
    shutil.rmtree(copy, ignore_errors=True)
    old = dt.datetime.now().timestamp() - 86_400
    for path in copy.parent.iterdir() if copy.parent.exists() else []:
        if path.stat().st_mtime < old:
            shutil.rmtree(path, ignore_errors=True)


def clear(settings: Settings) -> int:
    """Remove every copy (an erasure does, whoever they hold); returns the entries removed."""
    base = folder(settings)
    entries = list(base.iterdir()) if base.exists() else []
    for path in entries:
        shutil.rmtree(path, ignore_errors=True)
    return len(entries)
