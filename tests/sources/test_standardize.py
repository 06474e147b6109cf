"""Bronze → silver transforms on a handful of inline rows, with exact expected values."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from decimal import Decimal

import pytest
from pyspark.sql import functions as F

from p13n.sources import standardize as std
from p13n.sources.catalog import Source

pytestmark = pytest.mark.spark
UTC = dt.UTC
NOW = dt.datetime(2024, 3, 2)
FX = {"USD": 1.0, "CAD": 0.73}
SRC = Source(
    name="pos",
    system="test",
    description="test source",
    format="csv",
    location="pos",
    kind="entity",
    primary_key=["id"],
    cursor="updated_at",
    owner="t",
    freshness_hours=24,
    timezone="America/New_York",
    columns={
        "id": "string required",
        "email": "email pii",
        "phone": "phone pii",
        "name": "name pii",
        "street": "street pii",
        "zip": "postal_code",
        "status": "enum(paid|refunded)",
        "qty": "int min=1",
        "currency": "currency",
        "total": "money currency=currency",
        "updated_at": "timestamp required",
    },
)
COLS = [c.name for c in SRC.columns]


def bronze(spark, rows):
    """Rows of raw strings (keyed by column) plus lineage, shaped like a bronze table."""
    data = [
        (
            *[r.get(c) for c in COLS],
            "f.csv",
            i + 2,
            f"raw{i}",
            None,
            r.get("_parse_error"),
            dt.date(2024, 3, 1),
            "pos:2024-03-01",
        )
        for i, r in enumerate(rows)
    ]
    schema = ", ".join(f"{c} string" for c in COLS) + (
        ", _file string, _record long, _raw string, _extra string, "
        "_parse_error string, _batch_date date, _batch_id string"
    )
    return spark.createDataFrame(data, schema)


GOOD = {
    "id": "1",
    "email": " John.Doe@Gmail.COM ",
    "phone": "(415) 555-0132",
    "name": "  mARY   ann ",
    "street": "12 north oak street.",
    "zip": "02139-1234",
    "status": "PAID",
    "qty": "2",
    "currency": "cad",
    "total": "$1,234.50",
    "updated_at": "2024-03-01 10:00:00",
}


def test_standardizes_every_semantic_type(spark):
    rows = [
        GOOD,
        {
            **GOOD,
            "id": "2",
            "phone": "+44 20 7946 0958",
            "zip": "k1a0b1",
            "updated_at": "2024-03-01T10:00:00-05:00",
        },
        {**GOOD, "id": "3", "phone": "1-415-555-0132", "updated_at": "1709305200000"},
        {**GOOD, "id": "4", "updated_at": "20240301100000", "currency": "USD", "total": "7"},
    ]
    out = {r.id: r for r in std.standardize(bronze(spark, rows), SRC, FX, NOW).collect()}
    one = out["1"]
    assert (one.email, one.phone, one.name, one.street, one.zip, one.status, one.qty) == (
        "john.doe@gmail.com",
        "+14155550132",
        "Mary Ann",
        "12 N Oak St",
        "02139",
        "paid",
        2,
    )
    assert (one.currency, one.total, one.total_usd) == ("CAD", Decimal("1234.50"), Decimal("901.19"))
    # naive local time (America/New_York, EST) -> UTC; an explicit offset is honoured; epoch millis; compact
    assert {k: out[k].updated_at for k in out} == {
        k: dt.datetime(2024, 3, 1, 15, 0) for k in ("1", "2", "3", "4")
    }
    assert (out["2"].phone, out["2"].zip, out["3"].phone) == ("+442079460958", "K1A 0B1", "+14155550132")
    assert all(r[std.REASONS] == [] for r in out.values())


def test_rejects_carry_every_reason(spark):
    rows = [
        {
            **GOOD,
            "id": None,
            "email": "not-an-email",
            "phone": "12345",
            "status": "lost",
            "qty": "0",
            "total": "lots",
            "currency": "XYZ",
            "updated_at": "2099-01-01T00:00:00Z",
        },
        {"_parse_error": "expected 11 fields, got 2"},
    ]
    good, quarantine = std.split_rejects(std.standardize(bronze(spark, rows), SRC, FX, NOW), SRC)
    assert good.count() == 0
    reasons = {r.record: r.reason for r in quarantine.collect()}
    assert reasons[2].split("; ") == [
        "id: required value missing",
        "email: expected an email address",
        "phone: expected a phone number (E.164 or 10-digit North American)",
        "status: expected one of paid, refunded",
        "qty: below the minimum 1",
        "currency: expected a currency among CAD, USD",
        "total: expected an amount of money",
        "updated_at: in the future",
    ]
    assert reasons[3] == "unreadable record: expected 11 fields, got 2"
    row = quarantine.filter("record = 2").first()
    assert (row.source, row.file, row.raw, row.batch_id, row.stage) == (
        "pos",
        "f.csv",
        "raw0",
        "pos:2024-03-01",
        "validate",
    )


def test_deduplicate_keeps_the_newest_and_quarantines_the_rest(spark):
    rows = [
        {**GOOD, "updated_at": "2024-03-01 09:00:00", "qty": "1"},
        {**GOOD, "qty": "5"},
        {**GOOD, "id": "9"},
    ]
    good, _ = std.split_rejects(std.standardize(bronze(spark, rows), SRC, FX, NOW), SRC)
    kept, dupes = std.deduplicate(good, SRC)
    assert sorted((r.id, r.qty) for r in kept.collect()) == [("1", 5), ("9", 2)]
    dup = dupes.collect()
    assert [(d.record, d.reason, d.stage) for d in dup] == [
        (2, "duplicate id: the row kept is f.csv:3", "duplicate")
    ]


def test_hmac_matches_rfc_2104(spark):
    key = b"k" * 70  # longer than a SHA-256 block: hashed first, as the RFC says
    df = spark.createDataFrame([("alice@example.com",), (None,)], "v string")
    got = [r.h for r in df.select(std.hmac_sha256(F.col("v"), key).alias("h")).collect()]
    assert got == [hmac.new(key, b"alice@example.com", hashlib.sha256).hexdigest(), None]


def test_pseudonymize_moves_raw_pii_to_the_restricted_rows(spark):
    good, _ = std.split_rejects(std.standardize(bronze(spark, [GOOD]), SRC, FX, NOW), SRC)
    silver, restricted = std.pseudonymize(good, SRC, b"secret")
    assert {"email", "phone", "name", "street"}.isdisjoint(silver.columns)
    assert silver.first().email_hmac == hmac.new(b"secret", b"john.doe@gmail.com", hashlib.sha256).hexdigest()
    assert restricted.columns == ["id", "email", "phone", "name", "street", "_batch_id"]
    assert restricted.first().email == "john.doe@gmail.com"


def test_freshness_warning_names_the_lag_and_the_promise():
    from p13n.sources.ingest import _freshness_warning

    day = dt.date(2024, 3, 1)
    assert _freshness_warning(SRC, "updated_at", dt.datetime(2024, 3, 1, 23), day) is None
    assert _freshness_warning(SRC, "updated_at", dt.datetime(2024, 2, 27, 0), day) == (
        "stale: the newest updated_at is 96h before the batch end (freshness promise 24h)"
    )
