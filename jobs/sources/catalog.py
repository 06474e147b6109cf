"""The source catalog (conf/sources.yaml): every source the retailer sends, declared once.

Each source names its system, format, location, columns, primary key, incremental cursor, PII
columns, owner and freshness. Columns are declared compactly, one line each::

    email: email pii                  # semantic type, then flags
    status: enum(paid|refunded) required
    total: money min=0 currency=currency
    zip: postal_code from=billing_address.zip pii

Types: string, int, double, money, bool, date, timestamp, email, phone, name, street, city, state,
postal_code, country, currency, enum(a|b|…). Flags: required, pii, future (a timestamp that may lie
after its batch, like a promotion's end; others may not), min=, max=, from= (the field's
name or dotted path in the raw record), currency= (the column holding a money column's currency),
width=start:end (fixed-width files).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from p13n.config import REPO_ROOT, ConfigError
from p13n.lake.tables import Table

CATALOG_FILE = REPO_ROOT / "conf" / "sources.yaml"
FORMATS = ("csv", "jsonl", "parquet", "fixed_width", "xml", "api_json", "snowflake", "kafka")
TYPES = (
    "string",
    "int",
    "double",
    "money",
    "bool",
    "date",
    "timestamp",
    "email",
    "phone",
    "name",
    "street",
    "city",
    "state",
    "postal_code",
    "country",
    "currency",
    "enum",
)
PII_TYPES = ("email", "phone", "name", "street")
_ENUM = re.compile(r"^enum\(([^)]*)\)$")


class Column(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    type: str
    required: bool = False
    pii: bool = False
    future: bool = False
    source: str  # field name (or dotted path) in the raw record
    min: float | None = None
    max: float | None = None
    values: tuple[str, ...] = ()
    currency: str | None = None
    width: tuple[int, int] | None = None

    @classmethod
    def parse(cls, name: str, spec: str) -> Column:
        tokens = str(spec).split()
        if not tokens:
            raise ValueError(f"column {name!r}: empty spec")
        kind, flags = tokens[0], tokens[1:]
        fields: dict = {"name": name, "source": name}
        m = _ENUM.match(kind)
        if m:
            fields["type"], fields["values"] = (
                "enum",
                tuple(v.strip() for v in m.group(1).split("|") if v.strip()),
            )
        elif kind in TYPES:
            fields["type"] = kind
        else:
            raise ValueError(f"column {name!r}: unknown type {kind!r}; known: {', '.join(TYPES)}")
        for flag in flags:
            key, eq, value = flag.partition("=")
            if not eq and key in ("required", "pii", "future"):
                fields[key] = True
            elif key in ("min", "max"):
                fields[key] = float(value)
            elif key == "from":
                fields["source"] = value
            elif key == "currency":
                fields["currency"] = value
            elif key == "width":
                start, _, end = value.partition(":")
                fields["width"] = (int(start), int(end))
            else:
                raise ValueError(f"column {name!r}: unknown flag {flag!r}")
        return cls(**fields)


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    system: str
    description: str
    format: Literal[FORMATS]  # type: ignore[valid-type]
    location: str  # folder under the landing zone, a topic, or db.schema.table
    kind: Literal["entity", "event"]
    primary_key: tuple[str, ...]
    cursor: str | None = None  # incremental cursor column (entities: the newest version wins)
    event_time: str | None = None  # events: the column that dates them (silver is partitioned by its date)
    owner: str
    freshness_hours: int = Field(gt=0)
    timezone: str = "UTC"  # the zone of timestamps that carry no offset
    columns: tuple[Column, ...]
    options: dict[str, str] = Field(default_factory=dict)

    @field_validator("columns", mode="before")
    @classmethod
    def _parse_columns(cls, v):
        if isinstance(v, dict):
            return tuple(Column.parse(k, s) for k, s in v.items())
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Source:
        names = [c.name for c in self.columns]
        for key in (*self.primary_key, self.cursor, self.event_time):
            if key and key not in names:
                raise ValueError(f"{key!r} is not a declared column ({', '.join(names)})")
        if self.kind == "event" and not self.event_time:
            raise ValueError("an event source needs event_time")
        if self.format == "fixed_width" and any(c.width is None for c in self.columns):
            raise ValueError("every column of a fixed_width source needs width=start:end")
        for c in self.columns:
            if c.type == "money" and c.currency and c.currency not in names:
                raise ValueError(f"column {c.name!r}: currency column {c.currency!r} is not declared")
        return self

    # A source's four tables are named here, once (the lake's catalog lists them beside its own).
    @property
    def _day(self) -> str | None:
        """Silver and restricted partition events by their date; entities are not partitioned."""
        return "event_date" if self.kind == "event" else None

    @property
    def silver_table(self) -> Table:
        return Table(
            f"silver.{self.name}",
            partition_by=self._day,
            key=self.primary_key,
            owner=self.owner,
            about=f"{self.description} (typed, deduplicated, PII pseudonymized)",
        )

    @property
    def bronze_table(self) -> Table:
        return Table(
            f"bronze.{self.name}",
            partition_by="_batch_date",
            owner=self.owner,
            about=f"{self.name} as received, one partition per batch",
        )

    @property
    def quarantine_table(self) -> Table:
        return Table(
            f"quarantine.{self.name}",
            partition_by="batch_date",
            owner=self.owner,
            about=f"{self.name}'s refused rows with their reasons",
        )

    @property
    def restricted_table(self) -> Table | None:
        if not self.pii_columns:
            return None
        return Table(
            f"restricted.{self.name}",
            partition_by=self._day,
            key=self.primary_key,
            owner=self.owner,
            about=f"{self.name}'s raw PII columns",
        )

    @property
    def pii_columns(self) -> list[str]:
        return [c.name for c in self.columns if c.pii]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: dict[str, Source]
    fx_to_usd: dict[str, float]

    def __iter__(self):
        return iter(self.sources.values())

    def __getitem__(self, name: str) -> Source:
        try:
            return self.sources[name]
        except KeyError:
            raise KeyError(f"unknown source {name!r}; known: {', '.join(self.sources)}") from None

    def names(self) -> list[str]:
        return list(self.sources)


def load_catalog(path: str | Path = CATALOG_FILE) -> Catalog:
    """Load and validate the catalog; an error names the source and the field at fault."""
    path = Path(path)
    raw = yaml.safe_load(path.read_text()) or {}
    sources = {}
    for name, spec in (raw.get("sources") or {}).items():
        try:
            sources[name] = Source(name=name, **spec)
        except ValidationError as exc:
            problems = "; ".join(
                (f"{'.'.join(str(p) for p in e['loc'])}: " if e["loc"] else "")
                + e["msg"].removeprefix("Value error, ")
                for e in exc.errors()
            )
            raise ConfigError(f"{path}: source {name!r}: {problems}") from None
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: source {name!r}: {exc}") from None
    return Catalog(sources=sources, fx_to_usd=raw.get("fx_to_usd") or {"USD": 1.0})


@lru_cache(maxsize=1)
def catalog() -> Catalog:
    return load_catalog()
