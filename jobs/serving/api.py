"""The read API: precomputed recommendations, item lists, profiles and segments from Redis.

Shoppers never get a 500: an unknown customer or item, a missing list, Redis slow or down, all fall
back along a chain ending at the popular list, which every worker keeps in memory (and on disk, for
a start while Redis is down). Each response says which version served it and which fallback, if any.

The two hot paths (customer recommendations, item lists) are answered by a thin ASGI layer in front of
FastAPI when their query is well-formed, skipping FastAPI's per-request parameter machinery (which
halves the throughput); anything else, errors included, goes through FastAPI, which also serves the
OpenAPI document (`/openapi.json`, `/docs`). Both call the same `Store` methods.
"""

from __future__ import annotations

import asyncio
import gc
import json
import re
import time
from collections.abc import Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Annotated
from urllib.parse import parse_qsl

import orjson
from fastapi import Depends, FastAPI, HTTPException, Query, Security
from fastapi import Path as PathParam
from fastapi.responses import Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from p13n.config import Settings, get_settings
from p13n.serving.auth import Auth, Denied
from p13n.serving.experiments import GLOBAL_SALT, Assignment, assign_first, in_holdout
from p13n.serving.keys import CUSTOMER_LISTS, ITEM_LISTS, Keys, decode_list

API_VERSION = "1.0"
LIST_TYPES = (*CUSTOMER_LISTS, "popular")
# Where the list falls back to when the requested one is missing, in order.
FALLBACKS = {
    "personalized": ("popular_in_segment", "popular"),
    "popular_in_segment": ("popular",),
    "buy_again": (),
    "recently_viewed": (),
    "popular": (),
}


class Item(BaseModel):
    sku: str
    score: float
    source: str | None = None
    reason: str | None = None


class Experiment(BaseModel):
    name: str
    arm: str


class Recommendations(BaseModel):
    customer_id: str
    type: str
    served_type: str
    version: str | None
    fallback: str | None = None
    experiment: Experiment | None = None
    items: list[Item]


class ItemList(BaseModel):
    sku: str
    type: str
    version: str | None
    fallback: str | None = None
    items: list[Item]


class Profile(BaseModel):
    customer_id: str
    version: str
    segment: str | None = None
    rfm_segment: str | None = None
    lifecycle_stage: str | None = None
    clv_tier: str | None = None
    churn_band: str | None = None
    consents: dict[str, str] = {}
    best_send_time: dict | None = None


class SegmentPage(BaseModel):
    segment: str
    version: str
    total: int
    page: int
    page_size: int
    customer_ids: list[str]
    next_page: int | None


class NamedList(BaseModel):
    type: str
    scope: str
    version: str | None
    fallback: str | None = None
    items: list[Item]


class SegmentSizes(BaseModel):
    version: str
    segments: dict[str, int]


class Lookup(BaseModel):
    key_type: str
    source_id: str
    customer_id: str


class Health(BaseModel):
    status: str
    redis: bool
    version: str | None
    as_of_date: str | None
    live_at: str | None
    breaker_trips: int = 0  # this worker's: times Redis was given up on for redis_retry_seconds


class VersionInfo(Health):
    api_version: str


class Problem(BaseModel):
    detail: str


ERRORS = {
    401: {"model": Problem},
    403: {"model": Problem},
    404: {"model": Problem},
    429: {"model": Problem},
    503: {"model": Problem},
}


# Module level: the dependencies' annotations are evaluated in this module's namespace.
KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="a client's API key")
BEARER = HTTPBearer(auto_error=False, description="the same key as a bearer token")


class RedisDown(Exception):
    """Redis is unreachable or too slow: the worker serves fallbacks for `redis_retry_seconds`."""


class RedisRefused(Exception):
    """Redis answered this one request with an error: that request fails (503), nothing else does."""


# An exposure is logged only for a customer of the live version: erased and made-up ids leave no trace.
_EXPOSE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 2))
end
return false
"""


class Store:
    """Reads one live version from Redis, with the fallbacks and caches the API needs."""

    def __init__(
        self,
        settings: Settings,
        url: str,
        cache_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
    ):
        """`clock`: the time exposures are stamped with (the demo's storefront browses a past date)."""
        import redis.asyncio as aioredis

        api = settings.serving.api
        self.settings, self.api = settings, api
        self.keys = Keys(settings.serving.namespace)
        timeout = api.redis_timeout_ms / 1000
        self.r = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, max_connections=64
        )
        self.cache_file = (cache_dir or settings.data_dir / "serving") / f"{self.keys.ns}-popular.json"
        self._live: tuple[str | None, float] = (None, 0.0)
        self._reasons: dict[str, dict] = {}
        self._popular: tuple[str | None, list[dict]] = (None, [])
        self._down_until = 0.0
        self._failures = 0  # consecutive outage-like failures; the breaker opens at api.breaker_failures
        self.trips = 0  # how often it opened (in /health)
        self._lists: dict[tuple[str, str], dict] = {}  # the last good named lists, for Redis outages
        self.experiments = settings.serving.experiments
        self.clock = clock

    # --- plumbing ---
    async def _call(self, coro):
        if time.monotonic() < self._down_until:
            coro.close()
            raise RedisDown
        import redis

        try:
            return await coro
        except (
            redis.exceptions.ResponseError
        ) as exc:  # this request's error (e.g. an argument), not an outage
            raise RedisRefused(str(exc)) from exc
        except Exception as exc:  # timeouts, refused connections, a server going away
            if isinstance(exc, redis.exceptions.RedisError | OSError | asyncio.TimeoutError):
                # One slow call under load is that request's fallback; only consecutive failures
                # (a server that is gone answers each at once) open the breaker for everyone.
                self._failures += 1
                if self._failures >= self.api.breaker_failures:
                    self._down_until = time.monotonic() + self.api.redis_retry_seconds
                    self._failures = 0
                    self.trips += 1
                raise RedisDown from exc
            raise

    async def live(self) -> str:
        version, at = self._live
        if version is not None and time.monotonic() - at < self.api.pointer_cache_seconds:
            return version
        got = await self._call(self.r.get(self.keys.live))
        if got is None:
            raise RedisDown  # nothing published yet: serve the fallback
        version = got.decode()
        self._live = (version, time.monotonic())
        if version not in self._reasons:
            raw = await self._call(self.r.hgetall(self.keys.reasons(version)))
            # Keep the previous versions' tables too: a request that read the old pointer just before
            # a switch or rollback still decodes its list with that version's reasons.
            recent = dict(list(self._reasons.items())[-2:])
            self._reasons = {**recent, version: {k.decode(): tuple(json.loads(v)) for k, v in raw.items()}}
        return version

    def reasons(self, version: str) -> dict:
        return self._reasons.get(version, {})

    async def popular(self, version: str | None = None) -> tuple[str | None, list[dict]]:
        """The overall popular list (max_k items): from Redis when it answers, else the cached copy."""
        cached_version, items = self._popular
        if version is not None and cached_version == version:
            return version, items
        try:
            version = version or await self.live()
            raw = await self._call(self.r.hget(self.keys.lists(version, "popular"), "all"))
            items = decode_list(raw, self.reasons(version), self.api.max_k)
            self._popular = (version, items)
            self._save_popular()
            return version, items
        except RedisDown:
            if not items:
                self._popular = items_from_file(self.cache_file)
            return self._popular

    def _save_popular(self) -> None:
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_file.with_suffix(".tmp")
            tmp.write_bytes(orjson.dumps({"version": self._popular[0], "items": self._popular[1]}))
            tmp.replace(self.cache_file)
        except OSError:
            pass  # the in-memory copy still serves

    # --- reads ---
    async def recommendations(self, customer_id: str, list_type: str, k: int) -> dict:
        share = self.settings.activation.global_holdout
        if self.api.global_holdout and in_holdout(GLOBAL_SALT, share, customer_id):
            assignment = Assignment("global_holdout", "holdout", "popular")
        else:
            assignment = assign_first(self.experiments, customer_id, list_type)
        served = assignment.list_type if assignment else list_type
        out = {
            "customer_id": customer_id,
            "type": list_type,
            "served_type": served,
            "version": None,
            "fallback": None,
            "experiment": {"name": assignment.experiment, "arm": assignment.arm} if assignment else None,
            "items": [],
        }
        try:
            version = await self.live()
            out["version"] = version
            chain = (served, *FALLBACKS.get(served, ()))
            fields = [t for t in chain if t != "popular"]
            pipe = self.r.pipeline(transaction=False)
            customer_key = self.keys.customer(version, customer_id)
            pipe.hmget(customer_key, fields or ["profile"])
            # The real-time profile (p13n.streaming.realtime): the cart, and what was just viewed.
            rt = f"{self.keys.ns}:rt:{customer_id}"
            pipe.zrange(f"{rt}:cart", 0, -1)
            pipe.zrevrange(f"{rt}:viewed", 0, -1)
            replies = await self._call(pipe.execute())
            values = dict(zip(fields, replies[0], strict=True)) if fields else {}
            in_cart = {c.decode() for c in replies[1]}
            viewed = [v.decode() for v in replies[2]]
            for i, t in enumerate(chain):
                if t == "popular":
                    _, items = await self.popular(version)
                else:
                    items = decode_list(values.get(t), self.reasons(version), k + len(in_cart) + len(viewed))
                if t == "recently_viewed" and viewed:
                    items = [
                        {"sku": v, "score": 1.0, "source": "recently_viewed", "reason": None} for v in viewed
                    ] + [x for x in items if x["sku"] not in set(viewed)]
                items = [x for x in items if x["sku"] not in in_cart][:k]  # never what is already in the cart
                if items or not FALLBACKS.get(served):
                    out["items"] = items
                    if i:
                        out["fallback"] = (
                            "unknown_customer" if not any(values.values()) else f"no_{served}_list"
                        )
                    break
        except (RedisDown, RedisRefused):
            out["version"], items = self._popular
            out["fallback"] = "redis_unavailable"
            out["items"] = items[:k] if FALLBACKS.get(served) or served == "popular" else []
            return out
        if assignment and self.api.log_exposures and assignment.experiment != "global_holdout":
            await self._expose(assignment, customer_id, served, out)
        return out

    async def _expose(self, assignment, customer_id: str, served: str, out: dict) -> None:
        """Append the exposure (with the items served) to the stream; a Redis failure now loses this
        one exposure, never the answer."""
        fields = {
            "experiment": assignment.experiment,
            "arm": assignment.arm,
            "customer_id": customer_id,
            "list_type": served,
            "version": out["version"],
            "items": ",".join(x["sku"] for x in out["items"]),
            "fallback": out["fallback"] or "",
            "ts": f"{self.clock():.3f}",
        }
        with suppress(RedisDown, RedisRefused):
            await self._call(
                self.r.eval(
                    _EXPOSE,
                    2,
                    self.keys.customer(out["version"], customer_id),
                    self.keys.exposures,
                    1_000_000,
                    *(x for kv in fields.items() for x in kv),
                )
            )

    async def item_list(self, sku: str, kind: str, k: int) -> dict:
        out = {"sku": sku, "type": kind, "version": None, "fallback": None, "items": []}
        try:
            version = await self.live()
            out["version"] = version
            raw = await self._call(self.r.hget(self.keys.item(version, sku), ITEM_LISTS[kind]))
            out["items"] = decode_list(raw, self.reasons(version), k)
            if not out["items"]:
                _, items = await self.popular(version)
                out["items"], out["fallback"] = [i for i in items if i["sku"] != sku][:k], "popular"
        except (RedisDown, RedisRefused):
            out["version"], items = self._popular
            out["items"], out["fallback"] = [i for i in items if i["sku"] != sku][:k], "redis_unavailable"
        return out

    async def profile(self, customer_id: str) -> dict | None:
        version = await self.live()
        raw = await self._call(self.r.hget(self.keys.customer(version, customer_id), "profile"))
        return None if raw is None else {"customer_id": customer_id, "version": version, **json.loads(raw)}

    async def segment(self, name: str, page: int, size: int) -> dict | None:
        version = await self.live()
        total = await self._call(self.r.hget(self.keys.segments(version), name))
        if total is None:
            return None
        start = (page - 1) * size
        ids = await self._call(self.r.lrange(self.keys.segment(version, name), start, start + size - 1))
        total = int(total)
        return {
            "segment": name,
            "version": version,
            "total": total,
            "page": page,
            "page_size": size,
            "customer_ids": [i.decode() for i in ids],
            "next_page": page + 1 if start + size < total else None,
        }

    async def segments(self) -> dict:
        version = await self.live()
        raw = await self._call(self.r.hgetall(self.keys.segments(version)))
        return {"version": version, "segments": {k.decode(): int(v) for k, v in sorted(raw.items())}}

    async def lookup(self, key_type: str, source_id: str) -> dict | None:
        version = await self.live()
        cid = await self._call(self.r.hget(self.keys.lookup(version, key_type), source_id))
        return (
            None
            if cid is None
            else {"key_type": key_type, "source_id": source_id, "customer_id": cid.decode()}
        )

    async def named_list(self, kind: str, scope: str, k: int) -> dict | None:
        """A trending or popular list; while Redis is down, the last one this worker served (the
        overall popular list always: it is kept on disk too), marked `fallback: redis_unavailable`."""
        try:
            version = await self.live()
            raw = await self._call(self.r.hget(self.keys.lists(version, kind), scope))
        except RedisDown:
            if (kind, scope) == ("popular", "all") and self._popular[1]:
                version, items = self._popular
                return {
                    "type": kind,
                    "scope": scope,
                    "version": version,
                    "fallback": "redis_unavailable",
                    "items": items[:k],
                }
            cached = self._lists.get((kind, scope))
            if cached is None:
                raise
            return cached | {"items": cached["items"][:k], "fallback": "redis_unavailable"}
        if raw is None:
            return None
        full = decode_list(raw, self.reasons(version), self.api.max_k)
        if len(self._lists) < 1000 or (kind, scope) in self._lists:
            self._lists[(kind, scope)] = {"type": kind, "scope": scope, "version": version, "items": full}
        return {"type": kind, "scope": scope, "version": version, "fallback": None, "items": full[:k]}

    async def health(self) -> dict:
        try:
            await self._call(self.r.ping())
            version = await self.live()
            meta = await self._call(self.r.hgetall(self.keys.meta(version)))
            meta = {k.decode(): v.decode() for k, v in meta.items()}
            return {
                "status": "ok",
                "redis": True,
                "version": version,
                "as_of_date": meta.get("as_of_date"),
                "live_at": meta.get("live_at"),
                "breaker_trips": self.trips,
            }
        except RedisDown:
            cached = self._popular[0]
            return {
                "status": "degraded",
                "redis": False,
                "version": cached,
                "as_of_date": None,
                "live_at": None,
                "breaker_trips": self.trips,
            }


def items_from_file(path: Path) -> tuple[str | None, list[dict]]:
    try:
        data = orjson.loads(path.read_bytes())
        return data["version"], data["items"]
    except (OSError, ValueError, KeyError):
        return None, []


def create_app(settings: Settings | None = None, url: str | None = None, fast_path: bool = True):
    """The API application (uvicorn: `p13n.serving.api:create_app`, factory)."""
    settings = settings or get_settings()
    url = url or settings.serving.redis_url
    if not url:
        raise RuntimeError("serving.redis_url is empty: `p13n serve` starts the embedded Redis and sets it")
    api = settings.serving.api
    store = Store(settings, url)
    auth = Auth(settings)

    def scope(name: str):
        async def check(
            key: Annotated[str | None, Security(KEY_HEADER)] = None,
            token: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None,
        ):
            try:
                auth.check(key, f"Bearer {token.credentials}" if token else None, name)
            except Denied as e:
                raise HTTPException(e.status, e.detail, headers=e.headers) from None

        return Depends(check)

    shopper, internal = [scope("shopper")], [scope("internal")]
    ident = {"min_length": 1, "max_length": 128, "pattern": ID_PATTERN}

    @asynccontextmanager
    async def lifespan(_app):
        await store.popular()  # warm the fallback (from Redis, else the copy on disk)
        # Long-lived objects out of the collector's way, and fewer young-generation passes: the
        # collector's pauses are what a p99 under load is made of.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)
        yield
        await store.r.aclose()

    app = FastAPI(
        lifespan=lifespan,
        title="p13n serving API",
        version=API_VERSION,
        description="Precomputed recommendations, item lists, customer profiles and segments. Customer ids "
        "are p13n's stable ids (`/v1/lookup` maps source-system ids to them); no contact data is served.",
    )
    app.state.store = store

    @app.get(
        "/v1/customers/{customer_id}/recommendations",
        response_model=Recommendations,
        tags=["customers"],
        dependencies=shopper,
        responses=ERRORS,
    )
    async def recommendations(
        customer_id: str = PathParam(examples=["C000000001"], **ident),
        type: str = Query("personalized", pattern="^(" + "|".join(LIST_TYPES) + ")$"),
        k: int = Query(api.default_k, ge=1, le=api.max_k),
    ):
        """A customer's list. An experiment may serve another list type (see `served_type`, `experiment`)."""
        return _json(await store.recommendations(customer_id, type, k))

    @app.get(
        "/v1/items/{sku}/similar",
        response_model=ItemList,
        tags=["items"],
        dependencies=shopper,
        responses=ERRORS,
    )
    async def similar(
        sku: str = PathParam(examples=["SKU-000001"], **ident),
        k: int = Query(api.default_k, ge=1, le=api.max_k),
    ):
        """Items similar to `sku`: by co-interaction, then content for new or sparse items."""
        return _json(await store.item_list(sku, "similar", k))

    @app.get(
        "/v1/items/{sku}/bought-together",
        response_model=ItemList,
        tags=["items"],
        dependencies=shopper,
        responses=ERRORS,
    )
    async def bought_together(
        sku: str = PathParam(examples=["SKU-000001"], **ident),
        k: int = Query(api.default_k, ge=1, le=api.max_k),
    ):
        """Items often in the same order as `sku` (by confidence, lift > 1)."""
        return _json(await store.item_list(sku, "bought-together", k))

    @app.get(
        "/v1/customers/{customer_id}/profile",
        response_model=Profile,
        tags=["customers"],
        dependencies=internal,
        responses=ERRORS,
    )
    async def profile(customer_id: str = PathParam(examples=["C000000001"], **ident)):
        """Segment, lifecycle stage, CLV tier, churn band, channel consents and best send time."""
        return _found(
            await _or_503(store.profile(customer_id)), f"no customer {customer_id} in the live version"
        )

    @app.get(
        "/v1/segments",
        response_model=SegmentSizes,
        tags=["segments"],
        dependencies=internal,
        responses=ERRORS,
    )
    async def segments():
        """Every segment of the live version with its size."""
        return await _or_503(store.segments())

    @app.get(
        "/v1/segments/{name}",
        response_model=SegmentPage,
        tags=["segments"],
        dependencies=internal,
        responses=ERRORS,
    )
    async def segment(
        name: str = PathParam(examples=["lifecycle.active"], **ident),
        page: int = Query(1, ge=1, le=api.max_page),
        page_size: int = Query(api.page_size, ge=1, le=api.max_page_size),
    ):
        """The customer ids of a segment (`persona.*`, `rfm.*`, `lifecycle.*`, `churn.*`), a page at a
        time."""
        return _found(
            await _or_503(store.segment(name, page, page_size)),
            f"no segment {name!r} in the live version (GET /v1/segments lists them)",
        )

    @app.get(
        "/v1/lists/{kind}", response_model=NamedList, tags=["lists"], dependencies=shopper, responses=ERRORS
    )
    async def named_list(
        kind: str = PathParam(pattern="^(trending|popular)$"),
        scope: str = Query("all", **ident),
        k: int = Query(api.default_k, ge=1, le=api.max_k),
    ):
        """Trending (overall or per category) and popular (overall or per persona) lists."""
        return _found(await _or_503(store.named_list(kind, scope, k)), f"no {kind} list for scope {scope!r}")

    @app.get(
        "/v1/lookup/{key_type}/{source_id}",
        response_model=Lookup,
        tags=["customers"],
        dependencies=internal,
        responses=ERRORS,
    )
    async def lookup(
        key_type: str = PathParam(examples=["shopify_customer_id"], **ident),
        source_id: str = PathParam(examples=["700001"], **ident),
    ):
        """The p13n customer id of a source-system id (e.g. `shopify_customer_id`)."""
        if key_type not in settings.serving.lookup_key_types:
            raise HTTPException(
                404, f"unknown key type {key_type!r}; known: {settings.serving.lookup_key_types}"
            )
        return _found(
            await _or_503(store.lookup(key_type, source_id)), f"no customer with {key_type} {source_id}"
        )

    @app.get("/health", response_model=Health, tags=["ops"])
    async def health():
        """`ok`, or `degraded` while Redis is unreachable (lists are then served from the cached popular
        list)."""
        return await store.health()

    @app.get("/version", response_model=VersionInfo, tags=["ops"])
    async def version():
        """The API version and the live data version."""
        return {"api_version": API_VERSION, **(await store.health())}

    return FastPath(app, store, api, auth) if fast_path else app


def _json(body: dict) -> Response:
    """A pre-serialized response: the documented model describes it, orjson writes it."""
    return Response(orjson.dumps(body), media_type="application/json")


def _found(value, missing: str):
    """`value`, or a 404 saying what is missing."""
    if value is None:
        raise HTTPException(404, missing)
    return value


async def _or_503(coro):
    try:
        return await coro
    except (RedisDown, RedisRefused):
        raise HTTPException(
            503, "the serving store is unavailable; retry shortly", headers={"Retry-After": "2"}
        ) from None


ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$"  # ids, SKUs, segment and scope names
_CUSTOMER = re.compile(r"^/v1/customers/([A-Za-z0-9][A-Za-z0-9._:@+-]{0,127})/recommendations$")
_ITEM = re.compile(r"^/v1/items/([A-Za-z0-9][A-Za-z0-9._:@+-]{0,127})/(similar|bought-together)$")
_JSON = [(b"content-type", b"application/json")]


class FastPath:
    """ASGI layer answering well-formed hot reads directly; everything else goes to FastAPI."""

    def __init__(self, app, store: Store, api, auth: Auth):
        self.app, self.store, self.api, self.auth = app, store, api, auth
        self.openapi = app.openapi  # for clients of the wrapped app (tests, `p13n serve --openapi`)
        self.state = app.state

    def _k(self, query: dict) -> int | None:
        raw = query.get("k")
        if raw is None:
            return self.api.default_k
        ok = raw.isascii() and raw.isdigit() and len(raw) <= 6  # not `²`, not 5,000 digits
        return int(raw) if ok and 1 <= int(raw) <= self.api.max_k else None

    def _allowed(self, scope) -> bool:
        """Whether the request's key may read shopper lists; anything else goes to FastAPI's answer."""
        if not self.auth.enabled:
            return True
        headers = dict(scope["headers"])
        try:
            key = headers.get(b"x-api-key", b"").decode("latin-1") or None
            self.auth.check(key, headers.get(b"authorization", b"").decode("latin-1") or None, "shopper")
        except Denied:
            return False
        return True

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "GET":
            path = scope["path"]
            query = dict(parse_qsl(scope["query_string"].decode(), keep_blank_values=True))
            body = None
            m = _CUSTOMER.match(path)
            if (m or _ITEM.match(path)) and not self._allowed(scope):
                m = None  # FastAPI answers 401/403/429 with the reason
                path = ""
            if m and set(query) <= {"type", "k"}:
                list_type, k = query.get("type", "personalized"), self._k(query)
                if k is not None and list_type in LIST_TYPES:
                    body = await self.store.recommendations(m.group(1), list_type, k)
            elif (m := _ITEM.match(path)) and set(query) <= {"k"}:
                k = self._k(query)
                if k is not None:
                    body = await self.store.item_list(m.group(1), m.group(2), k)
            if body is not None:
                await send({"type": "http.response.start", "status": 200, "headers": _JSON})
                await send({"type": "http.response.body", "body": orjson.dumps(body)})
                return
        await self.app(scope, receive, send)
