"""`p13n bench serving`: the publish against `redis-benchmark`, and the API under 50 concurrent clients.

* `publish_ratio` = keys per second of the publish's write phase ÷ the HSETs per second
  `redis-benchmark` reaches with a pipeline of 16 on the same server in the same run, each HSET
  carrying the publish's mean bytes per command (a customer key holds five fields, ~900 bytes).
  `publish_ratio_vs_3b` divides by redis-benchmark's default 3-byte HSETs instead, and
  `publish_ratio_end_to_end` uses the whole publish (encode, write, verify, switch): encoding in
  DuckDB dominates it. `publish_spark_s` is the same publish in Spark tasks.
* `publish_write_vs_pipe` = `redis-cli --pipe` replaying the very bytes of a version (its commands,
  encoded once and written to a file) ÷ the publish's write phase, on the same empty server: 1.0 means
  the publish writes as fast as Redis' own bulk loader. The write phase is the time the writer thread
  spends sending, which overlaps the encoding of the next kind (both share the cores), so its rate is
  below the bulk loader's alone. `publish_end_to_end_vs_pipe` divides the same replay by the whole
  publish (checks, encode, write, verify, switch).
* `api_p99_ms`: `wrk` (50 connections, 10 s, loopback) on customer recommendations of random known
  customers against `p13n serve`'s app with its configured workers; p50 and requests/s beside it.

The gold tables are synthetic but shaped like the retailer's (`write_gold`): the tests use the same
writer at a small size.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from p13n.lake.tables import (
    GOLD_BOUGHT_TOGETHER,
    GOLD_CUSTOMER_PROFILES,
    GOLD_IDENTITY_KEYS,
    GOLD_ITEM_SIMILARITY,
    GOLD_POPULAR_ITEMS,
    GOLD_RECOMMENDATIONS,
    GOLD_SEGMENTS,
    GOLD_SEND_TIMES,
    GOLD_TRENDING,
    OPS_ERASURES,
    OPS_MODEL_RUNS,
    OPS_VALIDATIONS,
    RESTRICTED_CUSTOMER_PROFILES,
    silver_table,
)

PERSONAS = ("Web shoppers, low spend", "Store regulars, high spend", "App-first, rare buyers", "Deal seekers")
AS_OF = dt.date(2024, 3, 1)


def write_gold(
    root: str, customers: int, items: int, as_of: dt.date = AS_OF, seed: int = 1, erased=()
) -> None:
    """Every gold (and ops) table a publish reads, for one date; `seed` changes the lists' content."""
    from p13n.lake.duck import duckdb_connection, write_arrow

    con = duckdb_connection()
    con.execute(f"SELECT setseed({(seed % 100) / 100})")
    day = f"DATE '{as_of.isoformat()}'"
    tables = {
        GOLD_RECOMMENDATIONS: f"""
            SELECT customer_id, {day} AS as_of_date, list_type, rank::INT AS rank,
                   'SKU-' || lpad(((hash(customer_id || list_type || rank, {seed}) % {items}) + 1)::VARCHAR,
                   6, '0') AS sku,
                   round(1.0 / (rank + {seed}), 6) AS score,
                   CASE WHEN rank % 3 = 0 THEN 'als' WHEN rank % 3 = 1 THEN 'item_similarity' ELSE 'popular'
                   END
                       AS source,
                   CASE WHEN rank % 3 = 0 THEN 'Picked for you from what you shop'
                        WHEN rank % 3 = 1 THEN 'Similar to SKU-' || lpad((rank * 7 % {items} + 1)::VARCHAR, 6,
                        '0')
                        ELSE 'Popular with shoppers like you' END AS reason
            FROM (SELECT 'C' || lpad(i::VARCHAR, 9, '0') AS customer_id FROM range({customers}) t(i))
            CROSS JOIN (VALUES ('personalized', 20), ('buy_again', 5), ('recently_viewed', 5),
                               ('popular_in_segment', 10)) l(list_type, n)
            CROSS JOIN range(1, 21) r(rank) WHERE rank <= n""",
        GOLD_SEGMENTS: f"""
            SELECT 'C' || lpad(i::VARCHAR, 9, '0') AS customer_id, {day} AS as_of_date,
                   ['Champions', 'Loyal Customers', 'Hibernating', 'At Risk'][i % 4 + 1] AS rfm_segment,
                   {list(PERSONAS)}[i % {len(PERSONAS)} + 1] AS persona,
                   ['active', 'lapsed', 'at_risk', 'new'][i % 4 + 1] AS lifecycle_stage,
                   ['low', 'medium', 'high'][i % 3 + 1] AS churn_risk_band,
                   round(random() * 2000, 2) AS clv_12m
            FROM range({customers}) t(i)""",
        GOLD_SEND_TIMES: f"""
            SELECT 'C' || lpad(i::VARCHAR, 9, '0') AS customer_id, (i % 24)::INT AS best_hour,
                   'Tuesday' AS best_weekday, 'segment' AS basis, 0 AS opens, {day} AS as_of_date
            FROM range({customers}) t(i)""",
        # Contact data sits beside the consents in the real table: the publish must not pick it up.
        GOLD_CUSTOMER_PROFILES: f"""
            SELECT 'C' || lpad(i::VARCHAR, 9, '0') AS customer_id, 'person' || i || '@example.com' AS email,
                   '+1555' || lpad(i::VARCHAR, 7, '0') AS phone,
                   CASE WHEN i % 5 = 0 THEN 'revoked' ELSE 'granted' END AS consent_email,
                   'granted' AS consent_sms, 'revoked' AS consent_push,
                   CASE WHEN i % 7 = 0 THEN 'revoked' ELSE 'granted' END AS consent_personalization
            FROM range({customers}) t(i)""",
        # The contact data exports read (and only they), beside the pseudonymized profile.
        RESTRICTED_CUSTOMER_PROFILES: f"""
            SELECT 'C' || lpad(i::VARCHAR, 9, '0') AS customer_id, 'First' || i AS first_name, 'Last' || i AS
            last_name,
                   CASE WHEN i % 11 = 3 THEN NULL WHEN i % 13 = 5 THEN 'person' || i || '.example.com'
                        ELSE 'person' || i || '@example.com' END AS email,
                   '+1555' || lpad(i::VARCHAR, 7, '0') AS phone
            FROM range({customers}) t(i)""",
        silver_table("products"): f"""
            SELECT 'SKU-' || lpad(s::VARCHAR, 6, '0') AS sku, 'Product ' || s AS title,
                   round(5 + (s * 37 % 200) + 0.99, 2) AS price, 'https://cdn.example.com/' || s || '.jpg' AS
                   image_url,
                   TIMESTAMP '2024-01-01' AS updated_at
            FROM range(1, {items} + 1) t(s)""",
        GOLD_IDENTITY_KEYS: f"""
            SELECT key_type, key_value, 'C' || lpad(i::VARCHAR, 9, '0') AS customer_id FROM range({customers})
            t(i)
            CROSS JOIN LATERAL (VALUES ('shopify_customer_id', (700000 + i)::VARCHAR),
                                       ('email_hmac', md5('person' || i || '@example.com'))) k(key_type,
                                       key_value)""",
        GOLD_ITEM_SIMILARITY: f"""
            SELECT 'SKU-' || lpad(s::VARCHAR, 6, '0') AS sku, {day} AS as_of_date,
                   'SKU-' || lpad(((s + r * {seed}) % {items} + 1)::VARCHAR, 6, '0') AS similar_sku, r::INT AS
                   rank,
                   round(1.0 / (r + 1), 4) AS score, CASE WHEN r < 6 THEN 'behaviour' ELSE 'content' END AS
                   basis
            FROM range(1, {items} + 1) a(s) CROSS JOIN range(1, 11) b(r)""",
        GOLD_BOUGHT_TOGETHER: f"""
            SELECT 'SKU-' || lpad(s::VARCHAR, 6, '0') AS sku, {day} AS as_of_date,
                   'SKU-' || lpad(((s * 3 + r) % {items} + 1)::VARCHAR, 6, '0') AS other_sku, r::INT AS rank,
                   (10 - r)::BIGINT AS support, round(0.5 / r, 4) AS confidence, 3.0 AS lift
            FROM range(1, {items} + 1, 3) a(s) CROSS JOIN range(1, 4) b(r)""",
        GOLD_TRENDING: f"""
            SELECT scope, {day} AS as_of_date, r::INT AS rank,
                   'SKU-' || lpad((r * 11 + {seed})::VARCHAR, 6, '0') AS sku, 100.0 / r AS score,
                   (50 - r)::BIGINT AS recent_customers, 2.0 AS velocity
            FROM (VALUES ('all'), ('toys'), ('pet')) s(scope) CROSS JOIN range(1, 21) b(r)""",
        GOLD_POPULAR_ITEMS: f"""
            SELECT scope, {day} AS as_of_date, r::INT AS rank,
                   'SKU-' || lpad((r * 13 + {seed})::VARCHAR, 6, '0') AS sku, (1000 - r)::BIGINT AS buyers
            FROM (SELECT unnest(['all', {", ".join(f"'{p}'" for p in PERSONAS)}]) AS scope)
            CROSS JOIN range(1, 51) b(r)""",
        OPS_MODEL_RUNS: f"""
            SELECT model, {day} AS as_of_date, '1' AS version, true AS promoted, '1' AS champion_version,
                   '' AS reasons, '{{}}' AS metrics, 0::BIGINT AS rows
            FROM (VALUES ('recommend'), ('churn'), ('clv'), ('segments')) m(model)""",
        OPS_VALIDATIONS: f"""
            SELECT {day} AS run_date, 'gold.' || t AS table_name, true AS success, 10::BIGINT AS passed,
                   0::BIGINT AS failed, '' AS failures, '' AS warnings, now()::TIMESTAMP AS validated_at
            FROM (VALUES ('recommendations'), ('segments'), ('send_times'), ('item_similarity'),
                         ('bought_together'), ('trending'), ('popular_items')) v(t)""",
    }
    for table, sql in tables.items():
        write_arrow(root, table, con.execute(sql).fetch_arrow_table(), mode="overwrite")
    if erased:
        import pyarrow as pa

        rows = pa.table({"customer_id": list(erased), "request_id": ["bench"] * len(erased)})
        write_arrow(root, OPS_ERASURES, rows, mode="overwrite")


def _redis_benchmark(port: int, value_bytes: int, requests: int) -> float:
    from p13n.services.redis import redis_binary

    out = subprocess.run(
        [
            redis_binary("redis-benchmark"),
            "-p",
            str(port),
            "-t",
            "hset",
            "-n",
            str(requests),
            "-P",
            "16",
            "-d",
            str(value_bytes),
            "-r",
            "100000",
            "--csv",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    row = [line for line in out.splitlines() if line.startswith('"HSET')][0]
    return float(row.split(",")[1].strip('"'))


def _redis_cli_pipe(settings, port: int, path: Path) -> tuple[float, int]:
    """Seconds `redis-cli --pipe` takes to replay the bytes of one version (encoded by the publish's own
    encoder, written to `path`), and their size: the reference for the publish's write phase."""
    from p13n.lake.duck import duckdb_connection
    from p13n.services.redis import redis_binary
    from p13n.serving.encode import commands
    from p13n.serving.publish import command_batches, erased_customers

    con = duckdb_connection()
    cmds = commands(
        con, settings, AS_OF, f"{AS_OF:%Y%m%d}.0", erased_customers(settings, con)
    )  # as long as a real one
    with path.open("wb") as f:
        for data, _ in command_batches(cmds, 100_000):
            f.write(data)
    with path.open("rb") as f:
        t0 = time.perf_counter()
        out = subprocess.run(
            [redis_binary("redis-cli"), "-p", str(port), "--pipe"], stdin=f, capture_output=True, text=True
        )
        seconds = time.perf_counter() - t0
    if out.returncode != 0 or f"replies: {len(cmds)}" not in out.stdout:
        raise RuntimeError(
            f"redis-cli --pipe did not replay the version: {out.stdout[-300:]}{out.stderr[-300:]}"
        )
    size = path.stat().st_size
    path.unlink()
    return seconds, size


def _wrk(url: str, customers: int, seconds: int, connections: int, key: str = "") -> dict:
    import shutil

    if not shutil.which("wrk"):
        raise RuntimeError("wrk is not installed; `make services` installs it (Debian's wrk)")
    script = Path(tempfile.mkdtemp()) / "load.lua"
    script.write_text(
        "request = function()\n"
        f'  return wrk.format("GET", string.format("/v1/customers/C%09d/recommendations?k=10", '
        f'math.random(0, {customers - 1})), {{["X-API-Key"] = "{key}"}})\nend\n'
    )
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "api_p50_ms": ms("50%"),
        "api_p99_ms": ms("99%"),
        "api_rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "api_non_2xx": int(errors.group(1)) if errors else 0,
    }


def bench_serving(rows: int | None = None, reps: int = 1) -> dict:
    from p13n.config import get_settings
    from p13n.services.kafka import free_port
    from p13n.services.redis import RedisServer
    from p13n.serving.publish import client, publish

    customers = rows or 100_000
    items = max(1000, customers // 2)
    work = Path(tempfile.mkdtemp(prefix="p13n-bench-serving-"))
    os.environ["P13N_DATA_DIR"] = str(work)
    settings = get_settings()
    print(
        f"bench serving: writing synthetic gold tables for {customers:,} customers, {items:,} items",
        flush=True,
    )
    write_gold(settings.lake_root, customers, items)
    server = RedisServer(work / "redis", persist=False).start()
    try:
        r = client(server.url)
        pipe_s, pipe_bytes = _redis_cli_pipe(settings, server.port, work / "version.resp")
        r.flushall()
        best, before = None, r.info("memory")["used_memory"]
        for _ in range(max(1, reps)):
            res = publish(settings, server.url, AS_OF)
            best = res if best is None or res.seconds["total"] < best.seconds["total"] else best
        # Memory of one version: what the live one holds once the others are gone.
        version_bytes = (r.info("memory")["used_memory"] - before) / min(
            max(1, reps), settings.serving.keep_versions
        )
        # One HSET per key: the same bytes per command as the publish's (one value of that size).
        mean_value = max(3, best.bytes // max(best.commands, 1))
        n = 2_000_000
        rb_small = _redis_benchmark(server.port, 3, n)
        rb_sized = _redis_benchmark(server.port, mean_value, n)
        write_rate = best.total_keys / best.seconds["write"]
        end_to_end = best.total_keys / best.seconds["total"]
        out = {
            "serving_customers": customers,
            "publish_keys": best.total_keys,
            "publish_mb": round(best.bytes / 1e6, 1),
            "publish_s": round(best.seconds["total"], 2),
            "publish_encode_s": round(best.seconds["encode"], 2),
            "publish_write_s": round(best.seconds["write"], 2),
            "publish_verify_s": round(best.seconds["verify"], 2),
            "publish_write_keys_per_s": round(write_rate),
            "publish_end_to_end_keys_per_s": round(end_to_end),
            "redis_benchmark_hset_per_s": round(rb_sized),
            "redis_benchmark_hset_3b_per_s": round(rb_small),
            "redis_benchmark_value_bytes": mean_value,
            "publish_ratio": round(write_rate / rb_sized, 3),
            "publish_ratio_vs_3b": round(write_rate / rb_small, 3),
            "publish_ratio_end_to_end": round(end_to_end / rb_sized, 3),
            "redis_cli_pipe_s": round(pipe_s, 2),
            "redis_cli_pipe_mb": round(pipe_bytes / 1e6, 1),
            "publish_write_vs_pipe": round(pipe_s / best.seconds["write"], 3),
            "publish_end_to_end_vs_pipe": round(pipe_s / best.seconds["total"], 3),
            "redis_version_mb": round(version_bytes / 1e6, 1),
            "redis_bytes_per_customer": round(version_bytes / customers),
        }
        port = free_port()
        env = {
            **os.environ,
            "P13N__SERVING__REDIS_URL": server.url,
            "P13N__SERVING__API__LOG_EXPOSURES": "true",
            # The load test measures the API, not the storefront's rate limit (429s past 200/s).
            "P13N__SERVING__API__CLIENTS__STOREFRONT__RATE_PER_SECOND": "1000000",
            "P13N__SERVING__API__CLIENTS__STOREFRONT__BURST": "1000000",
        }
        from p13n.serving.auth import headers_for

        key = headers_for(settings, "storefront")["X-API-Key"]
        api = subprocess.Popen(
            [sys.executable, "-m", "p13n.cli", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_http(f"http://127.0.0.1:{port}/health", 30)
            _wrk(f"http://127.0.0.1:{port}", customers, 2, 50, key)  # warm-up
            out |= _wrk(f"http://127.0.0.1:{port}", customers, 10, 50, key)
            out["api_workers"] = settings.serving.api.workers
        finally:
            api.terminate()
            api.wait(30)
        # The same publish in Spark tasks (each encodes and writes a hash share of the customers).
        in_parts = settings.model_copy(
            update={"serving": settings.serving.model_copy(update={"engine": "spark"})}
        )
        from p13n.session import spark

        spark()  # started before the clock
        res = publish(in_parts, server.url, AS_OF)
        out["publish_spark_s"] = round(res.seconds["total"], 2)
        out["publish_spark_vs_duckdb"] = round(res.seconds["total"] / best.seconds["total"], 2)
    finally:
        server.stop()
    return out


def _wait_http(url: str, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the API did not answer on {url} within {timeout:.0f}s")
