"""Erasure and access on a small synthetic lake with a real Redis publish, the fake email platforms
and fakesnow; the full run's erasure is in `test_customers_dag`."""

from __future__ import annotations

import json
import os

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
        settings = load_settings("test", environ={
            "P13N_DATA_DIR": str(tmp_path), "P13N_PII_KEY": "k", "P13N__ACTIVATION__MAILCHIMP__HOST": url,
            "P13N__ACTIVATION__MAILCHIMP__SERVER": "us1"})  # fmt: skip
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


def test_requests_are_queued_served_and_lose_their_email(world, monkeypatch):
    from p13n.privacy import tasks

    settings, _ = world
    monkeypatch.setattr(tasks, "get_settings", lambda: settings)
    monkeypatch.setenv("P13N__SERVING__REDIS_URL", "")
    rid = tasks.request("access", email=EMAIL)
    bad = tasks.request("forget", email="nobody@nowhere.example")
    with pytest.raises(RuntimeError, match="1 of 2 privacy requests failed"):
        tasks.process_requests()
    rows = {r[0]: r[1:] for r in duckdb_connection().execute(
        f"SELECT request_id, status, email, detail FROM {scan(settings.lake_root, 'ops.privacy_requests')}").fetchall()}  # fmt: skip
    assert rows[rid][:2] == ("done", None) and rows[rid][2].endswith(f"{rid}.json")
    assert rows[bad][:2] == ("failed", None) and "matches 0 customers" in rows[bad][2]
