"""The nightly triggers: moments the batch sources reveal, for journeys and trigger audiences.

The stream's triggers (`p13n.streaming.triggers`) watch clicks as they happen; these read a night's
batches. Each finder is pure (frames in, trigger rows out) and names its anchor, so a trigger fires
once (its id is kind:customer:anchor):

* **checkout_abandoned** (`shopify_abandoned_checkouts`): a checkout started that day with no order
  from the customer, in any sales system, after it;
* **birthday** (the golden record's birth date, read from the restricted zone): `birthday_days_ahead`
  days before it, once a year (29 February counts as 28 February in other years);
* **back_in_stock** (`inventory_snapshots` at `recommend.stock_location`): an item out of stock on the
  previous snapshot and in stock on the day's, for customers who viewed, carted or wishlisted it in
  the `interest_days` before and have not bought it since;
* **price_drop** (`prices_promotions`): a promotion starting that day below the item's price, for
  the same interested customers;
* **replenishment** (order lines): an item a customer bought on `min_repeat_purchases` days or more,
  due again (the last purchase plus their median gap) the day after.

`run_nightly_triggers` reads the inputs in DuckDB, drops triggers fired on earlier dates, passes the
rest through the contact ledger (consent, suppressions, caps: a held-back trigger is `suppressed`
with why) and replaces the date's rows of these kinds in `gold.triggered_audiences` (a rerun writes
the same rows). Loyalty points expiring and tier changes are not found: the points ledger has no
expiry and the members table keeps only the current tier.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd

KINDS = (
    "checkout_abandoned",
    "birthday",
    "back_in_stock",
    "price_drop",
    "replenishment",
    "loyalty_anniversary",
    "points_expiring",
    "tier_upgrade",
    "tier_downgrade",
)


def _rows(kind: str, customers, anchors, skus, at) -> pd.DataFrame:
    customers = list(customers)
    out = pd.DataFrame(
        {
            "customer_id": customers,
            "trigger": kind,
            "anchor": [str(a) for a in anchors],
            "anchor_sku": list(skus) if skus is not None else [None] * len(customers),
            "event_at": list(at) if not isinstance(at, dt.datetime) else [at] * len(customers),
        }
    )
    out["event_at"] = pd.to_datetime(out["event_at"], utc=True)  # naive times are UTC
    out["trigger_id"] = out["trigger"] + ":" + out["customer_id"] + ":" + out["anchor"]
    return out.drop(columns="anchor")


def checkout_abandonments(checkouts: pd.DataFrame, orders: pd.DataFrame) -> pd.DataFrame:
    """`checkouts`: customer_id, checkout_id, created_at, skus (comma-separated) of the day;
    `orders`: customer_id, ordered_at (of the day)."""
    if checkouts.empty:
        return _rows("checkout_abandoned", [], [], [], [])
    last_order = orders.groupby("customer_id")["ordered_at"].max() if len(orders) else pd.Series(dtype=object)
    after = pd.to_datetime(checkouts["customer_id"].map(last_order))
    left = checkouts[after.isna().to_numpy() | (after <= checkouts["created_at"]).fillna(False).to_numpy()]
    first_sku = left["skus"].fillna("").str.split(",").str[0].replace("", None)
    return _rows(
        "checkout_abandoned", left["customer_id"], left["checkout_id"], first_sku, left["created_at"]
    )


def _falls_on(dates: pd.Series, target: dt.date) -> pd.Series:
    """Whether each date's month and day fall on `target` (29 February on 28 February in other years)."""
    born = pd.to_datetime(dates, errors="coerce", utc=True)
    month, dom = born.dt.month, born.dt.day
    leap = (target.year % 4 == 0 and target.year % 100 != 0) or target.year % 400 == 0
    feb29 = (month == 2) & (dom == 29)
    hit = ((month == target.month) & (dom == target.day)) | (
        feb29 & (not leap) & (target.month == 2) & (target.day == 28)
    )
    return hit.fillna(False).astype(bool)


def birthdays(people: pd.DataFrame, day: dt.date, days_ahead: int) -> pd.DataFrame:
    """`people`: customer_id, birth_date. Customers whose birthday is `days_ahead` days after `day`."""
    target = day + dt.timedelta(days=days_ahead)
    who = people.loc[_falls_on(people["birth_date"], target).to_numpy(), "customer_id"]
    at = dt.datetime.combine(day, dt.time(), dt.UTC)
    return _rows("birthday", who, [target.year] * len(who), None, at)


def anniversaries(members: pd.DataFrame, day: dt.date, days_ahead: int) -> pd.DataFrame:
    """`members`: customer_id, enrolled_at. Members whose enrolment anniversary (a year or more) is
    `days_ahead` days after `day`; the anchor is the anniversary's year."""
    target = day + dt.timedelta(days=days_ahead)
    enrolled = pd.to_datetime(members["enrolled_at"], errors="coerce", utc=True)
    hit = _falls_on(members["enrolled_at"], target).to_numpy() & (enrolled.dt.year < target.year).to_numpy()
    who = members.loc[hit, "customer_id"]
    at = dt.datetime.combine(day, dt.time(), dt.UTC)
    return _rows("loyalty_anniversary", who, [target.year] * len(who), None, at)


def points_expiring(
    members: pd.DataFrame, day: dt.date, inactive_days: int, warning_days: int
) -> pd.DataFrame:
    """`members`: customer_id, points_balance, last_activity. Members holding points that expire
    (`inactive_days` after their last activity) within `warning_days` after `day`; the anchor is the
    expiry date, so new activity (a later expiry) can warn again."""
    last = pd.to_datetime(members["last_activity"], errors="coerce", utc=True).dt.normalize()
    expires = last + pd.Timedelta(days=inactive_days)
    start = pd.Timestamp(day, tz="UTC")
    hit = (
        (
            (members["points_balance"].fillna(0).astype(float) > 0)
            & (expires > start)
            & (expires <= start + pd.Timedelta(days=warning_days))
        )
        .fillna(False)
        .to_numpy()
    )
    at = dt.datetime.combine(day, dt.time(), dt.UTC)
    return _rows(
        "points_expiring", members.loc[hit, "customer_id"], expires[hit].dt.date.astype(str), None, at
    )


def tier_changes(
    before: pd.DataFrame, now: pd.DataFrame, order: tuple[str, ...], day: dt.date
) -> pd.DataFrame:
    """`before`: loyalty_id, tier (each member's tier before the day); `now`: customer_id, loyalty_id,
    tier (the day's). A member whose tier moved fires `tier_upgrade` or `tier_downgrade` (by `order`,
    lowest first); members new that day have no change."""
    rank = {t: i for i, t in enumerate(order)}
    moved = now.merge(before, on="loyalty_id", suffixes=("", "_before"))
    moved = moved[moved["tier"].isin(rank) & moved["tier_before"].isin(rank)]
    up = moved["tier"].map(rank) > moved["tier_before"].map(rank)
    down = moved["tier"].map(rank) < moved["tier_before"].map(rank)
    at = dt.datetime.combine(day, dt.time(), dt.UTC)
    out = []
    for kind, which in (("tier_upgrade", up), ("tier_downgrade", down)):
        part = moved[which.to_numpy()]
        out.append(_rows(kind, part["customer_id"], part["tier"] + "@" + day.isoformat(), None, at))
    return pd.concat(out, ignore_index=True)


def interested(views: pd.DataFrame, bought: pd.DataFrame) -> pd.DataFrame:
    """customer_id, sku, at: the latest view, cart add or wishlist add of an item not bought since.
    `views`: customer_id, sku, at; `bought`: customer_id, sku, ordered_at."""
    if views.empty:
        return views.assign(at=pd.Series(dtype="datetime64[ns, UTC]"))
    latest = views.groupby(["customer_id", "sku"], as_index=False)["at"].max()
    if len(bought):
        last_buy = bought.groupby(["customer_id", "sku"], as_index=False)["ordered_at"].max()
        latest = latest.merge(last_buy, on=["customer_id", "sku"], how="left")
        latest = latest[latest["ordered_at"].isna() | (latest["ordered_at"] < latest["at"])]
    return latest[["customer_id", "sku", "at"]]


def back_in_stock(
    before: pd.DataFrame, now: pd.DataFrame, interest: pd.DataFrame, day: dt.date
) -> pd.DataFrame:
    """`before`, `now`: sku, on_hand at the stock location on the previous and the day's snapshot."""
    if before.empty or now.empty:
        return _rows("back_in_stock", [], [], [], [])
    was = before.groupby("sku")["on_hand"].sum()
    is_ = now.groupby("sku")["on_hand"].sum()
    back = set(was[was <= 0].index) & set(is_[is_ > 0].index)
    hit = interest[interest["sku"].isin(back)]
    at = dt.datetime.combine(day, dt.time(), dt.UTC)
    return _rows("back_in_stock", hit["customer_id"], hit["sku"] + "@" + day.isoformat(), hit["sku"], at)


def price_drops(promos: pd.DataFrame, prices: pd.Series, interest: pd.DataFrame) -> pd.DataFrame:
    """`promos`: promo_id, sku, promo_price, starts_at of promotions starting that day; `prices`: the
    regular price by sku."""
    if promos.empty:
        return _rows("price_drop", [], [], [], [])
    regular = promos["sku"].map(prices)
    cheaper = promos[regular.notna() & (promos["promo_price"].astype(float) < regular.astype(float))]
    hit = interest.merge(cheaper[["sku", "promo_id", "starts_at"]], on="sku")
    return _rows("price_drop", hit["customer_id"], hit["promo_id"], hit["sku"], hit["starts_at"])


def replenishments(lines: pd.DataFrame, day: dt.date, min_purchases: int) -> pd.DataFrame:
    """`lines`: customer_id, sku, ordered_at (up to the end of `day`). Items due the day after."""
    if lines.empty:
        return _rows("replenishment", [], [], [], [])
    days = lines.assign(d=pd.to_datetime(lines["ordered_at"]).dt.normalize()).drop_duplicates(
        ["customer_id", "sku", "d"]
    )
    days = days.sort_values(["customer_id", "sku", "d"])
    days["gap"] = days.groupby(["customer_id", "sku"])["d"].diff().dt.days
    stats = days.groupby(["customer_id", "sku"]).agg(
        n=("d", "size"), last=("d", "max"), gap=("gap", "median")
    )
    stats = stats[(stats["n"] >= min_purchases) & (stats["gap"] >= 1)].reset_index()
    due = (stats["last"] + pd.to_timedelta(stats["gap"].round(), unit="D")).dt.date
    hit = stats[due == day + dt.timedelta(days=1)]
    at = dt.datetime.combine(day, dt.time(), dt.UTC)
    return _rows(
        "replenishment",
        hit["customer_id"],
        hit["sku"] + "@" + (day + dt.timedelta(days=1)).isoformat(),
        hit["sku"],
        at,
    )


# ------------------------------------------------------------------------------------------ lake
def find(settings, con, day: dt.date) -> pd.DataFrame:
    """Every nightly trigger of `day` (before history and the ledger), read from the lake in DuckDB."""
    from p13n.analytics.sql import render
    from p13n.lake.duck import scan, table_exists
    from p13n.lake.tables import GOLD_IDENTITY_KEYS, RESTRICTED_CUSTOMER_PROFILES, silver_table

    root, cfg = settings.lake_root, settings.stream.triggers
    have = lambda t: table_exists(root, t)  # noqa: E731
    if not have(GOLD_IDENTITY_KEYS):
        return _rows("checkout_abandoned", [], [], [], [])
    t = lambda name: scan(root, name)  # noqa: E731
    keys = t(GOLD_IDENTITY_KEYS)
    start = dt.datetime.combine(day, dt.time())
    end = start + dt.timedelta(days=1)
    found = []
    orders_sql = render("SELECT customer_id, ordered_at FROM {{ orders }}", t)
    lines_sql = render("SELECT customer_id, sku, ordered_at FROM {{ order_lines }}", t)
    sales = (
        "shopify_orders",
        "shopify_order_lines",
        "square_transactions",
        "square_line_items",
        "legacy_pos_sales",
    )
    has_sales = all(have(silver_table(s)) for s in sales)
    if have(silver_table("shopify_abandoned_checkouts")):
        checkouts = con.execute(
            f"""SELECT k.customer_id, c.checkout_id, CAST(c.created_at AS TIMESTAMP) AS created_at, c.skus
                FROM {t(silver_table("shopify_abandoned_checkouts"))} c
                JOIN {keys} k ON k.key_type = 'shopify_customer_id' AND k.key_value = c.customer_id
                WHERE CAST(c.created_at AS TIMESTAMP) >= ? AND CAST(c.created_at AS TIMESTAMP) < ?""",
            [start, end],
        ).df()
        orders = (
            con.execute(
                f"SELECT * FROM ({orders_sql}) WHERE ordered_at >= ? AND ordered_at < ?", [start, end]
            ).df()
            if has_sales
            else pd.DataFrame(columns=["customer_id", "ordered_at"])
        )
        found.append(checkout_abandonments(checkouts, orders))
    if have(RESTRICTED_CUSTOMER_PROFILES):
        people = con.execute(
            f"SELECT customer_id, birth_date FROM {t(RESTRICTED_CUSTOMER_PROFILES)} "
            "WHERE birth_date IS NOT NULL"
        ).df()
        found.append(birthdays(people, day, cfg.birthday_days_ahead))
    bought = (
        con.execute(f"SELECT * FROM ({lines_sql}) WHERE ordered_at < ?", [end]).df()
        if has_sales
        else pd.DataFrame(columns=["customer_id", "sku", "ordered_at"])
    )
    views = []
    since = start - dt.timedelta(days=cfg.interest_days - 1)
    looks = (  # (source, its time, which of its rows show interest in an item)
        (
            "web_clickstream",
            "event_at",
            "w.sku IS NOT NULL AND w.event_type IN ('product_view', 'add_to_cart')",
        ),
        ("wishlists", "occurred_at", "w.action = 'add'"),
    )
    for source, at, which in looks:
        if have(silver_table(source)):
            views.append(
                con.execute(
                    f"""SELECT k.customer_id, w.sku, CAST(w.{at} AS TIMESTAMP) AS at
                        FROM {t(silver_table(source))} w
                        JOIN {keys} k ON k.key_type = 'shopify_customer_id' AND k.key_value = w.customer_id
                        WHERE {which} AND CAST(w.{at} AS TIMESTAMP) >= ? AND CAST(w.{at} AS TIMESTAMP) < ?""",
                    [since, end],
                ).df()
            )
    interest = interested(
        pd.concat(views, ignore_index=True) if views else pd.DataFrame(columns=["customer_id", "sku", "at"]),
        bought,
    )
    location = settings.recommend.stock_location
    if have(silver_table("inventory_snapshots")) and location:
        snap = t(silver_table("inventory_snapshots"))
        before = con.execute(
            f"SELECT max(snapshot_date) FROM {snap} WHERE snapshot_date < ? AND location_id = ?",
            [day, location],
        ).fetchone()[0]
        read = f"SELECT sku, on_hand FROM {snap} WHERE snapshot_date = ? AND location_id = ?"
        if before is not None:
            found.append(
                back_in_stock(
                    con.execute(read, [before, location]).df(),
                    con.execute(read, [day, location]).df(),
                    interest,
                    day,
                )
            )
    if have(silver_table("prices_promotions")) and have(silver_table("products")):
        promos = con.execute(
            f"""SELECT promo_id, sku, promo_price, CAST(starts_at AS TIMESTAMP) AS starts_at
                FROM {t(silver_table("prices_promotions"))}
                WHERE CAST(starts_at AS TIMESTAMP) >= ? AND CAST(starts_at AS TIMESTAMP) < ?""",
            [start, end],
        ).df()
        prices = (
            con.execute(
                f"SELECT sku, arg_max(price, updated_at) AS price FROM {t(silver_table('products'))} "
                "GROUP BY sku"
            )
            .df()
            .set_index("sku")["price"]
        )
        found.append(price_drops(promos, prices, interest))
    if has_sales:
        found.append(replenishments(bought, day, cfg.min_repeat_purchases))
    if have(silver_table("loyalty_members")):
        found += _loyalty(settings, con, day, t, orders_sql if has_sales else None)
    found = [f for f in found if len(f)]
    return pd.concat(found, ignore_index=True) if found else _rows("checkout_abandoned", [], [], [], [])


def _loyalty(settings, con, day: dt.date, t, orders_sql: str | None) -> list[pd.DataFrame]:
    """The loyalty program's triggers: anniversaries, points expiring, tier moves."""
    from p13n.lake.duck import table_exists
    from p13n.lake.tables import GOLD_IDENTITY_KEYS, bronze_table, silver_table
    from p13n.sources.catalog import catalog

    cfg, root = settings.stream.triggers, settings.lake_root
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time())
    keys = f"(SELECT key_value, customer_id FROM {t(GOLD_IDENTITY_KEYS)} WHERE key_type = 'loyalty_id')"
    ledger = (
        f"""UNION ALL SELECT loyalty_id, CAST(posted_at AS TIMESTAMP)
            FROM {t(silver_table("loyalty_points_ledger"))}"""
        if table_exists(root, silver_table("loyalty_points_ledger"))
        else ""
    )
    orders = (
        f"UNION ALL SELECT m.loyalty_id, o.ordered_at FROM ({orders_sql}) o "
        f"JOIN {keys} k ON k.customer_id = o.customer_id "
        f"JOIN {t(silver_table('loyalty_members'))} m ON m.loyalty_id = k.key_value"
        if orders_sql
        else ""
    )
    lm = t(silver_table("loyalty_members"))
    members = con.execute(
        f"""WITH activity AS (
                SELECT loyalty_id, CAST(enrolled_at AS TIMESTAMP) AS act FROM {lm} {ledger} {orders}),
            latest AS (SELECT loyalty_id, max(act) AS last_activity FROM activity WHERE act < ? GROUP BY 1)
            SELECT k.customer_id, m.loyalty_id, m.points_balance,
                   CAST(m.enrolled_at AS TIMESTAMP) AS enrolled_at, l.last_activity
            FROM {lm} m JOIN {keys} k ON k.key_value = m.loyalty_id LEFT JOIN latest l USING (loyalty_id)
            WHERE CAST(m.enrolled_at AS TIMESTAMP) < ?""",
        [end, end],
    ).df()
    out = [
        anniversaries(members, day, cfg.anniversary_days_ahead),
        points_expiring(members, day, cfg.points_inactive_days, cfg.points_warning_days),
    ]
    bronze = bronze_table("loyalty_members")
    if table_exists(root, bronze):
        tiers = next(c.values for c in catalog()["loyalty_members"].columns if c.name == "tier")
        latest = f"""SELECT loyalty_id, lower(trim(tier)) AS tier FROM {t(bronze)}
                     WHERE {{}} AND tier IS NOT NULL
                     QUALIFY row_number() OVER (
                         PARTITION BY loyalty_id ORDER BY _batch_date DESC, updated_at DESC) = 1"""
        before = con.execute(latest.format("_batch_date < ?"), [day]).df()
        now = con.execute(
            f"SELECT k.customer_id, n.loyalty_id, n.tier FROM ({latest.format('_batch_date = ?')}) n "
            f"JOIN {keys} k ON k.key_value = n.loyalty_id",
            [day],
        ).df()
        out.append(tier_changes(before, now, tiers, day))
    return out


def run_nightly_triggers(settings, day: dt.date) -> dict[str, dict[str, int]]:
    """Find the night's triggers, drop those fired on earlier dates, pass the rest through the
    contact ledger and replace the date's rows of these kinds in `gold.triggered_audiences`."""
    import pyarrow as pa

    from p13n.lake.duck import duckdb_connection, literal, replace_rows, scan, table_exists
    from p13n.lake.tables import GOLD_TRIGGERED_AUDIENCES
    from p13n.measurement.sends import send_time
    from p13n.streaming.tasks import with_cadence
    from p13n.streaming.triggers import COLUMNS, SCHEMA

    con = duckdb_connection(settings=settings)
    root = settings.lake_root
    found = find(settings, con, day).drop_duplicates("trigger_id")
    if table_exists(root, GOLD_TRIGGERED_AUDIENCES) and len(found):
        earlier = {
            r[0]
            for r in con.execute(
                f"SELECT trigger_id FROM {scan(root, GOLD_TRIGGERED_AUDIENCES)} WHERE trigger_date < ?", [day]
            ).fetchall()
        }
        found = found[~found["trigger_id"].isin(earlier)]
    at = send_time(day)
    found = found.assign(
        channel=found["trigger"].map(settings.stream.triggers.channels).fillna("email"),
        triggered_at=at,
        trigger_date=day,
        status="sent",
        reason="",
    )
    decided = with_cadence(settings, con, found[COLUMNS], at, programs=[("trigger", k) for k in KINDS])
    kinds = ", ".join(literal(k) for k in KINDS)
    table = pa.Table.from_pandas(decided[COLUMNS], schema=SCHEMA, preserve_index=False)
    if len(decided) or table_exists(root, GOLD_TRIGGERED_AUDIENCES):
        replace_rows(
            settings,
            GOLD_TRIGGERED_AUDIENCES,
            table,
            f"trigger_date = {literal(day)} AND trigger IN ({kinds})",
            partition_by=["trigger_date"],
        )
    out: dict[str, dict[str, int]] = {k: {} for k in KINDS}
    for (kind, status), n in decided.groupby(["trigger", "status"]).size().items():
        out[kind][status] = int(n)
    return out
