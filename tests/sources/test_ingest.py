"""Ingestion on generated data through real Spark, Delta, Kafka (embedded broker) and Snowflake (fakesnow).

The generator plants bad records of every kind and records where: each must land in quarantine with
its reason, the good rows in silver, and a rerun of the batch must leave every table as it was.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import shutil
from collections import Counter

import pytest

from p13n.generate.retail import generate
from p13n.lake import Lake
from p13n.services.kafka import EmbeddedBroker
from p13n.sources.catalog import load_catalog
from p13n.sources.expectations import EXPECTATIONS_DIR, Validator
from p13n.sources.ingest import IngestError, ingest_batch
from p13n.sources.simulate import load_warehouse, replay_topics

# Every source of a generated day through ingestion: end-to-end, out of the fast tier.
pytestmark = [pytest.mark.spark, pytest.mark.e2e]
DAY = dt.date(2024, 3, 1)
KEY = b"test-pii-key"
REASON_OF_KIND = {
    "malformed": "unreadable record",
    "wrong_type": "expected",
    "impossible": ("below the minimum", "in the future"),
    "missing_required": "required value missing",
    "duplicate": "duplicate",
}


@pytest.fixture(scope="module")
def world(spark, settings, tmp_path_factory):
    """A generated retailer (750 customers, 1 day, 3% bad records), a broker, a warehouse and a lake."""
    root = tmp_path_factory.mktemp("ingest")
    s = settings.model_copy(update={"data_dir": root})
    catalog = load_catalog()
    generate(catalog, root, customers=750, days=1, seed=11, start=DAY, bad_rate=0.03)
    load_warehouse(s, catalog)
    broker = EmbeddedBroker().start()
    s = s.model_copy(update={"sources": s.sources.model_copy(update={"kafka_bootstrap": broker.bootstrap})})
    replay_topics(s, catalog, broker.bootstrap)
    lake = Lake(spark, s.lake, str(root / "lake"))
    with open(root / "truth" / "bad_records.csv") as handle:
        bad = list(csv.DictReader(handle))
    results = {src.name: ingest_batch(lake, s, catalog, src, DAY, KEY) for src in catalog}
    yield {"settings": s, "catalog": catalog, "lake": lake, "bad": bad, "results": results, "root": root}
    broker.stop()


def test_every_source_lands_in_bronze_and_silver(world):
    results = world["results"]
    assert len(results) == len(world["catalog"].sources)
    for name, r in results.items():
        assert r.bronze_rows > 0, f"{name}: nothing read"
        assert r.silver_rows > 0, f"{name}: nothing promoted"
        assert r.bronze_rows == r.silver_rows + r.quarantined
        assert world["lake"].read(f"silver.{name}").count() == r.silver_rows


def test_each_source_quarantines_exactly_its_planted_bad_records(world):
    planted = Counter(b["source"] for b in world["bad"])
    quarantined = {name: r.quarantined for name, r in world["results"].items()}
    assert sum(planted.values()) > 60  # every kind, across the sources
    assert {k for b in world["bad"] for k in [b["kind"]]} == set(REASON_OF_KIND)
    assert quarantined == {name: planted.get(name, 0) for name in quarantined}


def test_planted_records_sit_in_quarantine_at_their_file_and_line_with_their_reason(world):
    lake, catalog = world["lake"], world["catalog"]
    file_sources = {s.name for s in catalog if s.format not in ("kafka", "snowflake")}
    rows = {}
    for name in file_sources:
        for q in lake.read(f"quarantine.{name}").collect():
            rows[(name, q.file, q.record)] = q
    checked = 0
    for b in world["bad"]:
        if b["source"] not in file_sources:
            continue
        key = (b["source"], b["file"], int(b["record"]))
        expected = REASON_OF_KIND[b["kind"]]
        if b["kind"] == "duplicate":
            # A planted copy comes later in the file, so it is kept and an earlier copy is quarantined
            # in its name, unless a later copy of the same record was planted too.
            kept_for = [q for q in rows.values() if q.reason.endswith(f"{b['file']}:{b['record']}")]
            quarantined_itself = key in rows and rows[key].reason.startswith("duplicate")
            assert quarantined_itself or (
                len(kept_for) >= 1 and kept_for[0].reason.startswith("duplicate")
            ), b
        else:
            assert key in rows, f"planted {b} not in quarantine"
            assert rows[key].reason.startswith(expected) or any(
                e in rows[key].reason for e in ([expected] if isinstance(expected, str) else expected)
            ), (b, rows[key].reason)
            assert rows[key].raw  # the raw record is kept
        checked += 1
    assert checked > 40


def test_silver_holds_no_raw_pii_and_restricted_holds_it_standardized(world):
    lake = world["lake"]
    silver = lake.read("silver.shopify_customers")
    assert {"email", "phone", "first_name"}.isdisjoint(silver.columns)
    assert {"email_hmac", "phone_hmac", "first_name_hmac"} <= set(silver.columns)
    restricted = lake.read("restricted.shopify_customers").collect()
    emails = [r.email for r in restricted if r.email]
    assert emails and all(e == e.strip().lower() for e in emails)
    phones = [r.phone for r in restricted if r.phone]
    assert phones and all(p.startswith("+1") and len(p) == 12 for p in phones)


def test_schema_drift_is_recorded_not_lost(world):
    drift = world["lake"].read("bronze.square_transactions").filter("_extra is not null").count()
    # one day only: the drift starts half way through the period (day 0 of 1), so every row carries it
    assert drift == world["results"]["square_transactions"].bronze_rows


def _snapshot(lake, tables):
    out = {}
    for t in tables:
        df = lake.read(t)
        cols = sorted(c for c in df.columns if c != "_ingested_at")  # wall-clock time of the (re)ingestion
        out[t] = sorted(json.dumps([r[c] for c in cols], default=str) for r in df.select(*cols).collect())
    return out


def test_rerunning_the_batch_leaves_every_table_unchanged(world, monkeypatch):
    """...and the rerun parses the files in this process, as a Spark Connect client does
    (`sources.parse_here_max_bytes`), where the first run (a classic session) parsed them on Spark's
    executors: both paths give the same tables."""
    import p13n.sources.ingest as ingest

    lake, catalog, s = world["lake"], world["catalog"], world["settings"]
    assert not ingest.is_connect(lake.spark) and s.sources.parse_here_max_bytes > 0
    monkeypatch.setattr(ingest, "is_connect", lambda _spark: True)
    tables = [t for t in lake.tables() if t.split(".")[0] in ("bronze", "silver", "quarantine", "restricted")]
    before = _snapshot(lake, tables)
    # One source of each format and kind (the code paths a rerun can take), the one with the most
    # PII columns (so restricted is rerun too): 11 of the 32, every table still compared.
    picked: dict = {}
    for src in catalog:
        key = (src.format, src.kind)
        if key not in picked or len(src.pii_columns) > len(picked[key].pii_columns):
            picked[key] = src
    assert len(picked) >= 10
    for src in picked.values():
        ingest_batch(lake, s, catalog, src, DAY, KEY)
    assert _snapshot(lake, tables) == before


def test_a_kafka_batch_consumed_here_or_on_the_executors_gives_the_same_records(world, spark):
    from p13n.services.kafka import end_offsets
    from p13n.sources.systems import kafka_batch

    s, catalog = world["settings"], world["catalog"]
    source = next(src for src in catalog if src.format == "kafka")
    ends = end_offsets(s.sources.kafka_bootstrap, source.location)
    starts = {p: e // 3 for p, e in ends.items()}  # a range that does not start at 0

    def records(here):
        df = kafka_batch(spark, source, s.sources.kafka_bootstrap, starts, ends, here=here)
        return sorted(json.dumps(r.asDict(), sort_keys=True) for r in df.collect())

    here = records(True)
    assert len(here) == sum(e - starts[p] for p, e in ends.items()) > 0
    assert here == records(False)


def test_a_failing_critical_expectation_blocks_promotion(world, tmp_path):
    lake, catalog, s = world["lake"], world["catalog"], world["settings"]
    suites = tmp_path / "expectations"
    shutil.copytree(EXPECTATIONS_DIR, suites)
    path = suites / "silver.shopify_orders.json"
    suite = json.loads(path.read_text())
    suite["expectations"].append(
        {
            "type": "expect_column_values_to_be_between",
            "meta": {"severity": "critical"},
            "kwargs": {"column": "total", "min_value": 0, "max_value": 1},
        }
    )
    path.write_text(json.dumps(suite))
    before = lake.delta_table("silver.shopify_orders").version()
    with pytest.raises(
        IngestError,
        match=r"shopify_orders batch 2024-03-01: not promoted to silver.shopify_orders: "
        r"expect_column_values_to_be_between\(column=total\): \d+ unexpected",
    ):
        ingest_batch(lake, s, catalog, catalog["shopify_orders"], DAY, KEY, validate=Validator(s, suites))
    assert lake.delta_table("silver.shopify_orders").version() == before
    # the shipped suites pass on the same batch, with their warnings recorded
    ok = ingest_batch(lake, s, catalog, catalog["shopify_orders"], DAY, KEY, validate=Validator(s))
    assert ok.expectations_failed == 0 and ok.expectations_passed >= 6


def test_the_pandas_and_spark_engines_of_gx_give_the_same_outcome(world, tmp_path):
    """Small batches are validated with GX's pandas engine, large ones on Spark: same suite, same verdict."""
    from p13n.config import QualitySettings

    lake, s = world["lake"], world["settings"]
    suites = tmp_path / "expectations"
    shutil.copytree(EXPECTATIONS_DIR, suites)
    path = suites / "silver.shopify_orders.json"
    suite = json.loads(path.read_text())
    suite["expectations"] += [
        {
            "type": "expect_column_values_to_be_between",
            "meta": {"severity": "critical"},
            "kwargs": {"column": "total", "min_value": 0, "max_value": 100},
        },
        {
            "type": "expect_column_values_to_be_in_set",
            "meta": {"severity": "warning"},
            "kwargs": {"column": "currency", "value_set": ["USD"]},
        },
        {
            "type": "expect_column_values_to_match_regex",
            "meta": {"severity": "warning"},
            "kwargs": {"column": "order_id", "regex": "^[0-9]+$"},
        },
    ]
    path.write_text(json.dumps(suite))
    rows = lake.read("silver.shopify_orders")
    n = rows.count()
    outcomes = {}
    for limit in (0, n):
        check = Validator(s.model_copy(update={"quality": QualitySettings(pandas_max_rows=limit)}), suites)
        outcome = check(catalog_source(world, "shopify_orders"), rows)
        outcomes[check.last_engine] = outcome
    assert set(outcomes) == {"spark", "pandas"}
    spark, pandas = outcomes["spark"], outcomes["pandas"]
    assert (pandas.passed, pandas.failed) == (spark.passed, spark.failed)
    assert pandas.critical_failures == spark.critical_failures
    assert pandas.warnings == spark.warnings
    assert len(spark.critical_failures) == 1 and spark.failed >= 2  # the added checks do fail


def catalog_source(world, name):
    return world["catalog"][name]


def test_a_date_with_nothing_landed_touches_neither_spark_nor_great_expectations(settings, tmp_path):
    """A task with nothing to do must cost little under the scheduler: no Spark session, no GX context."""

    def no_spark():
        raise AssertionError("a Spark session was made for an empty batch")

    def no_validation(*_args, **_kwargs):
        raise AssertionError("an empty batch was validated")

    s = settings.model_copy(update={"data_dir": tmp_path})
    catalog = load_catalog()
    lake = Lake(no_spark, s.lake, str(tmp_path / "lake"))
    result = ingest_batch(
        lake, s, catalog, catalog["stores"], dt.date(2024, 3, 9), b"k", validate=no_validation
    )
    assert (result.source, result.status, result.files, result.bronze_rows) == ("stores", "no data", 0, 0)
