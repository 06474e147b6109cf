"""The source catalog: enough sources, every format, and errors that name the source and the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from p13n.config import ConfigError
from p13n.sources.catalog import FORMATS, Column, load_catalog
from p13n.sources.expectations import EXPECTATIONS_DIR, catalog_expectations, load_suite


@pytest.fixture(scope="module")
def cat():
    return load_catalog()


def test_catalog_declares_the_retailers_sources(cat):
    assert len(cat.sources) >= 25
    assert {s.format for s in cat} == set(FORMATS)
    for name in (
        "shopify_orders",
        "square_transactions",
        "legacy_pos_sales",
        "web_clickstream",
        "app_events",
        "crm_contacts",
        "klaviyo_events",
        "mailchimp_activity",
        "loyalty_members",
        "returns",
        "inventory_snapshots",
        "consent_preferences",
        "product_reviews",
        "demographics_3p",
    ):
        assert name in cat.sources
    for s in cat:
        assert s.owner and s.freshness_hours > 0 and s.primary_key and s.description


def test_column_spec_parsing():
    c = Column.parse("zip", "postal_code pii from=billing.zip")
    assert (c.type, c.pii, c.source, c.required) == ("postal_code", True, "billing.zip", False)
    e = Column.parse("status", "enum(paid|refunded) required")
    assert (e.type, e.values, e.required) == ("enum", ("paid", "refunded"), True)
    w = Column.parse("qty", "int min=1 max=9 width=64:69")
    assert (w.min, w.max, w.width) == (1.0, 9.0, (64, 69))
    with pytest.raises(ValueError, match="column 'x': unknown type 'integer'"):
        Column.parse("x", "integer")


def test_catalog_errors_name_source_and_field(tmp_path):
    bad = tmp_path / "sources.yaml"
    bad.write_text(
        "sources:\n  orders:\n    system: s\n    description: d\n    format: csv\n    location: x\n    kind: "
        "event\n    primary_key: [id]\n    owner: o\n    freshness_hours: 1\n    columns: {id: string}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_catalog(bad)
    assert str(err.value) == f"{bad}: source 'orders': an event source needs event_time"


def test_sources_list_prints_name_then_format(cat):
    out = subprocess.run(
        [str(Path(sys.executable).parent / "p13n"), "sources", "list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert len(out) == len(cat.sources)
    first = out[0].split("\t")
    assert first[:2] == ["shopify_customers", "api_json"]
    assert {line.split("\t")[1] for line in out} == set(FORMATS)


def test_every_suite_in_expectations_holds_what_the_catalog_implies(cat):
    """expectations/ must not drift from the catalog: its generated expectations are all there."""
    for s in cat:
        suite = load_suite(s, EXPECTATIONS_DIR)
        assert suite["name"] == s.silver_table
        present = [(e["type"], e["kwargs"], e["meta"]["severity"]) for e in suite["expectations"]]
        for e in catalog_expectations(s):
            assert (e["type"], e["kwargs"], e["meta"]["severity"]) in present, (
                f"{s.name}: {e} missing; run p13n expectations generate"
            )
