"""The read API as an attacker and a storefront meet it: keys and scopes, rates, bounded parameters,
a Redis error that stays one request's error, exposures only for real customers, and the whole
OpenAPI document fuzzed (schemathesis) against the real API process on a real Redis."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from p13n.bench.serving import AS_OF, write_gold
from p13n.serving.api import create_app
from p13n.serving.auth import headers_for
from p13n.serving.publish import publish

ERASED = "C000000007"
ENDPOINTS = [
    "/v1/customers/C000000001/recommendations",
    "/v1/items/SKU-000001/similar",
    "/v1/items/SKU-000001/bought-together",
    "/v1/lists/popular",
    "/v1/customers/C000000001/profile",
    "/v1/segments",
    "/v1/segments/lifecycle.active",
    "/v1/lookup/shopify_customer_id/700001",
]
INTERNAL = ENDPOINTS[4:]


@pytest.fixture
def srv(settings, tmp_path, redis_url):
    api = settings.serving.api.model_copy(update={"pointer_cache_seconds": 0.0})
    s = settings.model_copy(
        update={"data_dir": tmp_path, "serving": settings.serving.model_copy(update={"api": api})}
    )
    write_gold(s.lake_root, 60, 40, erased=[ERASED])
    publish(s, redis_url, AS_OF)
    return s


def test_every_endpoint_needs_a_key_with_its_scope(srv, redis_url):
    with TestClient(create_app(srv, redis_url)) as api:
        for url in ENDPOINTS:
            r = api.get(url)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", url
            assert api.get(url, headers={"X-API-Key": "guess"}).status_code == 401, url
        shop = headers_for(srv, "storefront")
        for url in ENDPOINTS:
            got = api.get(url, headers=shop).status_code
            assert got == (403 if url in INTERNAL else 200), url
        bearer = {"Authorization": "Bearer " + headers_for(srv, "internal")["X-API-Key"]}
        assert all(api.get(url, headers=bearer).status_code == 200 for url in ENDPOINTS)
        assert api.get("/health").status_code == 200  # liveness stays open


def test_a_client_past_its_rate_gets_429_and_the_others_do_not(settings, tmp_path, redis_url):
    from p13n.config import ApiClientSettings

    clients = dict(settings.serving.api.clients)
    clients["storefront"] = ApiClientSettings(
        key_env="P13N_API_KEY_STOREFRONT", scopes=["shopper"], rate_per_second=0.01, burst=3
    )
    api_cfg = settings.serving.api.model_copy(update={"clients": clients})
    s = settings.model_copy(
        update={"data_dir": tmp_path, "serving": settings.serving.model_copy(update={"api": api_cfg})}
    )
    write_gold(s.lake_root, 10, 20)
    publish(s, redis_url, AS_OF)
    with TestClient(create_app(s, redis_url)) as api:
        url = "/v1/customers/C000000001/recommendations"
        codes = [api.get(url, headers=headers_for(s, "storefront")).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        r = api.get(url, headers=headers_for(s, "storefront"))
        assert int(r.headers["retry-after"]) >= 1 and "over its rate" in r.json()["detail"]
        assert api.get(url, headers=headers_for(s, "internal")).status_code == 200


def test_odd_parameters_are_422_and_a_redis_error_stays_one_requests_error(srv, redis_url):
    app = create_app(srv, redis_url)
    with TestClient(app, headers=headers_for(srv)) as api:
        for url in (
            "/v1/customers/C000000001/recommendations?k=²",
            "/v1/items/SKU-000001/similar?k=" + "9" * 5000,
            "/v1/segments/churn.low?page=100000000000000000&page_size=1000",
            "/v1/segments/churn.low?page_size=0",
            "/v1/customers/a%00b/recommendations",
            "/v1/lists/popular?scope=" + "x" * 500,
            "/v1/customers/" + "C" * 200 + "/profile",
        ):
            assert api.get(url).status_code == 422, url
        store = app.state.store
        real = store.r.lrange

        def refuse(*_a, **_k):
            async def boom():
                raise redis.exceptions.ResponseError("value is not an integer or out of range")

            return boom()

        store.r.lrange = refuse
        assert api.get("/v1/segments/lifecycle.active").status_code == 503  # that request only
        store.r.lrange = real
        body = api.get("/v1/customers/C000000001/recommendations").json()
        assert body["fallback"] is None and body["version"]  # the breaker did not trip
        assert api.get("/v1/segments/lifecycle.active").status_code == 200


def test_exposures_only_for_customers_of_the_live_version_and_the_global_holdout_unpersonalized(
    settings, tmp_path, redis_url
):
    from p13n.config import ExperimentArm, ExperimentSettings

    exp = ExperimentSettings(
        enabled=True,
        applies_to="personalized",
        salt="s",
        holdout=0.0,
        arms={"a": ExperimentArm(weight=1.0, list_type="personalized")},
    )
    serving = settings.serving.model_copy(update={"experiments": {"e": exp}})
    s = settings.model_copy(update={"data_dir": tmp_path, "serving": serving})
    write_gold(s.lake_root, 20, 20, erased=[ERASED])
    publish(s, redis_url, AS_OF)
    with TestClient(create_app(s, redis_url), headers=headers_for(s)) as api:
        for who in ("C000000004", "C999999999", ERASED, "C000000004"):
            assert api.get(f"/v1/customers/{who}/recommendations").status_code == 200
        # C000000003 is in the global holdout (2%): no personalization at all, and no exposure of e
        held = api.get("/v1/customers/C000000003/recommendations?type=buy_again&k=5").json()
        assert held["experiment"] == {"name": "global_holdout", "arm": "holdout"}
        assert (
            held["served_type"] == "popular"
            and held["items"] == api.get("/v1/lists/popular?k=5").json()["items"]
        )
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    logged = [f["customer_id"] for _, f in r.xrange("p13n:exposures")]
    assert logged == ["C000000004", "C000000004"]


def test_cached_lists_are_served_while_redis_is_down(srv, redis_url):
    from p13n.services.kafka import free_port

    app = create_app(srv, redis_url)
    with TestClient(app, headers=headers_for(srv)) as api:
        trending = api.get("/v1/lists/trending?scope=toys&k=5").json()
        popular = api.get("/v1/lists/popular?k=5").json()
        app.state.store.r.connection_pool.connection_kwargs["port"] = free_port()  # Redis gone
        app.state.store.r.connection_pool.reset()
        down = api.get("/v1/lists/popular?k=5")
        assert down.status_code == 200 and down.json()["fallback"] == "redis_unavailable"
        assert down.json()["items"] == popular["items"]
        again = api.get("/v1/lists/trending?scope=toys&k=3").json()
        assert again["items"] == trending["items"][:3] and again["fallback"] == "redis_unavailable"
        assert api.get("/v1/lists/trending?scope=pet").status_code == 503  # never served: nothing cached


# --- the whole OpenAPI document, fuzzed against `p13n serve` on a real Redis -------------------------


@pytest.fixture(scope="module")
def live_api(tmp_path_factory, redis_server):
    from p13n.bench.serving import _wait_http
    from p13n.config import load_settings
    from p13n.services.kafka import free_port

    tmp = tmp_path_factory.mktemp("fuzz")
    env = {
        **os.environ,
        "P13N_ENV": "test",
        "P13N_DATA_DIR": str(tmp),
        "P13N__SERVING__REDIS_URL": redis_server.url,
        "P13N__SERVING__API__CLIENTS__INTERNAL__RATE_PER_SECOND": "100000",
        "P13N__SERVING__API__CLIENTS__INTERNAL__BURST": "100000",
    }
    s = load_settings("test", environ=env)
    redis.Redis.from_url(redis_server.url).flushall()
    write_gold(s.lake_root, 200, 100, erased=[ERASED])
    publish(s, redis_server.url, AS_OF)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "p13n.cli", "serve", "--port", str(port), "--workers", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", 60)
        yield f"http://127.0.0.1:{port}", headers_for(s, "internal")
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_openapi_document_fuzzed_gives_no_5xx_and_matches_its_schemas(live_api, tmp_path):
    """Every operation, property-based (schemathesis: positive and negative inputs, every check): no
    5xx, every status documented, every body valid against its schema."""
    url, headers = live_api
    ((key, value),) = headers.items()
    report = tmp_path / "fuzz.json"
    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{url}/openapi.json",
            "-H",
            f"{key}: {value}",
            "--checks",
            "all",
            "--max-examples",
            "40",
            "--seed",
            "13",
            "--report",
            "ndjson",
            "--report-ndjson-path",
            str(report),
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    tail = run.stdout[-3000:]
    assert run.returncode == 0, tail
    codes = Counter(_status_codes([json.loads(line) for line in report.read_text().splitlines()]))
    print(f"fuzzed {sum(codes.values())} requests: {dict(sorted(codes.items()))}")
    assert sum(codes.values()) > 400 and not [c for c in codes if c >= 500]
    assert codes[200] > 250 and codes[422] > 40  # both real answers and refused inputs were reached


def _status_codes(node) -> list[int]:
    """Every response status in schemathesis' NDJSON events (nested in each scenario's recorder)."""
    if isinstance(node, dict):
        own = [node["status_code"]] if isinstance(node.get("status_code"), int) else []
        return own + [c for v in node.values() for c in _status_codes(v)]
    if isinstance(node, list):
        return [c for v in node for c in _status_codes(v)]
    return []


def test_a_load_of_shopper_requests_never_trips_the_breaker(live_api):
    """1,000 requests, 64 at a time, with the odd requests an attacker mixes in: every shopper answer
    is a 200 from Redis (no fallback), and the worker never gave Redis up."""
    import asyncio

    import httpx

    url, headers = live_api

    async def load() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30) as client:
            gate = asyncio.Semaphore(64)

            async def one(i: int):
                path = (
                    f"/v1/segments/churn.low?page={10**17}&page_size=1000"
                    if i % 50 == 0
                    else f"/v1/customers/C{i % 200:09d}/recommendations?k=10"
                )
                async with gate:
                    return await client.get(path)

            return await asyncio.gather(*(one(i) for i in range(1000)))

    replies = asyncio.run(load())
    shopper = [r for r in replies if "/recommendations" in str(r.url)]
    assert {r.status_code for r in shopper} == {200}
    assert {r.json()["fallback"] for r in shopper} <= {None, "unknown_customer"}
    assert {r.status_code for r in replies if "/segments/" in str(r.url)} == {422}
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["breaker_trips"] == 0


def test_the_demo_storefront_waits_out_a_redis_that_answers_late(settings, tmp_path, monkeypatch):
    """`make run`'s storefront browses the lists through the API's store, but a fallback logs no
    exposure: it waits for a Redis that answers late (here: stopped for 0.5 s as the storefront starts)
    instead of ending the run on the API's 100 ms timeout, which a 100k run met on a busy machine."""
    from p13n.runner import _storefront_requests
    from p13n.services.redis import RedisServer
    from p13n.serving.api import Store
    from p13n.serving.keys import Keys

    server = RedisServer(tmp_path / "redis", persist=False).start()
    live, resumed = Store.live, []

    async def late(store):
        if not resumed:  # the storefront's first call: Redis stalls for 0.5 s
            os.kill(server.proc.pid, signal.SIGSTOP)
            resumed.append(threading.Timer(0.5, os.kill, (server.proc.pid, signal.SIGCONT)))
            resumed[0].start()
        return await live(store)

    monkeypatch.setattr(Store, "live", late)
    try:
        keys = Keys(settings.serving.namespace)
        r = redis.Redis.from_url(server.url)
        r.set(keys.live, "v1")
        r.hset(keys.segments("v1"), "lifecycle.active", 3)
        r.rpush(keys.segment("v1", "lifecycle.active"), "C1", "C2", "C3")
        assert settings.serving.api.redis_timeout_ms <= 100
        shown, _ = _storefront_requests(settings, server.url, dt.date(2024, 3, 2))
    finally:
        resumed[0].join() if resumed else None
        os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()
    assert resumed and shown == 3
