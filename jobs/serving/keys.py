"""The serving keyspace in Redis and its compact value encoding, shared by the publisher and the API.

Every published version lives under its own prefix; one pointer says which version is live:

    {ns}:live                     STRING  the live version id ("20240301.7")
    {ns}:versions                 ZSET    every version, scored by creation time
    {ns}:meta:{v}                 HASH    status, as_of_date, counts, timings of version v
    {ns}:lock                     STRING  the publisher's lock ("host:pid:token"), with a TTL
    {ns}:exposures                STREAM  experiment exposures logged by the API
    {ns}:v:{v}:c:{customer_id}    HASH    one field per list type, plus `profile` (JSON)
    {ns}:v:{v}:i:{sku}            HASH    similar, bought_together
    {ns}:v:{v}:l:{kind}           HASH    trending and popular lists, one field per scope
    {ns}:v:{v}:x:{key_type}       HASH    source-system id -> customer id
    {ns}:v:{v}:s:{segment}        LIST    the customer ids of a segment, for paging
    {ns}:v:{v}:segments           HASH    segment -> member count
    {ns}:v:{v}:reasons            HASH    reason id -> JSON [source, reason]

A list value is `sku,score_milli,reason_id` entries joined by `;`: scores as integer thousandths and
reasons as ids into the version's reason table keep a 20-item list near 400 bytes instead of the
~1.5 KB of JSON objects, with no compression to undo on the read path.
"""

from __future__ import annotations

from dataclasses import dataclass

CUSTOMER_LISTS = ("personalized", "buy_again", "recently_viewed", "popular_in_segment")
ITEM_LISTS = {"similar": "similar", "bought-together": "bought_together"}
STATUSES = ("writing", "verified", "live", "retained", "failed", "abandoned", "expired")


@dataclass(frozen=True)
class Keys:
    ns: str

    @property
    def live(self) -> str:
        return f"{self.ns}:live"

    @property
    def versions(self) -> str:
        return f"{self.ns}:versions"

    @property
    def lock(self) -> str:
        return f"{self.ns}:lock"

    @property
    def exposures(self) -> str:
        return f"{self.ns}:exposures"

    @property
    def seq(self) -> str:
        return f"{self.ns}:seq"

    def meta(self, version: str) -> str:
        return f"{self.ns}:meta:{version}"

    def prefix(self, version: str) -> str:
        return f"{self.ns}:v:{version}:"

    def customer(self, version: str, customer_id: str) -> str:
        return f"{self.ns}:v:{version}:c:{customer_id}"

    def item(self, version: str, sku: str) -> str:
        return f"{self.ns}:v:{version}:i:{sku}"

    def lists(self, version: str, kind: str) -> str:
        return f"{self.ns}:v:{version}:l:{kind}"

    def lookup(self, version: str, key_type: str) -> str:
        return f"{self.ns}:v:{version}:x:{key_type}"

    def segment(self, version: str, name: str) -> str:
        return f"{self.ns}:v:{version}:s:{name}"

    def segments(self, version: str) -> str:
        return f"{self.ns}:v:{version}:segments"

    def reasons(self, version: str) -> str:
        return f"{self.ns}:v:{version}:reasons"


def decode_list(raw: bytes | str | None, reasons: dict[str, tuple[str, str | None]], k: int) -> list[dict]:
    """`sku,score_milli,rid;...` -> the first k items as dicts (sku, score, source, reason)."""
    if not raw:
        return []
    text = raw.decode() if isinstance(raw, bytes) else raw
    out = []
    for entry in text.split(";", k)[:k]:
        sku, score, rid = entry.split(",")
        source, reason = reasons.get(rid, (None, None))
        out.append({"sku": sku, "score": int(score) / 1000, "source": source, "reason": reason})
    return out
