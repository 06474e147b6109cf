"""Erasure and access on a small synthetic lake with a real Redis publish, the fake email platforms
and fakesnow; the full run's erasure is in `test_customers_dag`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from deltalake import DeltaTable
from fakes.marketing import FakeMailchimp, serve

from p13n.bench.serving import AS_OF, write_gold
from p13n.config import load_settings
from p13n.lake.duck import duckdb_connection, scan, table_uri

WHO = "C000000001"
EMAIL = "person1@example.com"


@pytest.fixture
def world(tmp_path, redis_url):
    """A lake, its version published to Redis, an audience exported to the fake Mailchimp, the gold
    tables in fakesnow."""
    from p13n.activation.snowflake import sync_tables
    from p13n.activation.sync import sync
    from p13n.serving.publish import publish

    write_gold(str(tmp_path / "lake"), 40, 30)
    fake = FakeMailchimp("key-us1")
    with serve(fake) as url:
        settings = load_settings(
            "test",
            environ={
                "P13N_DATA_DIR": str(tmp_path),
                "P13N_PII_KEY": "k",
                "P13N__ACTIVATION__MAILCHIMP__HOST": url,
                "P13N__ACTIVATION__MAILCHIMP__SERVER": "us1",
            },
        )
        os.environ["MAILCHIMP_API_KEY"], os.environ["P13N_PII_KEY"] = "key-us1", "k"
        try:
            publish(settings, redis_url, AS_OF)
            sync(settings, "vip_win_back", "mailchimp", AS_OF, progress=lambda _: None)
            sync_tables(settings, AS_OF, progress=lambda _: None)
            yield settings, fake
        finally:
            os.environ.pop("MAILCHIMP_API_KEY", None)
            os.environ.pop("P13N_PII_KEY", None)


def test_forget_removes_the_person_everywhere_and_records_an_audit_without_pii(world, redis_url):
    import redis

    from p13n.privacy.access import export_person
    from p13n.privacy.erasure import forget
    from p13n.sources.systems import snowflake_connection

    settings, fake = world
    root = settings.lake_root
    assert EMAIL in fake.segment_emails("main", "vip-win-back")  # C000000001: at risk, top CLV
    path, found = export_person(settings, "access-1", email=EMAIL, redis_url=redis_url)
    held = json.loads(path.read_text())
    assert found["gold.segments"] == 1 and found["restricted.customer_profiles"] == 1
    assert held["serving"]["lists_and_profile"]["personalized"]
    assert oct(path.stat().st_mode & 0o777) == "0o600"

    copy = settings.data_dir / "cache" / "recommend" / "2024-03-02-0123abcd"  # a run's recommender inputs
    copy.mkdir(parents=True)
    (copy / "events.parquet").write_bytes(b"PAR1")
    before = DeltaTable(table_uri(root, "gold.recommendations")).version()
    audit = forget(settings, "req-1", email=EMAIL, redis_url=redis_url, progress=lambda _: None)
    assert audit["status"] == "completed"
    lake = json.loads(audit["lake"])
    assert lake["gold.recommendations"] == 40 and lake["gold.segments"] == 1 and lake["ops.export_state"] == 1
    assert EMAIL not in json.dumps(audit, default=str)
    con = duckdb_connection()
    for table in (
        "gold.recommendations",
        "gold.segments",
        "restricted.customer_profiles",
        "gold.identity_keys",
    ):
        assert (
            con.execute(f"SELECT count(*) FROM {scan(root, table)} WHERE customer_id = ?", [WHO]).fetchone()[
                0
            ]
            == 0
        )
    # The older versions are gone with their files: time travel starts at the erasure.
    with pytest.raises(Exception):  # noqa: B017, PT011
        DeltaTable(table_uri(root, "gold.recommendations"), version=before).to_pyarrow_table()
    assert not [
        p for p in (settings.data_dir / "lake").rglob("*") if p.is_file() and EMAIL.encode() in p.read_bytes()
    ]
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    live = r.get("p13n:live")
    assert not r.exists(f"p13n:v:{live}:c:{WHO}")
    assert not r.hget(f"p13n:v:{live}:x:shopify_customer_id", "700001")
    assert all(WHO not in r.lrange(k, 0, -1) for k in r.scan_iter(f"p13n:v:{live}:s:*"))
    assert fake.deleted == [EMAIL] and EMAIL not in fake.members["main"]
    with snowflake_connection(settings, "P13N", "GOLD") as sf:
        cur = sf.cursor()
        cur.execute("SELECT count(*) FROM P13N.GOLD.SEGMENTS WHERE CUSTOMER_ID = %s", (WHO,))
        assert cur.fetchone()[0] == 0
    registry = con.execute(f"SELECT customer_id, request_id FROM {scan(root, 'ops.erasures')}").fetchall()
    assert registry == [(WHO, "req-1")]
    assert not path.exists()  # the access file about them went too
    assert not copy.exists()  # and every working copy of a run's inputs


def test_requests_are_queued_served_and_keep_no_address_outside_restricted(world, monkeypatch):
    from p13n.privacy import erasure, tasks

    settings, _ = world
    root = settings.lake_root
    monkeypatch.setattr(tasks, "get_settings", lambda: settings)
    monkeypatch.setenv("P13N__SERVING__REDIS_URL", "")
    with pytest.raises(erasure.ErasureError, match="matches 0 customers"):  # refused when queued
        tasks.request("forget", email="nobody@nowhere.example")
    with pytest.raises(erasure.ErasureError, match="unknown customer id 'granted'"):
        tasks.request("forget", customer_id="granted")
    rid = tasks.request("access", email=EMAIL.upper())
    bad = tasks.request("forget", customer_id="C000000002")
    waiting = (
        duckdb_connection()
        .execute(f"SELECT request_id, email FROM {scan(root, 'restricted.privacy_requests')}")
        .fetchall()
    )
    assert waiting == [(rid, EMAIL)]
    monkeypatch.setattr(
        erasure, "erase_warehouse", lambda *_: (_ for _ in ()).throw(OSError("warehouse down"))
    )
    with pytest.raises(RuntimeError, match="1 of 2 privacy requests failed"):
        tasks.process_requests()
    rows = {
        r[0]: r[1:]
        for r in duckdb_connection()
        .execute(f"SELECT request_id, status, customer_id, detail FROM {scan(root, 'ops.privacy_requests')}")
        .fetchall()
    }
    assert rows[rid][:2] == ("done", WHO) and rows[rid][2].endswith(f"{rid}.json")
    assert rows[bad] == ("failed", "C000000002", "OSError: warehouse down")
    # The address is gone from restricted with its history; no ops file or log statistic ever held it.
    assert (
        not duckdb_connection()
        .execute(f"SELECT * FROM {scan(root, 'restricted.privacy_requests')}")
        .fetchall()
    )
    for folder in ("ops", "restricted/privacy_requests"):
        held = [
            p for p in (Path(root) / folder).rglob("*") if p.is_file() and EMAIL.encode() in p.read_bytes()
        ]
        assert not held, held
    # A failed erasure is not recorded as one: the customer is not in ops.erasures, and a retry (the
    # graph already partly gone) finds the identifiers it kept in restricted.privacy_pending.
    erased = (
        duckdb_connection().execute(f"SELECT customer_id FROM {scan(root, 'ops.erasures')}").fetchall()
        if (Path(root) / "ops/erasures").exists()
        else []
    )
    assert ("C000000002",) not in erased
    monkeypatch.undo()
    monkeypatch.setattr(tasks, "get_settings", lambda: settings)
    monkeypatch.setenv("P13N__SERVING__REDIS_URL", "")
    audit = erasure.forget(
        settings, "retry", customer_id="C000000002", platforms=False, progress=lambda _: None
    )
    assert audit["status"] == "completed" and json.loads(audit["lake"])["gold.recommendations"] == 40
    con = duckdb_connection()
    assert con.execute(f"SELECT customer_id FROM {scan(root, 'ops.erasures')}").fetchall() == [
        ("C000000002",)
    ]
    assert not con.execute(f"SELECT * FROM {scan(root, 'restricted.privacy_pending')}").fetchall()
    again = erasure.forget(
        settings, "again", customer_id="C000000002", platforms=False, progress=lambda _: None
    )
    assert again["status"] == "already erased"  # a rerun is a no-op, not an "unknown customer" error


def _versions(root: str) -> dict[str, int]:
    from p13n.privacy.erasure import lake_tables

    return {t: DeltaTable(table_uri(root, t)).version() for t in lake_tables(root)}


def test_an_erasure_that_names_no_customer_changes_nothing(world):
    """Values that fill whole columns (a consent, a list type, a segment), an id no one has, a blank."""
    from p13n.privacy.erasure import ErasureError, forget

    settings, _ = world
    before = _versions(settings.lake_root)
    for who in ("granted", "personalized", "Champions", "C999999999", "  ", "SKU-000001"):
        with pytest.raises(ErasureError, match="unknown customer id|name the person"):
            forget(settings, "r", customer_id=who, platforms=False, progress=lambda _: None)
    assert _versions(settings.lake_root) == before


@pytest.fixture
def raw_rows(world):
    """A bronze table whose rows name the person in other spellings, beside rows that only look alike:
    an address that contains theirs, a number that contains theirs."""
    import pandas as pd
    from deltalake import write_deltalake

    settings, _ = world
    rows = pd.DataFrame(
        {
            "transaction_id": ["T1", "T2", "T3", "T4", "T5"],
            "customer_email": [
                " Person1@Example.com ",
                "aperson1@example.com",
                None,
                None,
                "person10@example.com",
            ],
            "customer_phone": [None, None, "555.000.0001", None, "+15550000011"],
            "_raw": [
                "card,1.00, Person1@Example.com ,,",
                "card,2.00,aperson1@example.com,,",
                "cash,3.00,,555.000.0001,",
                "cash,4.00,,(555) 000-0001,",
                "card,5.00,,155500000011,",
            ],
        }
    )
    write_deltalake(table_uri(settings.lake_root, "bronze.square_transactions"), rows)
    return settings


def test_an_erasure_matches_parsed_values_in_any_spelling_and_only_the_persons(raw_rows):
    from p13n.privacy.erasure import forget, preview

    settings = raw_rows
    person, plans = preview(settings, customer_id=WHO)
    planned = {p.table: p.rows for p in plans}
    assert planned["bronze.square_transactions"] == 3 and planned["gold.recommendations"] == 40
    audit = forget(settings, "r", customer_id=WHO, platforms=False, progress=lambda _: None)
    assert json.loads(audit["lake"]) == planned  # the preview is what happened
    left = (
        duckdb_connection()
        .execute(
            f"SELECT transaction_id FROM {scan(settings.lake_root, 'bronze.square_transactions')} ORDER BY 1"
        )
        .fetchall()
    )
    assert left == [("T2",), ("T5",)]  # someone else's address and number, though they contain the person's
    others = (
        duckdb_connection()
        .execute(
            f"SELECT count(DISTINCT customer_id) FROM {scan(settings.lake_root, 'gold.recommendations')}"
        )
        .fetchone()[0]
    )
    assert others == 39


def test_an_erasure_above_the_row_limit_refuses_before_deleting(raw_rows):
    from p13n.privacy.erasure import ErasureError, forget

    settings = raw_rows.model_copy(
        update={"privacy": raw_rows.privacy.model_copy(update={"max_rows_per_request": 20})}
    )
    before = _versions(settings.lake_root)
    with pytest.raises(
        # 52: the rows of every table holding the customer, their ops.contact_ledger message included
        ErasureError,
        match=r"would delete 52 rows, more than privacy.max_rows_per_request \(20\)",
    ):
        forget(settings, "r", customer_id=WHO, platforms=False, progress=lambda _: None)
    assert _versions(settings.lake_root) == before


def test_restricted_zones_are_owner_only(tmp_path):
    from p13n.config import load_settings
    from p13n.secrets import restricted_paths, secure_zones

    settings = load_settings("test", environ={"P13N_DATA_DIR": str(tmp_path)})
    (tmp_path / "lake" / "bronze").mkdir(parents=True, mode=0o755)
    (tmp_path / "lake" / "bronze").chmod(0o755)  # as an older run left it
    secure_zones(settings)
    paths = restricted_paths(settings)
    assert {p.name for p in paths} >= {
        "restricted",
        "bronze",
        "quarantine",
        "landing",
        "truth",
        "secrets",
        "airflow",
    }
    assert {oct(p.stat().st_mode & 0o777) for p in paths} == {"0o700"}
