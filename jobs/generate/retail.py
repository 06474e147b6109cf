"""`p13n generate`: a mid-size omnichannel retailer's data, every source as its system exports it.

Day by day, active customers shop (web, app, two store systems) according to their latent tastes,
purchase cadence, seasonality and promotions; they browse, open emails, return items, earn points,
write reviews and change consents. Each system records them in its own way (nicknames, email case,
phone formats, moved addresses, missing fields). The ground truth is kept apart under `truth/`:
who each source record really is, each person's latent traits, and every planted bad record.
Deterministic by seed; memory stays bounded because days are written as they are generated and a
day's records wait packed (`writers.Spool`) until then.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import random
import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from p13n.generate.people import (
    CATEGORIES,
    CITIES,
    Population,
    maybe,
    vary_email,
    vary_first,
    vary_last,
    vary_phone,
    vary_street,
)
from p13n.generate.writers import Spool, write_day
from p13n.sources.catalog import Catalog, Source

UTC = dt.UTC
BAD_KINDS = ("malformed", "wrong_type", "impossible", "missing_required", "duplicate")
N_STORES = 68
N_SQUARE_STORES = 40
ENGAGEMENT_HISTORY_DAYS = 28  # messaging history delivered at onboarding (purchases: all history_days)
KAFKA_DUMP_DIR = "_topics"
SNOWFLAKE_DUMP_DIR = "_warehouse"


@dataclass
class Truth:
    """The ground truth, written beside the landing zone and never read by the pipeline."""

    root: Path
    identity: list[tuple[str, str, str]] = field(default_factory=list)  # (source, record id, person id)
    bad: list[dict] = field(default_factory=list)

    def flush_identity(self) -> None:
        path = self.root / "identity.csv"
        new = not path.exists()
        with open(path, "a", newline="") as handle:
            w = csv.writer(handle)
            if new:
                w.writerow(["source", "record_id", "person_id"])
            w.writerows(self.identity)
        self.identity.clear()


@dataclass
class Catalogue:
    skus: list[str]
    category: np.ndarray  # index into CATEGORIES per SKU
    brand: list[str]
    price: np.ndarray
    by_category: dict[int, np.ndarray]


# Web sessions landing from a campaign: the share of sessions, and utm_medium's odds among them.
CAMPAIGN_SHARE = 0.3
CAMPAIGN_MEDIUMS = (
    ("cpc", 0.4),
    ("paid_social", 0.25),
    ("email", 0.2),
    ("display", 0.1),
    ("affiliate", 0.05),
)


def _campaign(session: str) -> str:
    """The landing URL's campaign parameters of a web session, or "" for an organic one: a function of
    the session id (the generator's random streams stay as they were)."""
    u = zlib.crc32(session.encode()) / 2**32
    if u >= CAMPAIGN_SHARE:
        return ""
    u /= CAMPAIGN_SHARE
    for medium, odds in CAMPAIGN_MEDIUMS:
        if u < odds:
            return f"?utm_source=p13n-demo&utm_medium={medium}&utm_campaign=spring-{medium}"
        u -= odds
    return ""


def _iso(ts: dt.datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _local(ts: dt.datetime, tz: str, fmt: str) -> str:
    return ts.astimezone(ZoneInfo(tz)).strftime(fmt)


class RetailGenerator:
    def __init__(
        self,
        catalog: Catalog,
        out: Path,
        customers: int,
        days: int,
        seed: int,
        start: dt.date,
        bad_rate: float,
        progress: Callable[[str], None] | None = None,
        history_days: int = 0,
        plant: np.ndarray | None = None,
    ):
        self.catalog, self.out, self.days, self.seed, self.start = catalog, out, days, seed, start
        # A planted effect: each person's purchase rate from day 1 on is multiplied by plant[person]
        # (a treatment's true lift, for p13n's measurement to recover). Day 0 and the history are the
        # same with or without it, so a run can decide the treatment on day 0's data.
        self.plant = None if plant is None else np.asarray(plant, dtype=float)
        self.history_days = history_days
        self.bad_rate = bad_rate
        self.progress = progress or (lambda _msg: None)
        self.rng = np.random.default_rng(seed + 1)
        self.r = random.Random(seed + 2)
        self.people = Population(customers, days, seed)
        self.truth = Truth(out / "truth")
        self.counters: dict[str, int] = defaultdict(int)
        self.pending_returns: dict[int, list[dict]] = defaultdict(list)
        self.known_customers: set[int] = set()
        n_products = int(min(50_000, max(300, customers // 2)))
        self.products = self._catalogue(n_products)
        self._shopping_habits(customers)

    # ------------------------------------------------------------------ helpers
    def _id(self, prefix: str) -> str:
        self.counters[prefix] += 1
        return f"{prefix}{self.counters[prefix]:08d}"

    def _catalogue(self, n: int) -> Catalogue:
        rng = np.random.default_rng(self.seed + 3)
        cat = rng.integers(0, len(CATEGORIES), size=n)
        base = np.array([8, 25, 20, 18, 12, 15, 40, 70, 180, 60, 30, 50], dtype=float)
        price = np.round(base[cat] * rng.lognormal(0, 0.5, size=n), 2)
        brands = [f"{CATEGORIES[c][0].title()}Co {rng.integers(1, 6)}" for c in cat]
        return Catalogue(
            [f"SKU-{i + 1:06d}" for i in range(n)],
            cat,
            brands,
            price,
            {c: np.nonzero(cat == c)[0] for c in range(len(CATEGORIES))},
        )

    def _shopping_habits(self, customers: int) -> None:
        """What real baskets show and the recommenders must learn: each person has staples (their
        favourite item of each of their two most preferred repeating categories) that they buy again
        every `cadence` days (7-27, their own per staple), and durables (apparel, electronics, home…)
        that they do not buy twice (the last 8 they bought are remembered)."""
        P, pr = self.people, self.products
        repeating = np.array([i for i, (_, rep) in enumerate(CATEGORIES) if rep])
        top = repeating[np.argsort(-P.category_pref[:, repeating], axis=1, kind="stable")[:, :2]]
        persons = np.arange(customers)
        self.staples = np.full((customers, 2), -1, dtype=np.int64)
        for j in range(2):
            for c in np.unique(top[:, j]):
                pool = pr.by_category[int(c)]
                if len(pool):
                    who = persons[top[:, j] == c]
                    idx = np.minimum(P.price_band[who].astype(int) * 3, len(pool) - 1)
                    self.staples[who, j] = pool[(idx + who % 7) % len(pool)]
        self.staple_cadence = 7 + (persons[:, None] * 7919 + np.maximum(self.staples, 0)) % 21
        self.staple_last = np.full((customers, 2), np.iinfo(np.int32).min // 2, dtype=np.int64)
        self.durable = ~np.array([rep for _, rep in CATEGORIES])[pr.category]
        self.owned = np.full((customers, 8), -1, dtype=np.int64)

    def _pick_skus(self, person: int, k: int, d: int | None = None) -> list[int]:
        """`k` items by category preference (what a person browses). For an order (`d`: its day from
        the start) also the person's staples that are due, and a durable they own is replaced by the
        next one of its category they do not."""
        cats = self.rng.choice(len(CATEGORIES), size=k, p=self.people.category_pref[person])
        if d is None:
            return self._favourites(person, cats)
        staples = self.staples[person]
        due = d - self.staple_last[person] >= self.staple_cadence[person]
        out = [int(s) for s, ok in zip(staples, due, strict=True) if s >= 0 and ok]
        owned = self.owned[person]
        for sku in self._favourites(person, cats):
            sku = self._not_owned(sku, owned)
            if sku not in out:
                out.append(sku)
        for j, s in enumerate(self.staples[person]):
            if s in out:
                self.staple_last[person, j] = d
        for sku in out:
            if self.durable[sku]:
                owned[:-1] = owned[1:].copy()
                owned[-1] = sku
        return out

    def _not_owned(self, sku: int, owned: np.ndarray) -> int:
        """`sku`, or when it is a durable the person owns, the next item of its category they do not."""
        if not self.durable[sku] or sku not in owned:
            return sku
        pool = self.products.by_category[int(self.products.category[sku])]
        at = int(np.searchsorted(pool, sku))
        for step in range(1, min(len(pool), 9)):
            other = int(pool[(at + step) % len(pool)])
            if other not in owned:
                return other
        return sku

    def _favourites(self, person: int, cats: np.ndarray) -> list[int]:
        out = []
        band = int(self.people.price_band[person])
        for c in cats:
            pool = self.products.by_category[int(c)]
            if not len(pool):
                continue
            # A person's favourites: the low-index items of the category, shifted by price band.
            idx = min(int(self.rng.zipf(1.6)) - 1 + band * 3, len(pool) - 1)
            out.append(int(pool[(idx + person % 7) % len(pool)]))
        return out

    def _when(self, day: dt.date, hour_mu: float = 19.0) -> dt.datetime:
        hour = int(min(max(self.rng.normal(hour_mu, 3.5), 0.0), 23.0))  # np.clip: 7 µs a scalar
        return dt.datetime(
            day.year,
            day.month,
            day.day,
            hour,
            int(self.rng.integers(0, 60)),
            int(self.rng.integers(0, 60)),
            tzinfo=UTC,
        )

    def _seasonality(self, day: dt.date) -> float:
        weekly = [0.9, 0.85, 0.9, 0.95, 1.1, 1.25, 1.15][day.weekday()]
        holiday = 1.8 if (day.month == 11 and day.day >= 24) or (day.month == 12 and day.day <= 20) else 1.0
        return weekly * holiday

    # ------------------------------------------------------------------ run
    def run(self) -> dict:
        self.truth.root.mkdir(parents=True, exist_ok=True)
        records_total = 0
        for d in range(self.days):
            day = self.start + dt.timedelta(days=d)
            batches = self._day(d, day)
            for name in list(batches):  # in the order generated (bad records draw from one generator)
                records_total += self._emit(self.catalog[name], day, batches.pop(name))
            self.truth.flush_identity()
            self.progress(f"generated {day} ({d + 1}/{self.days}): {records_total:,} records so far")
        self._write_truth()
        return {
            "records": records_total,
            "days": self.days,
            "customers": self.people.n,
            "products": len(self.products.skus),
            "bad_records": len(self.truth.bad),
        }

    def _emit(self, source: Source, day: dt.date, records: Spool) -> int:
        if not records:
            return 0
        self._plant_bad(source, records)
        header = None
        if source.name == "square_transactions" and (day - self.start).days >= self.days // 2:
            # Schema drift: Square adds a tip column and reorders the export half way through.
            header = list(reversed([c.source for c in source.columns]))
            drifted = Spool()
            for r in records:
                r.setdefault("__extra__", {"tip_money": f"{self.r.choice([0, 1, 2, 5]):.2f}"})
                drifted.append(r)
            records = drifted
        if source.format == "kafka":
            folder = self.out / "landing" / KAFKA_DUMP_DIR / source.location
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / f"{day}.jsonl", "w") as handle:
                for i, r in enumerate(records, start=1):
                    raw = r.get("__raw__") or json.dumps(
                        {k: v for k, v in r.items() if not k.startswith("__")}
                    )
                    handle.write(raw + "\n")
                    self._locate(source, day, r, f"{source.location}", i)
            return len(records)
        if source.format == "snowflake":
            folder = self.out / "landing" / SNOWFLAKE_DUMP_DIR / source.location
            folder.mkdir(parents=True, exist_ok=True)
            clean = []
            for i, r in enumerate(records, start=1):
                clean.append({k: v for k, v in r.items() if not k.startswith("__")})
                self._locate(source, day, r, source.location, i)
            (folder / f"{day}.json").write_text(json.dumps(clean))
            return len(records)
        folder = self.out / "landing" / source.location / day.isoformat()
        located = write_day(source, folder, records, header=header)
        for r, (file, number) in zip(records, located, strict=True):
            self._locate(source, day, r, f"{source.location}/{day}/{file}", number)
        return len(records)

    def _locate(self, source: Source, day: dt.date, record: dict, file: str, number: int) -> None:
        if "__bad__" in record:
            self.truth.bad.append(
                {
                    "source": source.name,
                    "batch_date": day.isoformat(),
                    "file": file,
                    "record": number,
                    "kind": record["__bad__"],
                }
            )

    # ------------------------------------------------------------------ bad records
    def _plant_bad(self, source: Source, records: Spool) -> None:
        """Append corrupted copies of random records (kinds as in BAD_KINDS), marked `__bad__`.
        Every draw is made first, then the victims are fetched in one pass over the spool."""
        if self.bad_rate <= 0:
            return
        n_bad = int(self.rng.binomial(len(records), min(self.bad_rate, 0.5)))
        typed = [c for c in source.columns if c.type in ("int", "money", "timestamp", "date")]
        draws = []
        for _ in range(n_bad):
            kind = BAD_KINDS[int(self.rng.integers(0, len(BAD_KINDS)))]
            victim = int(self.rng.integers(0, len(records)))
            drawn_column = kind == "wrong_type" and typed and source.format != "snowflake"
            draws.append((kind, victim, int(self.rng.integers(0, len(typed))) if drawn_column else 0))
        victims = records.take(v for _, v, _ in draws)
        for kind, victim, column in draws:
            planted = self._corrupt(source, dict(victims[victim]), kind, typed, column)
            if planted is not None:
                planted["__bad__"] = kind
                records.append(planted)

    def _corrupt(self, source: Source, record: dict, kind: str, typed: list, column: int) -> dict | None:
        """`record` made bad in the way `kind` says (None: this source cannot carry that kind);
        `column`: which of the `typed` columns a wrong_type corrupts."""
        if source.format == "snowflake" and kind in ("malformed", "wrong_type"):
            return None  # a typed warehouse table cannot hold these
        if kind == "malformed":
            if source.format in ("csv", "jsonl", "fixed_width", "kafka"):
                return {
                    "__raw__": {"csv": "garbled,row", "fixed_width": "TRUNCATED"}.get(
                        source.format, '{"id": "broken'
                    )
                }
            if source.format == "xml":
                return None  # a broken XML element would cut the file: planted separately, once
            return None
        if kind == "wrong_type" and typed:
            col = typed[column]
            record[col.source] = "N/A" if source.format != "parquet" else None
            return record if source.format != "parquet" else None
        if kind == "impossible":
            bounded = [c for c in source.columns if c.min is not None and c.min >= 0]
            if bounded:
                col = bounded[0]
                record[col.source] = -abs(float(col.max or 5)) - 1 if col.type == "money" else -3
                return record
            times = [c for c in source.columns if c.type == "timestamp"]
            if times:
                record[times[0].source] = "2099-01-01T00:00:00Z"
                return record
            return None
        if kind == "missing_required":
            required = [
                c
                for c in source.columns
                if c.required and c.name not in source.primary_key and c.name != source.cursor
            ]
            if not required or source.format == "parquet":
                return None
            record[required[0].source] = None
            return record
        if kind == "duplicate":
            return record
        return None

    # ------------------------------------------------------------------ one day
    def _day(self, d: int, day: dt.date) -> dict[str, Spool]:
        P = self.people
        out: dict[str, Spool] = defaultdict(Spool)
        if d == 0:
            self._reference_data(day, out)
            self._initial_identities(day, out)
            self._history(out)
        else:
            self._new_and_changed_customers(d, day, out)
        active = np.nonzero(P.active(d))[0]
        promo = self._purchases(d, day, active, out)
        # Every channel sells something every day: the web shop and both store POS systems.
        if len(active) and not out["shopify_orders"]:
            self._order(int(self.rng.choice(active)), day, promo, out, online=True)
        if len(active) and not out["square_transactions"]:
            self._order(
                int(self.rng.choice(active)),
                day,
                promo,
                out,
                store=int(self.rng.integers(0, N_SQUARE_STORES)),
            )
        if len(active) and not out["legacy_pos_sales"]:
            self._order(
                int(self.rng.choice(active)),
                day,
                promo,
                out,
                store=int(self.rng.integers(N_SQUARE_STORES, N_STORES)),
            )
        self._browsing(active, day, out)
        self._engagement(active, d, day, out)
        self._returns_due(d, day, out)
        self._misc(active, d, day, out)
        if d % 7 == 0:
            self._inventory(day, out)
        return out

    def _purchases(self, d: int, day: dt.date, active: np.ndarray, out, history: bool = False) -> bool:
        """Day `d`'s orders of the `active` people (Poisson at each one's rate); True on promotion days."""
        rate = self.people.monthly_orders[active] / 30.0 * self._seasonality(day)
        if self.plant is not None and d >= 1:
            rate = rate * self.plant[active]
        promo = (d % 14) < 3  # a promotion runs three days every two weeks
        if promo:
            rate = rate * 1.4
        counts = self.rng.poisson(rate)
        for person, k in zip(active[counts > 0], counts[counts > 0], strict=True):
            for _ in range(int(k)):
                self._order(int(person), day, promo, out, history=history)
        return promo

    def _history(self, out) -> None:
        """The `history_days` before day 0, delivered in day 0's batch as each system's backfill at
        onboarding: purchases with their returns, and the last four weeks of messaging engagement.
        (No browsing, reviews or store visits: systems rarely keep those for long.)"""
        saved, self.rng = self.rng, np.random.default_rng(self.seed + 11)  # day 0 on draws as without
        try:
            for d in range(-self.history_days, 0):
                day = self.start + dt.timedelta(days=d)
                active = np.nonzero(self.people.active(d))[0]
                self._purchases(d, day, active, out, history=True)
                self._returns_due(d, day, out)
                if d >= -ENGAGEMENT_HISTORY_DAYS:
                    self._engagement(active, d, day, out)
                if (d + 1) % 30 == 0:
                    self.progress(f"history: {day} ({-d} days before the start)")
        finally:
            self.rng = saved

    def _reference_data(self, day: dt.date, out) -> None:
        pr = self.products
        ts = _iso(dt.datetime(day.year, day.month, day.day, 2, tzinfo=UTC))
        for i, sku in enumerate(pr.skus):
            c = int(pr.category[i])
            out["products"].append(
                {
                    "sku": sku,
                    "title": f"{pr.brand[i]} {CATEGORIES[c][0]} item {i + 1}",
                    "category": CATEGORIES[c][0],
                    "brand": pr.brand[i],
                    "price": float(pr.price[i]),
                    "repeatable": CATEGORIES[c][1],
                    "image_url": f"https://cdn.example.com/p/{sku}.jpg",
                    "launched_on": (day - dt.timedelta(days=int(i % 700))).isoformat(),
                    "updated_at": ts,
                }
            )
        for s in range(N_STORES):
            city, state, zip3 = CITIES[s % len(CITIES)]
            out["stores"].append(
                {
                    "store_id": f"ST{s + 1:03d}",
                    "name": f"{city} #{s // len(CITIES) + 1}",
                    "pos_system": "square" if s < N_SQUARE_STORES else "legacy",
                    "city": city,
                    "state": state,
                    "postal_code": f"{zip3}{s:02d}",
                    "opened_on": f"{2005 + s % 18}-03-01",
                    "updated_at": ts,
                }
            )

    def _customer_records(self, i: int, day: dt.date, out, created: bool) -> None:
        """The person's records in the systems that know them (e-commerce, CRM, loyalty, 3rd party)."""
        P = self.people
        ident = P.identity(i)
        r = random.Random(self.seed * 31 + i * 7 + day.toordinal())
        now = _iso(self._when(day, 10))
        created_at = _iso(
            dt.datetime(day.year, day.month, day.day, tzinfo=UTC)
            + dt.timedelta(days=min(int(P.signup_day[i]), 0))
        )
        cid = f"SH{i + 1:08d}"
        out["shopify_customers"].append(
            {
                "id": cid,
                "email": vary_email(ident.email, r),
                "phone": maybe(vary_phone(ident.phone, r), r, 0.4),
                "first_name": vary_first(ident.first_name, r, 0.1),
                "last_name": vary_last(ident.last_name, r),
                "default_address.address1": vary_street(ident.street, r),
                "default_address.city": ident.city,
                "default_address.province_code": ident.state,
                "default_address.zip": maybe(ident.postal_code, r, 0.05),
                "accepts_marketing": bool(P.consent_email[i]),
                "created_at": created_at,
                "updated_at": now,
            }
        )
        self.truth.identity.append(("shopify_customers", cid, ident.person_id))
        if P.in_crm[i] and (created or r.random() < 0.5):
            sid = f"003{i + 1:012d}"
            street = ident.old_street if ident.old_street and r.random() < 0.7 else ident.street
            out["crm_contacts"].append(
                {
                    "Id": sid,
                    "AccountId": f"001{int(P.household[i]) + 1:012d}",
                    "FirstName": vary_first(ident.first_name, r, 0.35),
                    "LastName": vary_last(ident.last_name, r),
                    "Email": maybe(vary_email(ident.email, r), r, 0.15),
                    "Phone": maybe(vary_phone(ident.phone, r), r, 0.3),
                    "MailingStreet": vary_street(street, r),
                    "MailingCity": ident.city,
                    "MailingState": ident.state,
                    "MailingPostalCode": ident.postal_code,
                    "Birthdate": maybe(ident.birth_date, r, 0.5),
                    "LastModifiedDate": now.replace("Z", ".000Z"),
                }
            )
            self.truth.identity.append(("crm_contacts", sid, ident.person_id))
            if int(P.household[i]) == i:
                out["crm_accounts"].append(
                    {
                        "Id": f"001{i + 1:012d}",
                        "Name": f"{ident.last_name} household",
                        "Tier__c": r.choice(["standard", "silver", "gold", "platinum"]),
                        "LastModifiedDate": now.replace("Z", ".000Z"),
                    }
                )
        if P.loyalty[i] and (created or r.random() < 0.3):
            lid = f"L{i + 1:09d}"
            out["loyalty_members"].append(
                {
                    "LOYALTY_ID": lid,
                    "FIRST_NAME": vary_first(ident.first_name, r, 0.3),
                    "LAST_NAME": vary_last(ident.last_name, r),
                    "EMAIL": maybe(vary_email(ident.email, r), r, 0.25),
                    "PHONE": maybe(vary_phone(ident.phone, r), r, 0.1),
                    "POSTAL_CODE": ident.postal_code,
                    "TIER": r.choice(["member", "member", "silver", "gold", "platinum"]),
                    "POINTS_BALANCE": int(r.randint(0, 20_000)),
                    "ENROLLED_AT": created_at,
                    "UPDATED_AT": now,
                }
            )
            self.truth.identity.append(("loyalty_members", lid, ident.person_id))

    def _initial_identities(self, day: dt.date, out) -> None:
        P = self.people
        for i in np.nonzero(P.signup_day <= 0)[0]:
            i = int(i)
            self.known_customers.add(i)
            self._customer_records(i, day, out, created=True)
            ident = P.identity(i)
            r = random.Random(self.seed * 13 + i)
            if r.random() < 0.5:
                key = f"EXP{i + 1:09d}"
                out["demographics_3p"].append(
                    {
                        "match_key": key,
                        "first_name": vary_first(ident.first_name, r, 0.3),
                        "last_name": vary_last(ident.last_name, r),
                        "street": vary_street(ident.old_street or ident.street, r),
                        "postal_code": ident.postal_code,
                        "birth_date": maybe(ident.birth_date, r, 0.3),
                        "income_band": r.choice(["lt50k", "50k_100k", "100k_150k", "gt150k"]),
                        "household_size": r.randint(1, 6),
                        "delivered_at": _iso(self._when(day, 3)),
                    }
                )
                self.truth.identity.append(("demographics_3p", key, ident.person_id))
            self._consents(i, day, out, initial=True)

    def _new_and_changed_customers(self, d: int, day: dt.date, out) -> None:
        P = self.people
        for i in np.nonzero(P.signup_day == d)[0]:
            self.known_customers.add(int(i))
            self._customer_records(int(i), day, out, created=True)
            self._consents(int(i), day, out, initial=True)
        # A few known customers update their profile each day.
        changed = self.rng.choice(P.n, size=max(1, P.n // 200), replace=False)
        for i in changed:
            if int(i) in self.known_customers:
                self._customer_records(int(i), day, out, created=False)
        for i in self.rng.choice(P.n, size=max(1, P.n // 500), replace=False):
            if int(i) in self.known_customers:
                self._consents(int(i), day, out, initial=False)

    def _consents(self, i: int, day: dt.date, out, initial: bool) -> None:
        P = self.people
        ident = P.identity(i)
        r = random.Random(self.seed * 17 + i * 3 + day.toordinal())
        channels = {
            "email": P.consent_email[i],
            "sms": P.consent_sms[i],
            "push": P.consent_push[i],
            "personalization": r.random() < 0.9,
        }
        if not initial:
            ch = r.choice(list(channels))
            channels = {ch: not channels[ch]}  # a change of mind
        for channel, granted in channels.items():
            cid = self._id("CE")
            out["consent_preferences"].append(
                {
                    "id": cid,
                    "identifier.email": vary_email(ident.email, r, 0),
                    "identifier.phone": vary_phone(ident.phone, r) if channel == "sms" else None,
                    "channel": channel,
                    "status": "granted" if granted else "revoked",
                    "jurisdiction": r.choice(["ccpa", "other", "other", "gdpr"]),
                    "recorded_at": _iso(self._when(day, 12)),
                }
            )
            self.truth.identity.append(("consent_preferences", cid, ident.person_id))

    def _order(
        self,
        i: int,
        day: dt.date,
        promo: bool,
        out,
        store: int | None = None,
        online: bool = False,
        history: bool = False,
    ) -> None:
        """One purchase, online or in a store (`store` forces a store sale there, `online` a web order);
        a `history` purchase is the sale alone, without the visits and events around it."""
        P, pr = self.people, self.products
        channel = ("web", "app", "store")[int(self.rng.choice(3, p=P.channel_pref[i]))]
        channel = "store" if store is not None else "web" if online else channel
        ident = P.identity(i)
        r = random.Random(int(self.rng.integers(0, 2**31)))
        when = self._when(day)
        if r.random() < 0.02 and not history:
            when -= dt.timedelta(days=r.randint(1, 3))  # arrives late, in a later day's file
        skus = self._pick_skus(i, int(self.rng.integers(1, 5)), (day - self.start).days)
        qty = [int(self.rng.integers(1, 3)) for _ in skus]
        total = round(sum(float(pr.price[s]) * q for s, q in zip(skus, qty, strict=True)), 2)
        discount = round(total * 0.15, 2) if promo else 0.0
        if channel in ("web", "app"):
            oid = self._id("SO")
            out["shopify_orders"].append(
                {
                    "id": oid,
                    "customer_id": f"SH{i + 1:08d}",
                    "email": vary_email(ident.email, r, 0.005),
                    "created_at": when.astimezone(ZoneInfo("America/New_York")).isoformat(),
                    "source_name": channel,
                    "financial_status": "paid",
                    "currency": "USD" if r.random() < 0.95 else "CAD",
                    "subtotal": total,
                    "total_discounts": discount,
                    "total_price": round(total - discount, 2),
                    "promo_code": "SPRING15" if promo else None,
                }
            )
            for s, q in zip(skus, qty, strict=True):
                lid = self._id("SL")
                out["shopify_order_lines"].append(
                    {
                        "id": lid,
                        "order_id": oid,
                        "sku": pr.skus[s],
                        "quantity": q,
                        "unit_price": float(pr.price[s]),
                        "created_at": _iso(when),
                    }
                )
                if r.random() < 0.08:
                    self.pending_returns[(day - self.start).days + r.randint(5, 20)].append(
                        {
                            "order": oid,
                            "sku": pr.skus[s],
                            "qty": q,
                            "amount": float(pr.price[s]) * q,
                            "web": True,
                        }
                    )
            if r.random() < 0.1 and not history:
                self._review(i, skus[0], when, out)
        else:
            if store is None:
                store = int(P.home_store[i]) if r.random() < 0.8 else r.randint(0, N_STORES - 1)
            store_id = f"ST{store + 1:03d}"
            loyalty = f"L{i + 1:09d}" if P.loyalty[i] and r.random() < 0.8 else None
            if store < N_SQUARE_STORES:
                tid = self._id("SQ")
                local = _local(when, "America/New_York", "%Y-%m-%d %H:%M:%S")
                out["square_transactions"].append(
                    {
                        "transaction_id": tid,
                        "location_id": store_id,
                        "created_at": local,
                        "customer_email": maybe(vary_email(ident.email, r), r, 0.6),
                        "customer_phone": maybe(vary_phone(ident.phone, r), r, 0.7),
                        "loyalty_id": loyalty,
                        "total_money": round(total - discount, 2),
                        "tender": r.choice(["card", "card", "cash", "mobile", "gift_card"]),
                    }
                )
                for s, q in zip(skus, qty, strict=True):
                    out["square_line_items"].append(
                        {
                            "line_item_id": self._id("SQL"),
                            "transaction_id": tid,
                            "sku": pr.skus[s],
                            "quantity": q,
                            "unit_price": float(pr.price[s]),
                            "created_at": local,
                        }
                    )
                ref = tid
            else:
                receipt = self._id("R")[1:]
                sold = _local(when, "America/Chicago", "%Y%m%d%H%M%S")
                for n, (s, q) in enumerate(zip(skus, qty, strict=True), start=1):
                    out["legacy_pos_sales"].append(
                        {
                            "receipt_no": receipt,
                            "line_no": n,
                            "store_id": store_id,
                            "sold_at": sold,
                            "loyalty_id": loyalty,
                            "sku": pr.skus[s],
                            "quantity": q,
                            "amount": f"{float(pr.price[s]) * q:.2f}",
                        }
                    )
                ref = receipt
            if r.random() < 0.05:
                self.pending_returns[(day - self.start).days + r.randint(3, 15)].append(
                    {
                        "order": ref,
                        "sku": pr.skus[skus[0]],
                        "qty": 1,
                        "amount": float(pr.price[skus[0]]),
                        "web": False,
                    }
                )
            if P.has_app[i] and r.random() < 0.3 and not history:
                self._store_visit(i, store_id, when - dt.timedelta(minutes=20), r, out)
        if history:
            return
        if P.loyalty[i] and r.random() < 0.9:
            out["loyalty_points_ledger"].append(
                {
                    "entry_id": self._id("LE"),
                    "loyalty_id": f"L{i + 1:09d}",
                    "points": int(total),
                    "reason": "purchase",
                    "posted_at": _iso(when),
                }
            )
        # The purchase as behavioural events too.
        if channel != "store":
            self._session(
                i, day, when, [pr.skus[s] for s in skus], purchased=True, out=out, app=channel == "app"
            )

    def _store_visit(self, i: int, store_id: str, when: dt.datetime, r: random.Random, out) -> None:
        """A guest Wi-Fi login: how an in-store visit becomes a record with an email or phone."""
        ident = self.people.identity(i)
        vid = self._id("WV")
        out["store_visits"].append(
            {
                "visit_id": vid,
                "store_id": store_id,
                "visited_at": _iso(when),
                "email": maybe(vary_email(ident.email, r), r, 0.3),
                "phone": maybe(vary_phone(ident.phone, r), r, 0.6),
                "dwell_minutes": r.randint(5, 90),
            }
        )
        self.truth.identity.append(("store_visits", vid, ident.person_id))

    def _session(self, i, day, when, skus, purchased, out, app) -> None:
        P = self.people
        r = random.Random(int(self.rng.integers(0, 2**31)))
        session = self._id("S")
        steps = [("product_view", s) for s in skus] + [("add_to_cart", s) for s in skus]
        if purchased:
            steps += [("checkout_start", None), ("purchase", None)]
        t = when - dt.timedelta(minutes=len(steps) * 2)
        ident = P.identity(i)
        campaign = _campaign(session)
        for event, sku in steps:
            t += dt.timedelta(seconds=r.randint(20, 200))
            eid = self._id("E")
            if app:
                out["app_events"].append(
                    {
                        "event_id": eid,
                        "event_at": str(int(t.timestamp() * 1000)),
                        "event_type": event,
                        "device_id": f"D{i + 1:08d}",
                        "app_user_id": f"SH{i + 1:08d}",
                        "email": ident.email if event == "purchase" else None,
                        "sku": sku,
                        "platform": "ios" if i % 3 else "android",
                    }
                )
            else:
                out["web_clickstream"].append(
                    {
                        "event_id": eid,
                        "event_at": _iso(t),
                        "event_type": event,
                        "session_id": session,
                        "anonymous_id": f"A{i + 1:08d}",
                        "customer_id": f"SH{i + 1:08d}" if r.random() < 0.7 else None,
                        "sku": sku,
                        "page_url": (f"/p/{sku}" if sku else "/checkout") + campaign,
                    }
                )
                campaign = ""  # the landing page carries the campaign, not the rest of the visit

    def _browsing(self, active, day, out) -> None:
        P = self.people
        browsers = active[self.rng.random(len(active)) < np.clip(P.monthly_orders[active] / 5, 0.02, 0.5)]
        for i in browsers:
            i = int(i)
            skus = [self.products.skus[s] for s in self._pick_skus(i, int(self.rng.integers(1, 4)))]
            when = self._when(day, 14)
            app = bool(P.has_app[i]) and self.rng.random() < 0.5
            self._session(i, day, when, skus, purchased=False, out=out, app=app)
            if self.rng.random() < 0.15 and skus:
                out["shopify_abandoned_checkouts"].append(
                    {
                        "id": self._id("AC"),
                        "customer_id": f"SH{i + 1:08d}",
                        "email": P.identity(i).email,
                        "created_at": _iso(when),
                        "line_skus": ",".join(skus),
                        "total_price": round(
                            float(sum(self.products.price[int(s[4:]) - 1] for s in skus)), 2
                        ),
                    }
                )
            if self.rng.random() < 0.05 and skus:
                out["wishlists"].append(
                    {
                        "id": self._id("WL"),
                        "customer_id": f"SH{i + 1:08d}",
                        "sku": skus[0],
                        "action": "add",
                        "occurred_at": _iso(when),
                    }
                )

    def _engagement(self, active, d, day, out) -> None:
        P = self.people
        campaign = f"CMP{day:%Y%m%d}"  # a daily campaign; each consenting customer gets one every third day
        for i in active[P.consent_email[active] & (active % 3 == d % 3)]:
            i = int(i)
            ident = P.identity(i)
            sent = self._when(day, 10)
            # People open at their own favourite hour, and more often on their favourite weekday.
            boost = 1.6 if day.weekday() == P.open_weekday[i] else 0.85
            opened = self.rng.random() < min(0.95, P.email_engagement[i] * boost)
            clicked = opened and self.rng.random() < 0.3
            minute = int(P.open_hour[i]) * 60 + int(self.rng.normal(20, 25))
            read = dt.datetime.combine(day, dt.time(), UTC) + dt.timedelta(minutes=minute)
            read += dt.timedelta(days=1) if read <= sent else dt.timedelta(0)
            times = (sent, read, read + dt.timedelta(minutes=int(self.rng.integers(1, 10))))
            if P.email_platform[i]:
                for metric, happened, when in zip(
                    ("received", "opened", "clicked"), (True, opened, clicked), times, strict=True
                ):
                    if happened:
                        eid = self._id("KE")
                        out["klaviyo_events"].append(
                            {
                                "id": eid,
                                "profile.email": ident.email,
                                "metric": metric,
                                "campaign_id": campaign,
                                "datetime": _iso(when),
                            }
                        )
            else:
                for action, happened, when in zip(
                    ("sent", "open", "click"), (True, opened, clicked), times, strict=True
                ):
                    if happened:
                        out["mailchimp_activity"].append(
                            {
                                "activity_id": self._id("MC"),
                                "email_address": ident.email,
                                "action": action,
                                "campaign_id": campaign,
                                "timestamp": when.strftime("%Y-%m-%d %H:%M:%S"),
                            }
                        )
        # weekly SMS per customer, spread over the week
        for i in active[P.consent_sms[active] & (active % 7 == d % 7)]:
            i = int(i)
            mid = self._id("SMS")
            phone = P.identity(i).phone
            when = self._when(day, 12)
            for event in ["sent", "delivered"] + (["clicked"] if self.rng.random() < 0.1 else []):
                out["sms_events"].append(
                    {"message_id": mid, "phone": f"+1{phone}", "event": event, "occurred_at": _iso(when)}
                )
        # a push every fifth day per customer
        for i in active[P.consent_push[active] & (active % 5 == d % 5)]:
            pid = self._id("PU")
            when = self._when(day, 18)
            for event in ["sent"] + (["opened"] if self.rng.random() < 0.2 else []):
                out["push_notifications"].append(
                    {
                        "push_id": pid,
                        "device_id": f"D{int(i) + 1:08d}",
                        "event": event,
                        "occurred_at": _iso(when),
                    }
                )

    def _returns_due(self, d, day, out) -> None:
        if d < 14 and self.history_days < 20:  # returns of purchases made before the generated period
            for _ in range(max(1, self.people.n // 500)):
                s = int(self.rng.integers(0, len(self.products.skus)))
                self.pending_returns[d].append(
                    {
                        "order": f"SO-PRE-{self._id('HIST')}",
                        "sku": self.products.skus[s],
                        "qty": 1,
                        "amount": float(self.products.price[s]),
                        "web": True,
                    }
                )
        for ret in self.pending_returns.pop(d, []):
            rid = self._id("RT")
            when = self._when(day, 15)
            out["returns"].append(
                {
                    "id": rid,
                    "orderRef": ret["order"],
                    "sku": ret["sku"],
                    "quantity": ret["qty"],
                    "reason": str(
                        self.rng.choice(["damaged", "wrong_size", "not_as_described", "changed_mind"])
                    ),
                    "refundAmount": f"{ret['amount']:.2f}",
                    "returnedAt": _iso(when),
                }
            )
            if ret["web"]:
                out["shopify_refunds"].append(
                    {
                        "id": self._id("RF"),
                        "order_id": ret["order"],
                        "processed_at": _iso(when),
                        "amount": round(ret["amount"], 2),
                        "reason": "other",
                    }
                )

    def _review(self, i, sku, when, out) -> None:
        ident = self.people.identity(i)
        rid = self._id("RV")
        pref = self.people.category_pref[i][int(self.products.category[sku])]
        rating = int(np.clip(round(3 + pref * 4 + self.rng.normal(0, 0.8)), 1, 5))
        out["product_reviews"].append(
            {
                "id": rid,
                "sku": self.products.skus[sku],
                "reviewer.email": ident.email,
                "reviewer.name": f"{ident.first_name} {ident.last_name[0]}.",
                "rating": rating,
                "created_at": _iso(when + dt.timedelta(minutes=int(self.rng.integers(30, 600)))),
            }
        )
        self.truth.identity.append(("product_reviews", rid, ident.person_id))

    def _misc(self, active, d, day, out) -> None:
        P = self.people
        r = random.Random(self.seed * 101 + d)

        def at_least(rate: float, minimum: int = 1) -> np.ndarray:
            """Customers this rarer source sees today: every system sends something each day."""
            picked = active[self.rng.random(len(active)) < rate]
            if len(picked) >= minimum or not len(active):
                return picked
            return self.rng.choice(active, size=min(minimum, len(active)), replace=False)

        # Loyalty members earn bonus points and redeem them on days they do not buy, too.
        members = active[P.loyalty[active]]
        if len(members):
            for i in self.rng.choice(
                members, size=min(len(members), max(2, len(members) // 300)), replace=False
            ):
                bonus = self.rng.random() < 0.5
                out["loyalty_points_ledger"].append(
                    {
                        "entry_id": self._id("LE"),
                        "loyalty_id": f"L{int(i) + 1:09d}",
                        "points": int(self.rng.integers(50, 500)) * (1 if bonus else -1),
                        "reason": "bonus" if bonus else "redemption",
                        "posted_at": _iso(self._when(day, 11)),
                    }
                )
        for n, i in enumerate(at_least(0.008, minimum=2)):  # cases and chats alternate
            i = int(i)
            ident = P.identity(i)
            when = self._when(day, 13)
            if n % 2 == 0:
                out["crm_cases"].append(
                    {
                        "Id": self._id("500"),
                        "ContactId": f"003{i + 1:012d}" if P.in_crm[i] else None,
                        "CreatedDate": _iso(when),
                        "Status": r.choice(["new", "open", "closed"]),
                        "Topic__c": r.choice(["delivery", "return", "product", "billing"]),
                        "CSAT__c": r.choice([None, 3, 4, 5, 1]),
                        "LastModifiedDate": _iso(when),
                    }
                )
            else:
                cid = self._id("CH")
                out["service_chats"].append(
                    {
                        "id": cid,
                        "visitor.email": vary_email(ident.email, r),
                        "started_at": _iso(when),
                        "duration_s": r.randint(60, 1800),
                        "rating": r.choice(["good", "bad", "unrated"]),
                        "tags": "order_status",
                    }
                )
                self.truth.identity.append(("service_chats", cid, ident.person_id))
        for i in at_least(0.001):  # wishlist adds outside a browsing session (the app's heart button)
            sku = (
                self.products.skus[self._pick_skus(int(i), 1)[0]]
                if self._pick_skus(int(i), 1)
                else self.products.skus[0]
            )
            out["wishlists"].append(
                {
                    "id": self._id("WL"),
                    "customer_id": f"SH{int(i) + 1:08d}",
                    "sku": sku,
                    "action": "add",
                    "occurred_at": _iso(self._when(day, 21)),
                }
            )
        for i in at_least(0.001):  # checkouts abandoned at the payment step
            s = int(self.rng.integers(0, len(self.products.skus)))
            out["shopify_abandoned_checkouts"].append(
                {
                    "id": self._id("AC"),
                    "customer_id": f"SH{int(i) + 1:08d}",
                    "email": P.identity(int(i)).email,
                    "created_at": _iso(self._when(day, 20)),
                    "line_skus": self.products.skus[s],
                    "total_price": float(self.products.price[s]),
                }
            )
        for i in at_least(0.002):  # reviews of things bought before
            picks = self._pick_skus(int(i), 1)
            if picks:
                self._review(int(i), picks[0], self._when(day, 11), out)
        for i in at_least(0.002):  # visits that end without a purchase
            self._store_visit(int(i), f"ST{int(P.home_store[i]) + 1:03d}", self._when(day, 15), r, out)
        for i in at_least(0.003):
            i = int(i)
            ident = P.identity(i)
            eid = self._id("SE")
            out["social_engagement"].append(
                {
                    "id": eid,
                    "network": r.choice(["instagram", "facebook", "tiktok", "x"]),
                    "handle": f"@{ident.first_name.lower()}{i % 1000}",
                    "email": ident.email if r.random() < 0.3 else None,
                    "action": r.choice(["like", "comment", "share", "mention"]),
                    "occurred_at": _iso(self._when(day, 20)),
                }
            )
            self.truth.identity.append(("social_engagement", eid, ident.person_id))
        for i in at_least(0.001):
            card = self._id("GC")
            out["gift_cards"].append(
                {
                    "gift_card_event_id": self._id("GE"),
                    "card_id": card,
                    "action": "issued",
                    "amount": r.choice([25, 50, 100]),
                    "purchaser_email": P.identity(int(i)).email,
                    "occurred_at": _iso(self._when(day, 16)),
                }
            )
        # price changes and promotions every day
        for n in range(max(1, len(self.products.skus) // 300)):
            s = r.randrange(len(self.products.skus))
            start = dt.datetime(day.year, day.month, day.day, tzinfo=UTC)
            out["prices_promotions"].append(
                {
                    "promo_id": self._id("PR"),
                    "sku": self.products.skus[s],
                    "promo_price": round(float(self.products.price[s]) * 0.8, 2),
                    "starts_at": _iso(start),
                    "ends_at": _iso(start + dt.timedelta(days=7)),
                    "promo_type": r.choice(["markdown", "bogo", "bundle", "clearance"]),
                    "updated_at": _iso(start),
                }
            )
            del n

    def _inventory(self, day, out) -> None:
        n = min(len(self.products.skus), 200)
        for loc in ["DC-WEB"] + [f"ST{s + 1:03d}" for s in range(0, N_STORES, 4)]:
            on_hand = self.rng.poisson(12, size=n)
            on_hand[self.rng.random(n) < 0.05] = 0  # out of stock
            for k in range(n):
                out["inventory_snapshots"].append(
                    {
                        "snapshot_date": day.isoformat(),
                        "location_id": loc,
                        "sku": self.products.skus[k],
                        "on_hand": int(on_hand[k]),
                        "on_order": int(self.rng.integers(0, 20)),
                    }
                )

    def _write_truth(self) -> None:
        P = self.people
        with open(self.truth.root / "persons.csv", "w", newline="") as handle:
            w = csv.writer(handle)
            w.writerow(
                [
                    "person_id",
                    "household_id",
                    "signup_day",
                    "churn_day",
                    "reactivate_day",
                    "monthly_orders",
                    "top_category",
                    "price_band",
                    "open_hour",
                    "open_weekday",
                ]
            )
            for i in range(P.n):
                w.writerow(
                    [
                        f"P{i + 1:07d}",
                        f"H{int(P.household[i]) + 1:07d}",
                        int(P.signup_day[i]),
                        int(P.churn_day[i]),
                        int(P.reactivate_day[i]),
                        round(float(P.monthly_orders[i]), 3),
                        CATEGORIES[int(np.argmax(P.category_pref[i]))][0],
                        int(P.price_band[i]),
                        int(P.open_hour[i]),
                        int(P.open_weekday[i]),
                    ]
                )
        with open(self.truth.root / "bad_records.csv", "w", newline="") as handle:
            w = csv.DictWriter(handle, fieldnames=["source", "batch_date", "file", "record", "kind"])
            w.writeheader()
            w.writerows(self.truth.bad)
        (self.truth.root / "generation.json").write_text(
            json.dumps(
                {
                    "customers": P.n,
                    "days": self.days,
                    "seed": self.seed,
                    "start": self.start.isoformat(),
                    "history_days": self.history_days,
                    "bad_rate": self.bad_rate,
                },
                indent=2,
            )
        )


def generate(
    catalog: Catalog,
    out: Path,
    customers: int,
    days: int,
    seed: int,
    start: dt.date,
    bad_rate: float = 0.005,
    progress: Callable[[str], None] | None = None,
    history_days: int = 0,
    plant: np.ndarray | None = None,
) -> dict:
    """Write `days` daily batches of every source under `out/landing` (day 0's also holds the
    `history_days` of purchases before it), and the ground truth under `out/truth`. `plant`: a
    purchase-rate multiplier per person from day 1 on (a planted effect)."""
    return RetailGenerator(
        catalog, out, customers, days, seed, start, bad_rate, progress, history_days, plant
    ).run()
