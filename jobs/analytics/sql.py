"""Analysts' SQL (`sql/`): one file per view or mart, portable between DuckDB and Spark SQL.

A file refers to lake tables as `{{ layer.name }}` and to other files of `sql/` as `{{ name }}`
(inlined as a subquery, so a mart can build on a view). `render` resolves them for an engine:
DuckDB reads a table with `delta_scan('<uri>')`; Spark reads it through the Lake and a temporary
view. The files keep to SQL both engines share (no engine-specific functions).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from p13n.config import REPO_ROOT

SQL_DIR = REPO_ROOT / "sql"
_REF = re.compile(r"\{\{\s*([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)?)\s*\}\}")


class SqlError(ValueError):
    pass


def files() -> list[str]:
    return sorted(p.stem for p in SQL_DIR.glob("*.sql"))


def source(name_or_path: str) -> tuple[str, str]:
    """(name, SQL text) of `sql/<name>.sql`, a path, or '-' (standard input)."""
    import sys

    if name_or_path == "-":
        return "stdin", sys.stdin.read()
    path = Path(name_or_path)
    if not path.exists():
        path = SQL_DIR / f"{name_or_path.removesuffix('.sql')}.sql"
    if not path.exists():
        raise SqlError(f"no SQL file {name_or_path!r} (in sql/: {', '.join(files())})")
    return path.stem, path.read_text()


def render(text: str, table: Callable[[str], str], _stack: tuple[str, ...] = ()) -> str:
    """Resolve the `{{ }}` references: tables through `table(name)`, views by inlining their file."""

    def sub(m: re.Match) -> str:
        ref = m.group(1)
        if "." in ref:
            return table(ref)
        if ref in _stack:
            raise SqlError(f"sql/{ref}.sql refers to itself through {' -> '.join((*_stack, ref))}")
        path = SQL_DIR / f"{ref}.sql"
        if not path.exists():
            raise SqlError(f"{{{{ {ref} }}}}: no sql/{ref}.sql (lake tables are written layer.name)")
        body = _strip_comments(path.read_text())
        return f"(\n{render(body, table, (*_stack, ref))}\n)"

    return _REF.sub(sub, _strip_comments(text)).strip().rstrip(";")


def _strip_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))


def tables_of(text: str) -> set[str]:
    """Every lake table a file reads, through the views it inlines too."""
    seen: set[str] = set()
    render(text, lambda t: seen.add(t) or t)
    return seen


RESTRICTED_ZONES = ("restricted", "bronze", "quarantine")


def sandbox(settings, tables: set[str]):
    """A DuckDB connection that can read these lake tables and nothing else: external access off
    (no other file, no network, no COPY/ATTACH/INSTALL), locked so the query cannot turn it back on."""
    from p13n.lake.duck import duckdb_connection, table_uri

    con = duckdb_connection()
    allowed = [table_uri(settings.lake_root, t).rstrip("/") + "/" for t in sorted(tables)]
    con.execute("SET allowed_directories = ?", [allowed])
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def run_duckdb(settings, text: str):
    """The result as a pandas DataFrame, read with DuckDB over the Delta tables, sandboxed."""
    import duckdb

    from p13n.lake.duck import scan, table_exists

    tables = tables_of(text)
    zones = sorted({t for t in tables if t.split(".", 1)[0] in RESTRICTED_ZONES})
    if zones and not settings.privacy.sql_restricted_zones:
        raise SqlError(
            f"{', '.join(zones)}: restricted zone (raw contact data); an analyst reads it only when "
            "granted (privacy.sql_restricted_zones)"
        )
    missing = sorted(t for t in tables if not table_exists(settings.lake_root, t))
    if missing:
        raise SqlError(f"these tables do not exist yet: {', '.join(missing)}")
    query = render(text, lambda t: scan(settings.lake_root, t))
    try:
        return sandbox(settings, tables).execute(query).df()
    except duckdb.PermissionException as e:
        raise SqlError(
            f"not allowed: the query may read only the lake tables it names as {{{{ layer.name }}}} "
            f"({str(e).splitlines()[0][:160]})"
        ) from None
    except duckdb.Error as e:
        raise SqlError(f"{type(e).__name__}: {str(e).splitlines()[0][:300]}") from None


def run_spark(lake, text: str):
    """The result as a Spark DataFrame: each table read through the Lake as a temporary view."""
    names = {}
    for t in sorted(tables_of(text)):
        view = t.replace(".", "__")
        lake.read(t).createOrReplaceTempView(view)
        names[t] = view
    return lake.spark.sql(render(text, names.__getitem__))
