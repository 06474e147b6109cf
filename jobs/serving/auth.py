"""Who may call the read API: API keys with scopes, and a rate per client.

Keys come from the environment (`serving.api.clients.<name>.key_env`); locally a client whose variable
is unset gets a random key kept owner-only in `<data_dir>/secrets/api-<name>.key`, and production
(`env: prod`) leaves such a client out. A request names its key in `X-API-Key` or `Authorization:
Bearer`; the key is compared in constant time by its SHA-256. Each client has a token bucket per
worker: past its rate the answer is 429 with `Retry-After`.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass

from p13n.config import Settings


@dataclass
class Client:
    name: str
    scopes: frozenset[str]
    rate: float
    burst: int
    tokens: float = 0.0
    at: float = 0.0

    def take(self) -> float:
        """0 when the request may go, else the seconds until a token is free."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class Denied(Exception):
    def __init__(self, status: int, detail: str, retry_after: float | None = None):
        super().__init__(detail)
        self.status, self.detail, self.retry_after = status, detail, retry_after

    @property
    def headers(self) -> dict[str, str]:
        out = {"WWW-Authenticate": "Bearer"} if self.status == 401 else {}
        if self.retry_after is not None:
            out["Retry-After"] = str(max(1, round(self.retry_after + 0.5)))
        return out


def client_keys(settings: Settings) -> dict[str, str]:
    """Client name -> key, from the environment (locally: made once when unset)."""
    from p13n.secrets import check_production_secret, local_secret

    out = {}
    for name, client in settings.serving.api.clients.items():
        key = os.environ.get(client.key_env, "").strip()
        if key and settings.env == "prod":
            check_production_secret(client.key_env, key)
        if not key and settings.env != "prod":
            key = local_secret(settings, f"api-{name}.key")
        if key:
            out[name] = key
    return out


class Auth:
    def __init__(self, settings: Settings):
        api = settings.serving.api
        self.enabled = api.auth
        self.clients: dict[bytes, Client] = {}
        if self.enabled:
            for name, key in client_keys(settings).items():
                c = api.clients[name]
                self.clients[_digest(key)] = Client(
                    name, frozenset(c.scopes), c.rate_per_second, c.burst, tokens=c.burst, at=time.monotonic()
                )

    def check(self, api_key: str | None, authorization: str | None, scope: str) -> str | None:
        """The client's name (None with auth off), else `Denied` (401, 403 or 429)."""
        if not self.enabled:
            return None
        key = api_key or ""
        if not key and authorization and authorization[:7].lower() == "bearer ":
            key = authorization[7:].strip()
        if not key:
            raise Denied(401, "an API key is required (X-API-Key or Authorization: Bearer)")
        client = self.clients.get(_digest(key))
        if client is None:
            raise Denied(401, "unknown API key")
        if scope not in client.scopes:
            raise Denied(403, f"client {client.name!r} has no {scope!r} scope")
        wait = client.take()
        if wait:
            raise Denied(
                429, f"client {client.name!r} is over its rate ({client.rate:g}/s)", retry_after=wait
            )
        return client.name


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def headers_for(settings: Settings, client: str = "internal") -> dict[str, str]:
    """The header a client sends (tests, benches, `p13n serve`'s example): `X-API-Key: <its key>`."""
    return {"X-API-Key": client_keys(settings)[client]}
