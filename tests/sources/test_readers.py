"""Format readers: exact records, line numbers and raw text, and one record per malformed input."""

from __future__ import annotations

import json

import pytest

from p13n.sources.catalog import load_catalog
from p13n.sources.readers import read_records, read_text, records_at_most


@pytest.fixture(scope="module")
def cat():
    return load_catalog()


def fields(record, *names):
    return tuple(record[n] for n in names)


def test_csv_maps_renamed_columns_keeps_line_numbers_and_flags_wrong_field_counts(cat):
    src = cat["crm_accounts"]
    text = (
        "Id,Name,Tier__c,LastModifiedDate\n"
        '001A,"Smith, household",gold,2024-03-01T10:00:00.000Z\n'
        "broken,row\n001B,,silver,2024-03-01T11:00:00.000Z\n"
    )
    recs = read_text(text, src)
    assert [r["_record"] for r in recs] == [2, 3, 4]
    assert fields(recs[0], "account_id", "name", "tier", "_parse_error") == (
        "001A",
        "Smith, household",
        "gold",
        None,
    )
    assert recs[0]["_raw"] == '001A,"Smith, household",gold,2024-03-01T10:00:00.000Z'
    assert fields(recs[1], "_raw", "_parse_error") == ("broken,row", "expected 4 fields, got 2")
    assert recs[2]["name"] is None  # an empty CSV field is a missing value


def test_csv_columns_the_catalog_does_not_declare_are_kept_as_drift(cat):
    recs = read_text(
        "Id,Name,Tier__c,LastModifiedDate,Region__c\n001A,x,gold,2024-03-01,EMEA\n", cat["crm_accounts"]
    )
    assert json.loads(recs[0]["_extra"]) == {"Region__c": "EMEA"}


def test_jsonl_nested_paths_and_invalid_lines(cat):
    src = cat["klaviyo_events"]
    text = (
        '{"id": "k1", "profile": {"email": "A@x.io"}, "metric": "opened", '
        '"datetime": "2024-03-01T10:00:00Z", "extra": 1}\n'
        '{"id": "k2", \n'
        '["not", "an", "object"]\n'
    )
    recs = read_text(text, src)
    assert fields(recs[0], "event_id", "email", "metric", "_record") == ("k1", "A@x.io", "opened", 1)
    assert json.loads(recs[0]["_extra"]) == {"extra": 1}
    assert recs[1]["_parse_error"].startswith("invalid JSON") and recs[1]["_record"] == 2
    assert recs[2]["_parse_error"] == "expected a JSON object, got list"


def test_fixed_width_slices_and_short_lines(cat):
    src = cat["legacy_pos_sales"]
    values = ["R00000000001", "001", "ST041", "20240301101500", "L000000007", "SKU-000010", "2", "12.50"]
    line = "".join(v.ljust(c.width[1] - c.width[0]) for v, c in zip(values, src.columns, strict=True))
    recs = read_text(line + "\nTRUNCATED\n", src)
    assert fields(
        recs[0], "receipt_no", "line_no", "store_id", "sold_at", "loyalty_id", "sku", "quantity", "amount"
    ) == ("R00000000001", "001", "ST041", "20240301101500", "L000000007", "SKU-000010", "2", "12.50")
    assert recs[1]["_parse_error"] == "line is 9 characters, the layout needs 79"


def test_xml_records_then_a_broken_tail_kept_whole(cat, tmp_path):
    src = cat["returns"]
    path = tmp_path / "returns.xml"
    path.write_text(
        "<returns>\n<return><id>RT1</id><orderRef>SO1</orderRef><sku>S</sku><quantity>1</quantity></return>\n"
        "<return><id>RT2</id><sku>S</sku>\n<oops></returns>\n"
    )
    recs = list(read_records(str(path), src))
    assert fields(recs[0], "return_id", "order_ref", "quantity", "_record") == ("RT1", "SO1", "1", 1)
    assert recs[1]["_parse_error"].startswith("malformed XML at line 4")
    assert "<oops></returns>" in recs[1]["_raw"]


def test_api_pages_and_unreadable_pages(cat, tmp_path):
    src = cat["consent_preferences"]
    good = tmp_path / "page-0001.json"
    good.write_text(
        json.dumps(
            {
                "items": [
                    {
                        "id": "c1",
                        "identifier": {"email": "a@b.co"},
                        "channel": "email",
                        "status": "granted",
                        "jurisdiction": "gdpr",
                        "recorded_at": "2024-03-01",
                    }
                ],
                "next_page": None,
            }
        )
    )
    recs = list(read_records(str(good), src, display_name="p1"))
    assert fields(recs[0], "consent_event_id", "email", "channel", "_file", "_record") == (
        "c1",
        "a@b.co",
        "email",
        "p1",
        1,
    )
    bad = tmp_path / "page-0002.json"
    bad.write_text('{"items": [')
    assert list(read_records(str(bad), src))[0]["_parse_error"].startswith("unreadable API page")


def test_the_record_bound_of_a_landing_file_is_never_below_its_records(cat, tmp_path):
    """`records_at_most` picks a small batch's bronze write path (Arrow in the client): it must bound
    every format's files from above, odd ones included."""
    import datetime as dt

    from p13n.generate.retail import generate

    generate(cat, tmp_path, customers=60, days=1, seed=3, start=dt.date(2024, 3, 1), bad_rate=0.05)
    checked = set()
    for source in cat:
        if source.format in ("kafka", "snowflake"):
            continue
        folder = tmp_path / "landing" / source.location
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            records = sum(1 for _ in read_records(str(path), source))
            assert records <= records_at_most(str(path), source.format), path
            checked.add(source.format)
    assert checked == {"csv", "jsonl", "api_json", "parquet", "fixed_width", "xml"}
    odd = tmp_path / "odd"
    odd.write_bytes(b"\x00\xff{<\n" * 3)
    for fmt in ("csv", "jsonl", "api_json", "fixed_width", "xml"):
        source = next(s for s in cat if s.format == fmt)
        assert sum(1 for _ in read_records(str(odd), source)) <= records_at_most(str(odd), fmt), fmt
    (tmp_path / "empty").write_bytes(b"")
    assert records_at_most(str(tmp_path / "empty"), "csv") == 1
