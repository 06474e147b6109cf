"""Atomic, versioned publishing of gold tables to Redis, with rollback.

A publish (1) checks the run: every table it reads has the date's partition and passed its
expectations, and every gated model has a champion (`--force` skips this); (2) takes the namespace's
lock and cleans up what a crashed publish left; (3) writes the new version under its own prefix,
pipelined by parallel writers; (4) verifies it: key counts per kind, and the content digest of a
sample of keys, read back from Redis; (5) makes it live with one atomic pointer switch (a Lua
script); (6) deletes versions beyond `serving.keep_versions`. Until (5), readers see the previous
version; a publish killed anywhere before it leaves the previous version live.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from p13n.config import Settings
from p13n.faults import checkpoint
from p13n.lake.tables import GOLD_SEGMENTS, OPS_ERASURES, OPS_MODEL_RUNS, OPS_VALIDATIONS
from p13n.serving.keys import Keys

# Make `version` live if it is verified; the previous live version becomes `retained`.
_SWITCH = """
local status = redis.call('HGET', KEYS[2], 'status')
if status ~= 'verified' and status ~= 'retained' then
  return redis.error_reply('version ' .. ARGV[1] .. ' is ' .. tostring(status)
    .. ', not verified or retained')
end
local previous = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'status', 'live', 'live_at', ARGV[2])
if previous and previous ~= ARGV[1] then
  redis.call('HSET', ARGV[3] .. previous, 'status', 'retained')
end
return previous
"""

# Release the lock only if it is still ours.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Extend the lock only if it is still ours.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

SHARED_KINDS = ("x", "s", "m")
KIND_NAMES = {
    "c": "customers",
    "i": "items",
    "l": "lists",
    "x": "lookups",
    "s": "segments",
    "m": "version tables",
}


class PublishError(RuntimeError):
    """A publish was refused or failed; the live version is unchanged. `retryable`: trying again
    later may succeed (a lock held, Redis unreachable), as opposed to a refusal on the data."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


@dataclass
class PublishResult:
    version: str
    as_of: dt.date
    previous: str | None
    keys: dict[str, int]
    commands: int
    bytes: int
    seconds: dict[str, float] = field(default_factory=dict)
    verified_sample: int = 0
    forced: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def total_keys(self) -> int:
        return sum(self.keys.values())

    def summary(self) -> str:
        kinds = ", ".join(f"{n:,} {KIND_NAMES.get(k, k)}" for k, n in sorted(self.keys.items()))
        rate = self.total_keys / max(self.seconds.get("write", 0), 1e-9)
        return (
            f"published version {self.version} (as of {self.as_of}): {kinds}; "
            f"{self.bytes / 1e6:.1f} MB in {self.commands:,} commands, written at {rate:,.0f} keys/s; "
            f"{self.verified_sample:,} keys verified by digest; live (previous: {self.previous or 'none'})"
        )


def client(url: str, **kwargs):
    import redis

    return redis.Redis.from_url(url, decode_responses=True, **kwargs)


# --- preflight -------------------------------------------------------------------------------------


def preflight(settings: Settings, as_of: dt.date, con) -> list[str]:
    """Why this date must not be published: missing partitions, failed expectations, gates without a
    champion. Empty when it may."""
    from p13n.lake.duck import scan, table_exists
    from p13n.serving.encode import DATED_TABLES

    root = settings.lake_root
    problems = []
    for table, feeds in DATED_TABLES.items():
        if not table_exists(root, table):
            problems.append(f"{table} does not exist (it feeds {feeds})")
            continue
        n = con.execute(
            f"SELECT count(*) FROM {scan(settings.lake_root, table)} WHERE as_of_date = ?", [as_of]
        ).fetchone()[0]
        if n == 0:
            problems.append(f"{table} has no rows for {as_of} (it feeds {feeds})")
    latest = {}
    if table_exists(root, OPS_VALIDATIONS):
        latest = {
            t: (ok, f)
            for t, ok, f in con.execute(
                f"""SELECT table_name, success, failures FROM (
                        SELECT *, row_number() OVER (PARTITION BY table_name ORDER BY validated_at DESC) AS n
                        FROM {scan(settings.lake_root, OPS_VALIDATIONS)} WHERE run_date = ?) WHERE n = 1""",
                [as_of],
            ).fetchall()
        }
    for table in DATED_TABLES:
        if table not in latest:
            problems.append(f"{table} has not been validated for {as_of} (no row in ops.validations)")
        elif not latest[table][0]:
            problems.append(f"{table} failed its expectations for {as_of}: {latest[table][1]}")
    if settings.serving.gated_models:
        if not table_exists(root, OPS_MODEL_RUNS):
            problems.append("ops.model_runs does not exist: no model was gated")
        else:
            rows = dict(
                con.execute(
                    # A run's champion: its own version when promoted, else the champion it was judged
                    # against.
                    f"""SELECT model, CASE WHEN promoted THEN version ELSE champion_version END FROM (
                        SELECT *, row_number() OVER (PARTITION BY model ORDER BY as_of_date DESC) AS n
                        FROM {scan(settings.lake_root, OPS_MODEL_RUNS)} WHERE as_of_date <= ?) WHERE n = 1""",
                    [as_of],
                ).fetchall()
            )
            for model in settings.serving.gated_models:
                if model not in rows:
                    problems.append(f"model {model!r} has no gated run on or before {as_of}")
                elif rows[model] in (None, ""):
                    problems.append(
                        f"model {model!r} has no champion: its gate failed and nothing passed before"
                    )
    return problems


def erased_customers(settings: Settings, con) -> set[str]:
    from p13n.lake.duck import scan, table_exists

    if not table_exists(settings.lake_root, OPS_ERASURES):
        return set()
    return {
        r[0]
        for r in con.execute(f"SELECT customer_id FROM {scan(settings.lake_root, OPS_ERASURES)}").fetchall()
    }


# --- the lock --------------------------------------------------------------------------------------


class Lock:
    """One publisher per namespace. A lock whose holder is a dead process on this host is broken."""

    def __init__(self, r, keys: Keys, ttl_seconds: int):
        self.r, self.keys, self.ttl_ms = r, keys, ttl_seconds * 1000
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._last_renew = 0.0
        self._guard = threading.Lock()

    def acquire(self) -> None:
        if self.r.set(self.keys.lock, self.token, nx=True, px=self.ttl_ms):
            self._last_renew = time.monotonic()
            return
        holder = self.r.get(self.keys.lock) or ""
        host, _, rest = holder.partition(":")
        pid = rest.partition(":")[0]
        if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
            # Compare-and-delete, so a lock taken meanwhile by a live publisher is left alone.
            self.r.eval(_UNLOCK, 1, self.keys.lock, holder)
            if self.r.set(self.keys.lock, self.token, nx=True, px=self.ttl_ms):
                self._last_renew = time.monotonic()
                return
        ttl = self.r.pttl(self.keys.lock)
        raise PublishError(
            f"another publish holds the lock ({holder}, {max(ttl, 0) / 1000:.0f}s left); try again when it "
            "ends",
            retryable=True,
        )

    def renew(self) -> None:
        with self._guard:
            if time.monotonic() - self._last_renew < self.ttl_ms / 4000:
                return
            if not self.r.eval(_RENEW, 1, self.keys.lock, self.token, self.ttl_ms):
                raise PublishError(
                    "the publish lost its lock (it expired or was broken); nothing was made live",
                    retryable=True,
                )
            self._last_renew = time.monotonic()

    def release(self) -> None:
        self.r.eval(_UNLOCK, 1, self.keys.lock, self.token)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed, not yet reaped by its parent) is not a live publisher.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


# --- writing ---------------------------------------------------------------------------------------


def _connect(url: str) -> socket.socket:
    from redis.connection import parse_url

    opts = parse_url(url)
    sock = socket.create_connection((opts.get("host", "127.0.0.1"), opts.get("port", 6379)), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    preamble = []
    if opts.get("password"):
        auth = [opts["username"], opts["password"]] if opts.get("username") else [opts["password"]]
        preamble.append(_resp("AUTH", *auth))
    if opts.get("db"):
        preamble.append(_resp("SELECT", str(opts["db"])))
    if preamble:
        sock.sendall(b"".join(preamble))
        _read_replies(sock, len(preamble), "connection setup")
    return sock


def _resp(*args: str) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _read_replies(sock: socket.socket, n: int, what: str) -> None:
    """Read n replies; the first error reply fails the publish with its message."""
    import hiredis

    reader = hiredis.Reader()
    got = 0
    while got < n:
        data = sock.recv(1 << 20)
        if not data:
            raise PublishError(
                f"Redis closed the connection after {got} of {n} replies ({what})", retryable=True
            )
        reader.feed(data)
        while got < n:
            reply = reader.gets()
            if reply is False:
                break
            got += 1
            if isinstance(reply, hiredis.ReplyError):
                raise PublishError(f"Redis refused a command of {what}: {reply}")


Batch = tuple[memoryview, int]  # framed commands back to back, and how many


def write_commands(
    url: str, batches: list[Batch], lock: Lock | None, progress: Callable | None, writers: int
):
    """Send batches of framed commands with `writers` connections in parallel, pipelined."""
    total = len(batches)
    done = [0]
    guard = threading.Lock()
    half = total // 2

    def work(my_batches: list[tuple[int, Batch]]) -> None:
        sock = _connect(url)
        try:
            for i, (data, n_commands) in my_batches:
                sock.sendall(data)
                _read_replies(sock, n_commands, f"batch {i + 1} of {total}")
                with guard:
                    done[0] += 1
                    n = done[0]
                if n == half:
                    checkpoint("serving.mid_publish")
                if lock:
                    lock.renew()
                if progress and (n % max(total // 10, 1) == 0 or n == total):
                    progress(f"  wrote {n:,} of {total:,} batches")
        finally:
            sock.close()

    shares = [[(i, b) for i, b in enumerate(batches) if i % writers == w] for w in range(writers)]
    with ThreadPoolExecutor(max_workers=writers) as pool:
        for f in [pool.submit(work, s) for s in shares if s]:
            f.result()


def command_batches(cmds: pa.Table, per_batch: int) -> list[Batch]:
    """The `cmd` column in batches of at most `per_batch` commands, each a view of the column's own
    bytes: a string array's values lie back to back in one buffer, so a batch is a slice of it (no
    copy, no Python string per command)."""
    import numpy as np

    out = []
    for chunk in cmds.column("cmd").chunks:
        n = len(chunk)
        if n == 0:
            continue
        _, offsets_buf, data_buf = chunk.buffers()
        width = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
        offsets = np.frombuffer(offsets_buf, dtype=width)[chunk.offset : chunk.offset + n + 1]
        data = memoryview(data_buf)
        out += [
            (data[offsets[i] : offsets[min(i + per_batch, n)]], min(per_batch, n - i))
            for i in range(0, n, per_batch)
        ]
    return out


# --- verification ----------------------------------------------------------------------------------


def verify(
    r, keys: Keys, version: str, expected: dict[str, int], sample: list[tuple[str, str]]
) -> dict[str, int]:
    """Count the version's keys per kind in Redis, compare the digests of a sample of hash keys (see
    `digest_sample`) and the length of every segment list."""
    prefix = keys.prefix(version)
    found: dict[str, int] = {}
    for key in r.scan_iter(match=prefix + "*", count=10_000):
        kind = key[len(prefix) :].split(":", 1)[0]
        kind = "m" if kind in ("reasons", "segments") else kind
        found[kind] = found.get(kind, 0) + 1
    if found != expected:
        raise PublishError(
            f"version {version} is incomplete in Redis: expected keys {expected}, found {found}"
        )
    check_sample(r, version, sample)
    # Lists (segments): their lengths.
    seg_counts = r.hgetall(keys.segments(version))
    pipe = r.pipeline(transaction=False)
    for name in seg_counts:
        pipe.llen(keys.segment(version, name))
    for (name, n), length in zip(seg_counts.items(), pipe.execute(), strict=True):
        if int(n) != length:
            raise PublishError(f"version {version}: segment {name} holds {length} ids, expected {n}")
    return found


def check_sample(r, version: str, sample: list[tuple[str, str]]) -> None:
    """Compare what Redis holds for a sample of hash keys with the digests the encoder computed."""
    import hashlib

    pipe = r.pipeline(transaction=False)
    for k, _ in sample:
        pipe.hgetall(k)
    for (k, d), content in zip(sample, pipe.execute(), strict=True):
        text = "\n".join(f"{f}={v}" for f, v in sorted(content.items()))
        if hashlib.md5(text.encode()).hexdigest() != d:
            raise PublishError(f"version {version}: the content of {k} in Redis differs from the gold tables")


def expected_keys(cmds: pa.Table) -> dict[str, set[str] | int]:
    """Keys per kind: the set of keys for the kinds several parts write to (lookups, segments, version
    tables), the count for customers, items and lists (each key written by one part)."""
    kinds, key_col = cmds.column("kind").to_pylist(), cmds.column("key").to_pylist()
    out: dict[str, set] = {}
    for k, key in zip(kinds, key_col, strict=True):
        out.setdefault(k, set()).add(key)
    return {k: (v if k in SHARED_KINDS else len(v)) for k, v in out.items()}


def merge_expected(parts: list[dict]) -> dict[str, int]:
    total: dict[str, set | int] = {}
    for part in parts:
        for k, v in part.items():
            if isinstance(v, int):
                total[k] = total.get(k, 0) + v
            else:
                total[k] = total.get(k, set()) | set(v)
    return {k: v if isinstance(v, int) else len(v) for k, v in total.items() if v}


def digest_sample(cmds: pa.Table) -> list[tuple[str, str]]:
    """The (key, digest) of the hash keys `commands()` digested (one in `encode.SAMPLE_EVERY`)."""
    digests = cmds.filter(pc.invert(pc.is_null(cmds.column("digest"))))
    keys_col, digest_col = digests.column("key").to_pylist(), digests.column("digest").to_pylist()
    return list(zip(keys_col, digest_col, strict=True))


def command_bytes(cmds: pa.Table) -> int:
    return int(pc.sum(pc.binary_length(cmds.column("cmd").cast(pa.binary()))).as_py() or 0)


def publish_part(
    settings: Settings,
    url: str,
    as_of: dt.date,
    version: str,
    erased: set[str],
    reasons: list,
    part: tuple[int, int],
) -> dict:
    """One Spark task's share of a publish: its customers' and items' keys, encoded and written."""
    from p13n.lake.duck import duckdb_connection
    from p13n.serving.encode import commands

    con = duckdb_connection(settings=settings)  # on an executor: the driver's settings, not its own
    cmds = commands(con, settings, as_of, version, erased, part=part, reasons=reasons)
    write_commands(url, command_batches(cmds, settings.serving.batch_commands), None, None, 1)
    expected = {k: sorted(v) if isinstance(v, set) else v for k, v in expected_keys(cmds).items()}
    return {
        "expected": expected,
        "sample": digest_sample(cmds),
        "bytes": command_bytes(cmds),
        "commands": len(cmds),
    }


# --- the publish -----------------------------------------------------------------------------------


def new_version(r, keys: Keys, as_of: dt.date) -> str:
    return f"{as_of:%Y%m%d}.{r.incr(keys.seq)}"


def publish(
    settings: Settings,
    url: str,
    as_of: dt.date,
    *,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> PublishResult:
    """Publish the gold tables of `as_of` as a new version and make it live."""
    from p13n.lake.duck import duckdb_connection
    from p13n.serving.encode import command_parts

    say = progress or (lambda _m: None)
    s = settings.serving
    keys = Keys(s.namespace)
    r = client(url)
    con = duckdb_connection(settings=settings)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    problems = preflight(settings, as_of, con)
    warnings = []
    if problems and not force:
        raise PublishError(
            f"refusing to publish {as_of}: " + "; ".join(problems) + " (use --force to override)"
        )
    if problems:
        warnings = [f"forced past: {p}" for p in problems]
        for w in warnings:
            say(w)
    lock = Lock(r, keys, s.lock_ttl_seconds)
    lock.acquire()
    try:
        cleaned = cleanup_abandoned(r, keys)
        if cleaned:
            say(f"deleted {len(cleaned)} version(s) a crashed publish left: {', '.join(cleaned)}")
        version = new_version(r, keys, as_of)
        now = time.time()
        r.zadd(keys.versions, {version: now})
        r.hset(
            keys.meta(version),
            mapping={
                "status": "writing",
                "as_of_date": as_of.isoformat(),
                "created_at": _iso(now),
                "publisher": lock.token,
                "forced": int(bool(problems)),
            },
        )
        erased = erased_customers(settings, con)
        engine = choose_engine(settings, as_of, con)
        if engine != s.engine:
            say(f"serving.engine auto: {engine}")
        if engine == "spark":
            expected, sample, nbytes, ncommands = _publish_in_parts(
                settings, url, as_of, version, erased, con, lock, say
            )
            seconds["encode"] = 0.0  # encoded and written together by the Spark tasks
            seconds["write"] = time.perf_counter() - t0
            sampled = len(sample)
        else:
            seconds["encode"] = time.perf_counter() - t0  # the checks; the parts' encoding adds to it
            parts = command_parts(con, settings, as_of, version, erased)
            expected, nbytes, ncommands, sampled = _write_as_encoded(
                settings, url, r, version, parts, lock, say, seconds
            )
            sample = []  # each part's sample was read back after its write
        t2 = time.perf_counter()
        found = verify(r, keys, version, expected, sample)
        r.hset(
            keys.meta(version),
            mapping={"status": "verified", "keys": json.dumps(found, sort_keys=True), "bytes": nbytes},
        )
        seconds["verify"] = seconds.get("verify", 0.0) + time.perf_counter() - t2
        checkpoint("serving.before_switch")
        lock.renew()
        previous = r.eval(
            _SWITCH, 2, keys.live, keys.meta(version), version, _iso(time.time()), f"{keys.ns}:meta:"
        )
        expired = enforce_retention(r, keys, s.keep_versions)
        if expired:
            say(f"deleted versions beyond the last {s.keep_versions}: {', '.join(expired)}")
        seconds["total"] = time.perf_counter() - t0
        r.hset(keys.meta(version), "seconds", json.dumps({k: round(v, 3) for k, v in seconds.items()}))
    except Exception:
        if "version" in locals() and r.hget(keys.meta(version), "status") in ("writing", "verified"):
            delete_version(r, keys, version, status="failed")
        raise
    finally:
        lock.release()
    return PublishResult(
        version, as_of, previous, found, ncommands, nbytes, seconds, sampled, bool(problems), warnings
    )


def _write_as_encoded(settings, url, r, version, parts, lock, say, seconds) -> tuple[dict, int, int, int]:
    """Write each part of a version's commands while DuckDB encodes the next (the query runs outside
    the GIL, a writer thread sends the last part): the write of the cheap kinds and of the customers'
    first batches overlaps the encoding of the rest. `seconds` gets the time spent in each."""
    s = settings.serving
    seconds["write"] = seconds["verify"] = 0.0
    expected, nbytes, ncommands, sampled = [], 0, 0, 0

    def write(cmds: pa.Table, what: str, size: int) -> None:
        nonlocal sampled
        t = time.perf_counter()
        write_commands(url, command_batches(cmds, s.batch_commands), lock, None, s.writers)
        seconds["write"] += time.perf_counter() - t
        t = time.perf_counter()
        sample = digest_sample(cmds)
        check_sample(r, version, sample)  # read back at once: overlaps the encoding too
        sampled += len(sample)
        seconds["verify"] += time.perf_counter() - t
        say(f"  wrote {what} ({size / 1e6:.1f} MB)")

    pending = None
    with ThreadPoolExecutor(max_workers=1) as writer:
        t = time.perf_counter()
        for cmds in parts:
            seconds["encode"] += time.perf_counter() - t
            if len(cmds):
                if pending:
                    pending.result()  # in Redis now, so `used_memory` counts it
                size = command_bytes(cmds)
                what = f"{len(cmds):,} {KIND_NAMES.get(cmds.column('kind')[0].as_py(), '')} commands"
                _check_memory(r, size, f"the next {what} of version {version}")
                pending = writer.submit(write, cmds, what, size)
                expected.append(expected_keys(cmds))
                nbytes, ncommands = nbytes + size, ncommands + len(cmds)
            t = time.perf_counter()
        if pending:
            pending.result()
    return merge_expected(expected), nbytes, ncommands, sampled


def choose_engine(settings: Settings, as_of: dt.date, con) -> str:
    """The configured engine, or for `auto` duckdb up to `serving.duckdb_max_customers` customers in the
    day's segments and spark past them."""
    s = settings.serving
    if s.engine != "auto":
        return s.engine
    from p13n.lake.duck import scan

    customers = con.execute(
        f"SELECT count(*) FROM {scan(settings.lake_root, GOLD_SEGMENTS)} WHERE as_of_date = ?", [as_of]
    ).fetchone()[0]
    return "duckdb" if customers <= s.duckdb_max_customers else "spark"


def _publish_in_parts(settings, url, as_of, version, erased, con, lock, say):
    """Spark tasks encode and write the customers and items of their hash part in parallel (each with
    DuckDB over the Delta tables); the driver writes the version-wide keys and keeps the lock alive."""
    from p13n.serving.encode import version_wide
    from p13n.session import spark

    wide, reasons = version_wide(con, settings, as_of, version, erased)
    write_commands(url, command_batches(wide, settings.serving.batch_commands), lock, None, 1)
    from p13n.spark import default_parallelism

    session = spark()
    n = settings.serving.spark_parts or default_parallelism(session)
    say(f"version {version}: encoding and writing in {n} Spark tasks")
    stop = threading.Event()

    def keep_lock():
        while not stop.wait(lock.ttl_ms / 4000):
            lock.renew()

    threading.Thread(target=keep_lock, daemon=True).start()
    try:
        args = (settings, url, as_of, version, erased, reasons)

        def run_parts(
            batches,
        ):  # on the executors: one part per task (DataFrame API: works over Spark Connect)
            import pickle

            for batch in batches:
                for i in batch.column("part").to_pylist():
                    done = pickle.dumps(publish_part(*args, (i, n)))
                    yield pa.RecordBatch.from_pydict(
                        {"result": [done]}, schema=pa.schema([("result", pa.binary())])
                    )

        import pickle

        parts_df = session.range(0, n, 1, n).selectExpr("cast(id as int) as part")
        results = [
            pickle.loads(row.result) for row in parts_df.mapInArrow(run_parts, "result binary").collect()
        ]
    finally:
        stop.set()
    parts = [expected_keys(wide)]
    parts += [{k: set(v) if isinstance(v, list) else v for k, v in x["expected"].items()} for x in results]
    sample = digest_sample(wide) + [tuple(kd) for x in results for kd in x["sample"]]
    nbytes = command_bytes(wide) + sum(x["bytes"] for x in results)
    return merge_expected(parts), sample, nbytes, len(wide) + sum(x["commands"] for x in results)


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def _check_memory(r, nbytes: int, what: str = "the new version") -> None:
    """Refuse to write `what` when it would not fit under Redis' maxmemory next to what is there."""
    info = r.info("memory")
    limit = int(info.get("maxmemory", 0))
    # Redis' overhead per key and field: about 1.5x the protocol bytes, measured on this keyspace.
    need = int(nbytes * 1.5)
    if limit and info["used_memory"] + need > limit:
        raise PublishError(
            f"{what} needs about {need / 1e6:.1f} MB and Redis has "
            f"{max(limit - info['used_memory'], 0) / 1e6:.1f} MB left under maxmemory; lower "
            f"serving.keep_versions or raise maxmemory"
        )


def delete_version(r, keys: Keys, version: str, status: str) -> int:
    """Delete a version's keys (UNLINK: freed in the background) and mark it."""
    n = 0
    batch = []
    for key in r.scan_iter(match=keys.prefix(version) + "*", count=10_000):
        batch.append(key)
        if len(batch) >= 5000:
            n += r.unlink(*batch)
            batch = []
    if batch:
        n += r.unlink(*batch)
    r.hset(keys.meta(version), mapping={"status": status, "deleted_at": _iso(time.time())})
    return n


def cleanup_abandoned(r, keys: Keys) -> list[str]:
    """Versions still `writing` or `verified` when no publish runs (we hold the lock): a crash's."""
    out = []
    for version in r.zrange(keys.versions, 0, -1):
        if r.hget(keys.meta(version), "status") in ("writing", "verified") and r.get(keys.live) != version:
            delete_version(r, keys, version, status="abandoned")
            out.append(version)
    return out


def enforce_retention(r, keys: Keys, keep: int) -> list[str]:
    """Keep the live version and the newest retained ones, `keep` in all; delete older ones."""
    live = r.get(keys.live)
    complete = [
        v for v in r.zrevrange(keys.versions, 0, -1) if r.hget(keys.meta(v), "status") in ("live", "retained")
    ]
    kept = [live] + [v for v in complete if v != live][: keep - 1]
    out = []
    for version in complete:
        if version not in kept:
            delete_version(r, keys, version, status="expired")
            out.append(version)
    return out


# --- operations ------------------------------------------------------------------------------------


def rollback(url: str, settings: Settings, to: str | None = None) -> tuple[str, str]:
    """Make `to` (default: the newest retained version older than the live one) live again."""
    keys = Keys(settings.serving.namespace)
    r = client(url)
    live = r.get(keys.live)
    if live is None:
        raise PublishError("nothing is live: there is nothing to roll back")
    if to is None:
        created = r.zscore(keys.versions, live) or float("inf")
        older = [
            v
            for v in r.zrevrangebyscore(keys.versions, f"({created}", "-inf")
            if r.hget(keys.meta(v), "status") == "retained"
        ]
        if not older:
            raise PublishError(f"no retained version older than the live {live} to roll back to")
        to = older[0]
    import redis

    try:
        previous = r.eval(_SWITCH, 2, keys.live, keys.meta(to), to, _iso(time.time()), f"{keys.ns}:meta:")
    except redis.exceptions.ResponseError as exc:
        raise PublishError(f"cannot roll back to {to}: {exc}") from None
    r.hset(keys.meta(to), "rolled_back_from", previous or "")
    return previous, to


def status(url: str, settings: Settings) -> dict:
    """The live version and every version Redis remembers, newest first."""
    keys = Keys(settings.serving.namespace)
    r = client(url)
    versions = []
    for v in r.zrevrange(keys.versions, 0, -1):
        meta = r.hgetall(keys.meta(v))
        versions.append({"version": v, **meta})
    info = r.info("memory")
    return {
        "live": r.get(keys.live),
        "versions": versions,
        "used_memory": info.get("used_memory_human"),
        "lock": r.get(keys.lock),
    }
