"""Parsers of the landing formats, run by the ingesting task for a small batch and on Spark executors
for a large one (one task reads whole files; `sources.parse_here_max_bytes`).

Every reader yields one dict per record: the declared columns as raw strings, plus where the record
came from (`_file`, `_record`: line number, row or element index), its raw text (`_raw`), fields no
column declares (`_extra`, JSON: schema drift), and `_parse_error` when the record could not be
read at all. A malformed record never stops the file: it is yielded with its error, to be quarantined.
"""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

from p13n.sources.catalog import Source

META_COLUMNS = ("_file", "_record", "_raw", "_extra", "_parse_error")
_MAX_RAW = 1 << 20  # at most 1 MiB of raw text per record (the tail of a broken XML file, say)


def bronze_arrow_schema(source: Source):
    """The Arrow schema of the records a reader yields: declared columns as text, then provenance."""
    import pyarrow as pa

    return pa.schema(
        [(c.name, pa.string()) for c in source.columns]
        + [
            ("_file", pa.string()),
            ("_record", pa.int64()),
            ("_raw", pa.string()),
            ("_extra", pa.string()),
            ("_parse_error", pa.string()),
        ]
    )


def bronze_ddl(source: Source) -> str:
    """The same schema as Spark DDL (for mapInArrow and createDataFrame)."""
    cols = [f"`{c.name}` string" for c in source.columns]
    return ", ".join(
        [*cols, "_file string", "_record long", "_raw string", "_extra string", "_parse_error string"]
    )


def to_text(value: Any) -> str | None:
    """A raw field as text, as the system sent it (booleans and numbers in their JSON spelling)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _dig(record: dict, path: str) -> Any:
    node: Any = record
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


_PLANS: dict[int, tuple] = {}


def _plan(source: Source) -> tuple[list[tuple[str, str, bool]], frozenset]:
    """Per source, once: (column, field path, nested?) and the top-level fields it declares."""
    plan = _PLANS.get(id(source))
    if plan is None or plan[0] is not source:
        if len(_PLANS) > 256:  # executors unpickle a new Source per task: keep the cache bounded
            _PLANS.clear()
        columns = [(c.name, c.source, "." in c.source) for c in source.columns]
        plan = (source, columns, frozenset(c.source.split(".", 1)[0] for c in source.columns))
        _PLANS[id(source)] = plan
    return plan[1], plan[2]


def _from_mapping(source: Source, record: dict, file: str, index: int, raw: str) -> dict:
    columns, known = _plan(source)
    out = {}
    for name, path, nested in columns:
        value = _dig(record, path) if nested else record.get(path)
        out[name] = value if type(value) is str else to_text(value)
    extra = {k: v for k, v in record.items() if k not in known}
    out.update(
        _file=file,
        _record=index,
        _raw=raw[:_MAX_RAW],
        _extra=json.dumps(extra, default=str) if extra else None,
        _parse_error=None,
    )
    return out


def mapping_record(source: Source, record: dict, file: str, index: int, raw: str) -> dict:
    return _from_mapping(source, record, file, index, raw)


def error_record(source: Source, file: str, index: int, raw: str, message: str) -> dict:
    return _error(source, file, index, raw, message)


def _error(source: Source, file: str, index: int, raw: str, message: str) -> dict:
    out: dict = dict.fromkeys(c.name for c in source.columns)
    out.update(_file=file, _record=index, _raw=raw[:_MAX_RAW], _extra=None, _parse_error=message)
    return out


def read_records(path: str, source: Source, display_name: str | None = None) -> Iterator[dict]:
    """Yield the records of one landing file of `source`."""
    name = display_name or path
    reader = _READERS[source.format]
    yield from reader(path, source, name)


class _LineTap:
    """Feeds csv.reader line by line and remembers the physical lines of the current row."""

    def __init__(self, handle):
        self.handle = handle
        self.lines: list[str] = []

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = next(self.handle)
        self.lines.append(line)
        return line

    def take(self) -> str:
        raw, self.lines = "".join(self.lines), []
        return raw.rstrip("\r\n")


def _read_csv(path: str, source: Source, name: str) -> Iterator[dict]:
    delimiter = source.options.get("delimiter", ",")
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        tap = _LineTap(handle)
        rows = csv.reader(tap, delimiter=delimiter)
        try:
            header = next(rows)
        except StopIteration:
            return
        tap.take()
        by_source = {c.source: c.name for c in source.columns}
        while True:
            start_line = rows.line_num + 1
            try:
                row = next(rows)
            except StopIteration:
                return
            except csv.Error as exc:
                yield _error(source, name, start_line, tap.take(), f"malformed CSV: {exc}")
                continue
            raw = tap.take()
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if len(row) != len(header):
                yield _error(source, name, start_line, raw, f"expected {len(header)} fields, got {len(row)}")
                continue
            record = dict(zip(header, row, strict=True))
            out = {c.name: None for c in source.columns}
            extra = {}
            for key, value in record.items():
                if key in by_source:
                    out[by_source[key]] = value if value != "" else None
                else:
                    extra[key] = value
            out.update(
                _file=name,
                _record=start_line,
                _raw=raw,
                _extra=json.dumps(extra) if extra else None,
                _parse_error=None,
            )
            yield out


def parse_json_record(source: Source, text: str, name: str, number: int) -> dict:
    """One JSON object (a JSON line, a Kafka message value) as a bronze record."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        return _error(source, name, number, text, f"invalid JSON: {exc.msg} at column {exc.colno}")
    if not isinstance(record, dict):
        return _error(source, name, number, text, f"expected a JSON object, got {type(record).__name__}")
    return _from_mapping(source, record, name, number, text)


def _read_jsonl(path: str, source: Source, name: str) -> Iterator[dict]:
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.rstrip("\r\n")
            if text.strip():
                yield parse_json_record(source, text, name, number)


def _read_api_json(path: str, source: Source, name: str) -> Iterator[dict]:
    """A page of a paginated API dump: {"<records_key>": [...], "next_page": …}."""
    key = source.options.get("records_key", "data")
    with open(path, encoding="utf-8", errors="replace") as handle:
        text = handle.read()
    try:
        page = json.loads(text)
        records = page[key]
        if not isinstance(records, list):
            raise TypeError(f"'{key}' is not a list")
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        yield _error(source, name, 0, text, f"unreadable API page: {exc}")
        return
    for index, record in enumerate(records, start=1):
        raw = json.dumps(record, sort_keys=True, default=str)
        if not isinstance(record, dict):
            yield _error(source, name, index, raw, f"expected a JSON object, got {type(record).__name__}")
        else:
            yield _from_mapping(source, record, name, index, raw)


def _read_parquet(path: str, source: Source, name: str) -> Iterator[dict]:
    import pyarrow.parquet as pq

    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536):
        for record in batch.to_pylist():
            index += 1
            yield _from_mapping(source, record, name, index, json.dumps(record, default=str))


def _read_fixed_width(path: str, source: Source, name: str) -> Iterator[dict]:
    needed = max(c.width[1] for c in source.columns)
    with open(path, encoding="latin-1") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.rstrip("\r\n")
            if not text.strip():
                continue
            if len(text) < needed:
                yield _error(
                    source, name, number, text, f"line is {len(text)} characters, the layout needs {needed}"
                )
                continue
            out = {c.name: (text[c.width[0] : c.width[1]].strip() or None) for c in source.columns}
            extra = text[needed:].strip()
            out.update(
                _file=name,
                _record=number,
                _raw=text,
                _extra=json.dumps({"trailing": extra}) if extra else None,
                _parse_error=None,
            )
            yield out


def _read_xml(path: str, source: Source, name: str) -> Iterator[dict]:
    tag = source.options.get("record_tag", "record")
    index = 0
    try:
        for _, elem in ET.iterparse(path, events=("end",)):
            if elem.tag != tag:
                continue
            index += 1
            record = {child.tag: child.text for child in elem}
            record.update({k: v for k, v in elem.attrib.items() if k not in record})
            raw = ET.tostring(elem, encoding="unicode").strip()
            elem.clear()
            yield _from_mapping(source, record, name, index, raw)
    except ET.ParseError as exc:
        line, column = exc.position
        with open(path, encoding="utf-8", errors="replace") as handle:
            tail = "".join(handle.readlines()[max(line - 1, 0) :])
        yield _error(
            source,
            name,
            index + 1,
            tail,
            f"malformed XML at line {line}, column {column}: {exc}; the rest of the file is in _raw",
        )


_READERS = {
    "csv": _read_csv,
    "jsonl": _read_jsonl,
    "api_json": _read_api_json,
    "parquet": _read_parquet,
    "fixed_width": _read_fixed_width,
    "xml": _read_xml,
}


# A byte every record of a text format holds at least once: a record is at most one per occurrence
# (plus one: a last line without its newline).
_RECORD_MARK = {"csv": b"\n", "jsonl": b"\n", "fixed_width": b"\n", "api_json": b"{", "xml": b"<"}


def records_at_most(path: str, fmt: str) -> int:
    """An upper bound on the records of one landing file, without parsing it: Parquet's footer
    states its rows; a text file holds at most one record per newline (per `{` of a JSON array, per
    `<` of an XML document), plus one."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.read_metadata(path).num_rows
    mark = _RECORD_MARK[fmt]
    with open(path, "rb") as handle:
        return 1 + sum(chunk.count(mark) for chunk in iter(lambda: handle.read(1 << 20), b""))


def read_text(data: str, source: Source) -> list[dict]:
    """Parse an in-memory file (tests and previews)."""
    import os
    import tempfile

    with tempfile.NamedTemporaryFile("w", delete=False, suffix=".txt", encoding="utf-8") as tmp:
        tmp.write(data)
    try:
        return list(read_records(tmp.name, source, display_name="<memory>"))
    finally:
        os.unlink(tmp.name)
