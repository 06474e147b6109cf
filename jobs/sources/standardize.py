"""Bronze → silver for any catalog source: pure DataFrame-in/DataFrame-out steps, Spark built-ins only.

`standardize` types and standardizes every declared column (emails trimmed and lower-cased, phones
in E.164, names and addresses normalized, timestamps in UTC, money as decimals with a USD value) and
collects, per row, the reasons it cannot be promoted. `split_rejects` separates promotable rows from
rejects; `deduplicate` keeps one row per primary key; `pseudonymize` replaces PII with keyed HMAC
pseudonyms for silver and returns the raw PII for the restricted table.
"""

from __future__ import annotations

import datetime as dt
import hashlib

from pyspark.sql import Column as SparkColumn
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from p13n.sources.catalog import Column, Source

REASONS = "_reasons"
LINEAGE = ["_batch_id", "_batch_date", "_file", "_record"]
QUARANTINE_SCHEMA = (
    "source string, batch_id string, batch_date date, file string, record long, raw string, reason string, "
    "stage string"
)
_EMAIL = r"^[a-z0-9._%+\-]+@[a-z0-9.\-]+\.[a-z]{2,}$"
_OFFSET = r"(Z|[+-][0-9]{2}:?[0-9]{2})$"
_STREET_WORDS = [
    (r"(?i)\bstreet\b", "St"),
    (r"(?i)\bavenue\b", "Ave"),
    (r"(?i)\broad\b", "Rd"),
    (r"(?i)\bboulevard\b", "Blvd"),
    (r"(?i)\bdrive\b", "Dr"),
    (r"(?i)\blane\b", "Ln"),
    (r"(?i)\bcourt\b", "Ct"),
    (r"(?i)\bapartment\b", "Apt"),
    (r"(?i)\bsuite\b", "Ste"),
    (r"(?i)\bnorth\b", "N"),
    (r"(?i)\bsouth\b", "S"),
    (r"(?i)\beast\b", "E"),
    (r"(?i)\bwest\b", "W"),
]
_EARLIEST = dt.date(1900, 1, 1)


def _blank_to_null(raw: SparkColumn) -> SparkColumn:
    trimmed = F.trim(raw)
    return F.when(trimmed == "", None).otherwise(trimmed)


def _timestamp(raw: SparkColumn, tz: str) -> SparkColumn:
    """Parse the timestamp spellings sources use; values without an offset are in the source's zone."""
    epoch_ms = raw.rlike(r"^[0-9]{13}$")
    parsed = F.coalesce(
        F.when(epoch_ms, F.timestamp_millis(raw.try_cast("long"))),
        raw.try_cast("timestamp"),
        F.try_to_timestamp(raw, F.lit("MM/dd/yyyy HH:mm:ss")),
        F.try_to_timestamp(raw, F.lit("yyyyMMddHHmmss")),
        F.try_to_timestamp(raw, F.lit("yyyy-MM-dd HH:mm:ss")),
    )
    if tz != "UTC":
        # an explicit offset or an epoch instant is absolute; anything else is wall-clock time in `tz`
        parsed = F.when(raw.rlike(_OFFSET) | epoch_ms, parsed).otherwise(F.to_utc_timestamp(parsed, tz))
    return parsed


def _phone_e164(raw: SparkColumn) -> SparkColumn:
    digits = F.regexp_replace(raw, r"[^0-9]", "")
    n = F.length(digits)
    return (
        F.when(F.trim(raw).startswith("+") & n.between(8, 15), F.concat(F.lit("+"), digits))
        .when((n == 10) & ~digits.rlike("^[01]"), F.concat(F.lit("+1"), digits))
        .when((n == 11) & digits.startswith("1"), F.concat(F.lit("+"), digits))
    )


def _name(raw: SparkColumn) -> SparkColumn:
    return F.initcap(F.lower(F.regexp_replace(raw, r"\s+", " ")))


def _street(raw: SparkColumn) -> SparkColumn:
    value = F.initcap(F.lower(F.regexp_replace(F.regexp_replace(raw, r"[.,]", " "), r"\s+", " ")))
    for pattern, short in _STREET_WORDS:
        value = F.regexp_replace(value, pattern, short)
    return F.trim(value)


def _postal_code(raw: SparkColumn) -> SparkColumn:
    up = F.upper(F.regexp_replace(raw, r"\s+", ""))
    return F.when(up.rlike(r"^[0-9]{5}(-?[0-9]{4})?$"), F.substring(up, 1, 5)).when(
        up.rlike(r"^[A-Z][0-9][A-Z][0-9][A-Z][0-9]$"),
        F.concat(F.substring(up, 1, 3), F.lit(" "), F.substring(up, 4, 3)),
    )


def parse_column(
    col: Column, raw: SparkColumn, tz: str, fx: dict[str, float]
) -> tuple[SparkColumn, SparkColumn, str]:
    """(typed value, condition that the raw value is present but invalid, what was expected)."""
    t = col.type
    if t == "string":
        return raw, F.lit(False), ""
    if t == "int":
        v = raw.try_cast("long")
        return v, v.isNull(), "an integer"
    if t == "double":
        v = raw.try_cast("double")
        return v, v.isNull(), "a number"
    if t == "money":
        v = F.regexp_replace(raw, r"[$,]", "").try_cast("decimal(18,2)")
        return v, v.isNull(), "an amount of money"
    if t == "bool":
        low = F.lower(raw)
        v = F.when(low.isin("true", "1", "yes", "y", "t"), True).when(
            low.isin("false", "0", "no", "n", "f"), False
        )
        return v, v.isNull(), "true or false"
    if t == "date":
        v = F.coalesce(F.try_to_date(raw, "yyyy-MM-dd"), F.try_to_date(raw, "MM/dd/yyyy"))
        return v, v.isNull() | (v < F.lit(_EARLIEST)), "a date on or after 1900-01-01"
    if t == "timestamp":
        v = _timestamp(raw, tz)
        return v, v.isNull() | (v < F.lit(dt.datetime(1900, 1, 1))), "a timestamp on or after 1900"
    if t == "email":
        v = F.lower(raw)
        return v, ~v.rlike(_EMAIL), "an email address"
    if t == "phone":
        v = _phone_e164(raw)
        return v, v.isNull(), "a phone number (E.164 or 10-digit North American)"
    if t == "name":
        v = _name(raw)
        return v, ~v.rlike(r"[A-Za-zÀ-ÿ]"), "a name"
    if t == "street":
        return _street(raw), F.lit(False), ""
    if t == "city":
        return _name(raw), F.lit(False), ""
    if t == "state":
        v = F.upper(raw)
        return v, ~v.rlike(r"^[A-Z]{2}$"), "a 2-letter state or province code"
    if t == "postal_code":
        v = _postal_code(raw)
        return v, v.isNull(), "a US ZIP or Canadian postal code"
    if t == "country":
        v = F.upper(raw)
        return v, ~v.rlike(r"^[A-Z]{2}$"), "a 2-letter country code"
    if t == "currency":
        v = F.upper(raw)
        return v, ~v.isin(*fx), f"a currency among {', '.join(sorted(fx))}"
    if t == "enum":
        v = F.lower(raw)
        return v, ~v.isin(*col.values), f"one of {', '.join(col.values)}"
    raise ValueError(f"column {col.name}: no parser for type {t!r}")


def standardize(bronze: DataFrame, source: Source, fx: dict[str, float], now: dt.datetime) -> DataFrame:
    """Typed, standardized columns plus `_reasons`: why a row cannot be promoted (empty when it can)."""
    typed: dict[str, SparkColumn] = {}
    checks: list[SparkColumn] = []
    future = F.lit(now + dt.timedelta(days=1))
    for col in source.columns:
        raw = _blank_to_null(F.col(col.name))
        value, invalid, expected = parse_column(col, raw, source.timezone, fx)
        typed[col.name] = value
        checks.append(F.when(raw.isNotNull() & invalid, F.lit(f"{col.name}: expected {expected}")))
        if col.required:
            checks.append(F.when(raw.isNull(), F.lit(f"{col.name}: required value missing")))
        if col.min is not None:
            checks.append(F.when(value < F.lit(col.min), F.lit(f"{col.name}: below the minimum {col.min:g}")))
        if col.max is not None:
            checks.append(F.when(value > F.lit(col.max), F.lit(f"{col.name}: above the maximum {col.max:g}")))
        if col.name in (source.event_time, source.cursor) or (col.type == "timestamp" and not col.future):
            # when something happened cannot be after its batch (a promotion's end date, say, can be)
            limit = future if col.type == "timestamp" else F.lit(now.date() + dt.timedelta(days=1))
            checks.append(F.when(value > limit, F.lit(f"{col.name}: in the future")))
    # An unreadable record has one reason; its (empty) fields say nothing more.
    reasons = F.when(
        F.col("_parse_error").isNotNull(),
        F.array(F.concat(F.lit("unreadable record: "), F.col("_parse_error"))),
    ).otherwise(F.filter(F.array(*checks), lambda x: x.isNotNull()))
    out = bronze.select(
        *LINEAGE,
        "_raw",
        *[v.alias(k) for k, v in typed.items()],
        reasons.alias(REASONS),
        F.col("_extra").isNotNull().alias("_drift"),
    )
    for col in source.columns:
        if col.type == "money" and col.currency:
            rate = F.element_at(
                F.create_map(*[F.lit(x) for kv in fx.items() for x in kv]), F.col(col.currency)
            )
            out = out.withColumn(f"{col.name}_usd", F.round(F.col(col.name) * rate, 2).cast("decimal(18,2)"))
    if source.kind == "event":
        out = out.withColumn("event_date", F.to_date(F.col(source.event_time)))
    return out


def split_rejects(typed: DataFrame, source: Source) -> tuple[DataFrame, DataFrame]:
    """(promotable rows, quarantine rows with their reasons)."""
    good = typed.filter(F.size(REASONS) == 0).drop(REASONS, "_drift")
    bad = typed.filter(F.size(REASONS) > 0)
    return good, quarantine_rows(bad, source, F.array_join(REASONS, "; "), "validate")


def quarantine_rows(rows: DataFrame, source: Source, reason: SparkColumn, stage: str) -> DataFrame:
    return rows.select(
        F.lit(source.name).alias("source"),
        F.col("_batch_id").alias("batch_id"),
        F.col("_batch_date").alias("batch_date"),
        F.col("_file").alias("file"),
        F.col("_record").cast("long").alias("record"),
        F.col("_raw").alias("raw"),
        reason.alias("reason"),
        F.lit(stage).alias("stage"),
    )


def deduplicate(good: DataFrame, source: Source) -> tuple[DataFrame, DataFrame]:
    """One row per primary key (the newest by cursor, then the latest in the files); duplicates
    quarantined."""
    keys = list(source.primary_key)
    order = [F.col(source.cursor).desc_nulls_last()] if source.cursor else []
    order += [F.col("_file").desc(), F.col("_record").desc()]
    w = Window.partitionBy(*keys).orderBy(*order)
    ranked = good.withColumn("_rank", F.row_number().over(w)).withColumn(
        "_kept", F.first(F.concat_ws(":", F.col("_file"), F.col("_record"))).over(w)
    )
    kept = ranked.filter(F.col("_rank") == 1).drop("_rank", "_kept")
    dupes = ranked.filter(F.col("_rank") > 1)
    reason = F.concat(F.lit(f"duplicate {'/'.join(keys)}: the row kept is "), F.col("_kept"))
    return kept, quarantine_rows(dupes, source, reason, "duplicate")


def hmac_sha256(value: SparkColumn, key: bytes) -> SparkColumn:
    """HMAC-SHA256 of a string column as hex (RFC 2104), from Spark built-ins: no Python UDF."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    ipad = bytes(b ^ 0x36 for b in key)
    opad = bytes(b ^ 0x5C for b in key)
    inner = F.unhex(F.sha2(F.concat(F.lit(ipad), value.cast("binary")), 256))
    return F.when(value.isNotNull(), F.sha2(F.concat(F.lit(opad), inner), 256))


def pseudonymize(rows: DataFrame, source: Source, key: bytes) -> tuple[DataFrame, DataFrame | None]:
    """(silver rows with each PII column replaced by `<col>_hmac`, restricted rows: keys plus raw PII)."""
    pii = source.pii_columns
    if not pii:
        return rows, None
    keys = list(source.primary_key) + (["event_date"] if source.kind == "event" else [])
    restricted = rows.select(*keys, *pii, "_batch_id")
    silver = rows
    for name in pii:
        silver = silver.withColumn(f"{name}_hmac", hmac_sha256(F.col(name).cast("string"), key)).drop(name)
    return silver, restricted


def silver_columns(rows: DataFrame) -> DataFrame:
    """The silver contract: the source's columns and lineage, without the raw record."""
    return (
        rows.drop("_raw")
        .withColumnRenamed("_file", "_source_file")
        .withColumnRenamed("_record", "_source_record")
    )
