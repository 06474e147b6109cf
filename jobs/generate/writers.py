"""Landing-file writers, one per export format, numbering records exactly as the readers do.

A writer collects one day's records for one source and writes them the way the source system would:
CSV with a header, JSON lines, paginated JSON API pages, Parquet, a fixed-width extract, XML. It
returns, for every record it wrote, its file and record number, so planted bad records can be
located exactly in the ground truth.
"""

from __future__ import annotations

import csv
import json
import pickle
import zlib
from itertools import islice
from pathlib import Path
from xml.sax.saxutils import escape

import pyarrow as pa
import pyarrow.parquet as pq

from p13n.sources.catalog import Source

PAGE_SIZE = 500


class Spool:
    """An append-only list of records that keeps all but its newest ones pickled and compressed.

    A day's batch of a source is collected before it is written (bad records are planted among
    them); day 0 also carries a year of purchase history, which for a million customers is 33M
    records: as dicts they passed 6 GB in the first 6 of the 37 minutes; packed, 2.4 GB after 26
    (with all the generator's other state). Records are packed once
    `chunk` newer ones follow them, so a record still being filled in is never packed. Iterating
    yields copies of packed records: a change to one is not kept.
    """

    def __init__(self, chunk: int = 20_000):
        self.chunk = chunk
        self._packed: list[tuple[int, bytes]] = []  # (records, zlib(pickle(records)))
        self._n_packed = 0
        self._tail: list[dict] = []

    def append(self, record: dict) -> None:
        self._tail.append(record)
        if len(self._tail) >= 2 * self.chunk:
            head, self._tail = self._tail[: self.chunk], self._tail[self.chunk :]
            self._packed.append((len(head), zlib.compress(pickle.dumps(head, protocol=5), 1)))
            self._n_packed += len(head)

    def __len__(self) -> int:
        return self._n_packed + len(self._tail)

    def __iter__(self):
        for _, blob in self._packed:
            yield from pickle.loads(zlib.decompress(blob))
        yield from self._tail

    def take(self, positions) -> dict[int, dict]:
        """The records at `positions`, unpacking each chunk at most once."""
        wanted, out, start = sorted(set(positions)), {}, 0
        i = 0
        for n, blob in [*self._packed, (len(self._tail), None)]:
            end = start + n
            if i < len(wanted) and wanted[i] < end:
                records = self._tail if blob is None else pickle.loads(zlib.decompress(blob))
                while i < len(wanted) and wanted[i] < end:
                    out[wanted[i]] = records[wanted[i] - start]
                    i += 1
            start = end
        return out


Records = list[dict] | Spool  # what a writer takes: a day's records of one source, iterated in order


def _raw_name(source: Source, column: str) -> str:
    return source.column(column).source


def _nest(record: dict) -> dict:
    """{"a.b": 1} -> {"a": {"b": 1}}: API and JSON exports carry dotted fields as nested objects."""
    out: dict = {}
    for key, value in record.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def write_day(
    source: Source, folder: Path, records: Records, *, header: list[str] | None = None
) -> list[tuple[str, int]]:
    """Write one day's records (keyed by raw field names); return (file name, record number) per record.

    A record may carry `__raw__` (the exact text to write for it: a malformed line) or `__extra__`
    (fields the catalog does not declare: schema drift).
    """
    if not records:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    fmt = source.format
    if fmt == "csv":
        return _csv(source, folder, records, header)
    if fmt == "jsonl":
        return _jsonl(folder, records)
    if fmt == "api_json":
        return _api(source, folder, records)
    if fmt == "parquet":
        return _parquet(source, folder, records)
    if fmt == "fixed_width":
        return _fixed(source, folder, records)
    if fmt == "xml":
        return _xml(source, folder, records)
    raise ValueError(f"{source.name}: no landing writer for format {fmt!r}")


def _csv(source: Source, folder: Path, records: Records, header: list[str] | None) -> list[tuple[str, int]]:
    cols = header or [c.source for c in source.columns]
    extra = sorted({k for r in records for k in (r.get("__extra__") or {})})
    cols = cols + [e for e in extra if e not in cols]
    name = "export.csv"
    out = []
    with open(folder / name, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(cols)
        for line, record in enumerate(records, start=2):
            if "__raw__" in record:
                handle.write(record["__raw__"] + "\n")
            else:
                values = {**record, **(record.get("__extra__") or {})}
                writer.writerow(["" if values.get(c) is None else values.get(c) for c in cols])
            out.append((name, line))
    return out


def _jsonl(folder: Path, records: Records) -> list[tuple[str, int]]:
    name = "events.jsonl"
    out = []
    with open(folder / name, "w", encoding="utf-8") as handle:
        for line, record in enumerate(records, start=1):
            if "__raw__" in record:
                handle.write(record["__raw__"] + "\n")
            else:
                body = _nest({k: v for k, v in record.items() if not k.startswith("__")})
                body.update(record.get("__extra__") or {})
                handle.write(json.dumps(body, default=str) + "\n")
            out.append((name, line))
    return out


def _api(source: Source, folder: Path, records: Records) -> list[tuple[str, int]]:
    key = source.options.get("records_key", "data")
    out = []
    n_pages = -(-len(records) // PAGE_SIZE)
    rows = iter(records)
    for number in range(1, n_pages + 1):
        page = list(islice(rows, PAGE_SIZE))
        name = f"page-{number:04d}.json"
        items = []
        for index, record in enumerate(page, start=1):
            body = _nest({k: v for k, v in record.items() if not k.startswith("__")})
            body.update(record.get("__extra__") or {})
            items.append(body)
            out.append((name, index))
        doc = {
            key: items,
            "page": number,
            "next_page": f"page-{number + 1:04d}.json" if number < n_pages else None,
        }
        (folder / name).write_text(json.dumps(doc, default=str))
    return out


def _parquet(source: Source, folder: Path, records: Records) -> list[tuple[str, int]]:
    name = "export.parquet"
    cols = [c.source for c in source.columns]
    table = pa.Table.from_pylist([{c: r.get(c) for c in cols} for r in records])
    pq.write_table(table, folder / name)
    return [(name, i) for i in range(1, len(records) + 1)]


def _fixed(source: Source, folder: Path, records: Records) -> list[tuple[str, int]]:
    name = "SALES.DAT"
    out = []
    with open(folder / name, "w", encoding="latin-1") as handle:
        for line, record in enumerate(records, start=1):
            if "__raw__" in record:
                text = record["__raw__"]
            else:
                text = ""
                for c in source.columns:
                    start, end = c.width
                    value = "" if record.get(c.source) is None else str(record[c.source])
                    text = text.ljust(start) + value[: end - start].ljust(end - start)
            handle.write(text + "\n")
            out.append((name, line))
    return out


def _xml(source: Source, folder: Path, records: Records) -> list[tuple[str, int]]:
    tag = source.options.get("record_tag", "record")
    name = "returns.xml"
    out = []
    parts = ['<?xml version="1.0" encoding="UTF-8"?>', "<returns>"]
    for index, record in enumerate(records, start=1):
        if "__raw__" in record:
            parts.append(record["__raw__"])
        else:
            fields = "".join(
                f"<{k}>{escape(str(v))}</{k}>"
                for k, v in record.items()
                if not k.startswith("__") and v is not None
            )
            parts.append(f"  <{tag}>{fields}</{tag}>")
        out.append((name, index))
    parts.append("</returns>")
    (folder / name).write_text("\n".join(parts) + "\n", encoding="utf-8")
    return out
