"""Real-time profiles in Redis, updated from each micro-batch within seconds of the events.

Beside the nightly versioned keyspace (not inside it, so a publish or rollback never drops them):

    {ns}:rt:{customer_id}           HASH   last_activity_at, last_event_type, last_channel, session_id,
                                           session_started_at
    {ns}:rt:{customer_id}:viewed    ZSET   sku -> time of the latest view (the newest `recently_viewed` kept)
    {ns}:rt:{customer_id}:cart      ZSET   sku -> time added; removals and purchases take items out
    {ns}:rt:{customer_id}:session   ZSET   event id -> time, for the current session (its size: events)

Every update is idempotent (sets keyed by sku or event id, timestamps only move forward), so a
micro-batch replayed after a crash leaves the same state: the updates run before the batch's Delta
commit, making the profiles at least once and, by idempotence, effectively exactly once.

Events are attributed to customers through the live serving version's lookups (source-system id →
customer id); events of unknown or anonymous visitors are counted and skipped.
"""

from __future__ import annotations

import datetime as dt
import time

from p13n.config import Settings
from p13n.serving.keys import Keys

# Applied per event, in time order: (customer key, event id, type, sku, epoch seconds, session, channel)
_APPLY = """
local base, viewed, cart, sess = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local keep, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local n = 0
for i = 3, #ARGV, 6 do
  local eid, etype, sku = ARGV[i], ARGV[i+1], ARGV[i+2]
  local ts, session, channel = tonumber(ARGV[i+3]), ARGV[i+4], ARGV[i+5]
  local last = tonumber(redis.call('HGET', base, 'last_activity_at') or '0')
  if ts >= last then
    redis.call('HSET', base, 'last_activity_at', ts, 'last_event_type', etype, 'last_channel', channel)
  end
  if session ~= '' and redis.call('HGET', base, 'session_id') ~= session and ts >= last then
    redis.call('HSET', base, 'session_id', session, 'session_started_at', ts)
    redis.call('DEL', sess)
  end
  if session ~= '' and redis.call('HGET', base, 'session_id') == session then
    redis.call('ZADD', sess, ts, eid)
  end
  if sku ~= '' then
    if etype == 'product_view' then
      local seen = tonumber(redis.call('ZSCORE', viewed, sku) or '0')
      if ts > seen then redis.call('ZADD', viewed, ts, sku) end
      redis.call('ZREMRANGEBYRANK', viewed, 0, -keep - 1)
    elseif etype == 'add_to_cart' then
      redis.call('ZADD', cart, 'GT', ts, sku)
    elseif etype == 'remove_from_cart' then
      local added = tonumber(redis.call('ZSCORE', cart, sku) or '-1')
      if added >= 0 and added <= ts then redis.call('ZREM', cart, sku) end
    end
  end
  if etype == 'purchase' then
    redis.call('ZREMRANGEBYSCORE', cart, '-inf', ts)
  end
  n = n + 1
end
for _, k in ipairs(KEYS) do redis.call('EXPIRE', k, ttl) end
return n
"""


class RealtimeProfiles:
    """Applies landed events to the real-time keys of their customers."""

    def __init__(self, settings: Settings, url: str):
        import redis

        self.settings = settings
        self.keys = Keys(settings.serving.namespace)
        self.r = redis.Redis.from_url(url, decode_responses=True)
        self._apply = self.r.register_script(_APPLY)
        self.unresolved = 0
        self.latencies_ms: list[float] = []

    def base(self, customer_id: str) -> str:
        return f"{self.keys.ns}:rt:{customer_id}"

    def resolve(self, source_ids: list[str]) -> dict[str, str]:
        """Source-system ids -> customer ids, through the live version's lookup."""
        live = self.r.get(self.keys.live)
        if not live or not source_ids:
            return {}
        ids = sorted(set(source_ids))
        found = self.r.hmget(self.keys.lookup(live, self.settings.stream.customer_key_type), ids)
        return {s: c for s, c in zip(ids, found, strict=True) if c}

    def apply(self, source, rows: list[dict], produced_ms: list[int] | None = None) -> int:
        """Update the profiles of the customers in `rows` (good bronze records of `source`)."""
        st = self.settings.stream
        field = st.customer_fields.get(source.name)
        if not field or not rows:
            return 0
        ids = self.resolve([r[field] for r in rows if r.get(field)])
        per_customer: dict[str, list] = {}
        for r in rows:
            cid = ids.get(r.get(field) or "")
            if not cid:
                self.unresolved += 1
                continue
            per_customer.setdefault(cid, []).append(r)
        pipe = self.r.pipeline(transaction=False)
        keep, ttl = st.recently_viewed, st.profile_ttl_days * 86400
        for cid, events in per_customer.items():
            args: list = [keep, ttl]
            for e in sorted(events, key=lambda e: e["event_at"]):
                args += [
                    e["event_id"],
                    e["event_type"],
                    e.get("sku") or "",
                    _epoch(e["event_at"]),
                    e.get("session_id") or e.get("device_id") or "",
                    source.name,
                ]
            base = self.base(cid)
            self._apply(
                keys=[base, f"{base}:viewed", f"{base}:cart", f"{base}:session"], args=args, client=pipe
            )
        pipe.execute()
        if produced_ms:
            now = time.time() * 1000
            self.latencies_ms += [now - p for p in produced_ms]
        return sum(len(v) for v in per_customer.values())


def _epoch(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def read_profile(r, ns: str, customer_id: str) -> dict:
    """A customer's real-time profile (what the API merges into its answers)."""
    base = f"{ns}:rt:{customer_id}"
    pipe = r.pipeline(transaction=False)
    pipe.hgetall(base)
    pipe.zrevrange(f"{base}:viewed", 0, -1)
    pipe.zrange(f"{base}:cart", 0, -1)
    pipe.zcard(f"{base}:session")
    head, viewed, cart, session_events = pipe.execute()
    return {"activity": head, "recently_viewed": viewed, "cart": cart, "session_events": session_events}
