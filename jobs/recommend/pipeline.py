"""Recommendations over the lake: interactions, the evaluated and gated recipe, and every list.

Every table is partitioned by `as_of_date` (the run's date); a run replaces its own partition.

* `gold.interactions` — per customer and item: the decayed weight of purchases, carts, wishlist adds
  and views (returns count against), with counts per kind and the last time
* `gold.recommendations` — per customer: `personalized` (the blend channels show: ALS, item
  similarity, buy it again, bought together with the last order, popular in segment, trending —
  after the business rules and topped up by the fallback chain), `buy_again`, `recently_viewed`,
  `popular_in_segment`; each row with its score, the list it came from and a reason
* `gold.item_similarity` — per item its similar items (behaviour first, then content for new or
  sparse items, so every product page gets a full list)
* `gold.bought_together` — per item the items bought in the same orders (support, confidence, lift)
* `gold.trending`, `gold.popular_items` — shared lists: per category / per segment and overall
* `ops.model_runs` — the recommender's evaluation and gate decision (as the customer models')

The *recipe* (ALS engine and parameters, blend weights) is what MLflow registers and gates: each run
tunes a challenger on a time split that holds out each customer's latest order, evaluates every model
and the served list against the popularity baseline, and retrains the champion recipe on the same
split to compare. The lists are then computed with the champion recipe on all the data.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd
from pyspark.sql import functions as F

from p13n.config import Settings
from p13n.customers import activity as act
from p13n.customers.features import interval_end
from p13n.lake import Lake
from p13n.lake.tables import (
    GOLD_BOUGHT_TOGETHER,
    GOLD_CUSTOMER_PROFILES,
    GOLD_IDENTITY_KEYS,
    GOLD_INTERACTIONS,
    GOLD_ITEM_SIMILARITY,
    GOLD_POPULAR_ITEMS,
    GOLD_RECOMMENDATIONS,
    GOLD_SEGMENTS,
    GOLD_TRENDING,
    OPS_ERASURES,
    silver_table,
)
from p13n.models import evaluation as ev
from p13n.models import lists as L
from p13n.models import nextbasket as nb
from p13n.models.lifecycle import Lifecycle
from p13n.models.nextbasket import MIN_REPEAT_RATE
from p13n.models.recommenders import ImplicitALS, Interactions, ItemSimilarity, Popularity, not_repeating
from p13n.runctx import RunContext
from p13n.spark import to_pandas

PERSONAL = ("next_basket", "als", "item_similarity", "buy_again", "bought_together")
CUSTOMER_LISTS = ("personalized", "buy_again", "recently_viewed", "popular_in_segment")
Progress = Callable[[str], None]


# ------------------------------------------------------------------------------------ data
@dataclass
class Data:
    """Everything the recommenders read, as pandas frames on integer codes (see `models.lists`)."""

    users: pd.Index  # customer ids (every scored customer)
    items: pd.Index  # skus (the catalog plus anything sold)
    events: pd.DataFrame  # user, item, at, kind, weight, order
    category: np.ndarray
    brand: np.ndarray
    price: np.ndarray
    title: np.ndarray
    repeatable: np.ndarray  # the catalog's flag per item: 1.0, 0.0 or NaN (not in the catalog)
    unavailable: np.ndarray
    segment: pd.Series  # user → persona
    consented: np.ndarray  # per user: personalization allowed
    end: pd.Timestamp
    versions: dict[str, int] = field(default_factory=dict)

    @property
    def purchases(self) -> pd.DataFrame:
        return self.events[self.events["kind"] == "purchase"]


def _event_log(lake: Lake, activity, settings: Settings, as_of: dt.date):
    """Spark: customer_id, sku, at, kind, weight, order_id for the history window before the run's end."""
    cfg = settings.recommend
    end = interval_end(as_of)
    start = end - dt.timedelta(days=cfg.history_days)
    keys = lake.read(GOLD_IDENTITY_KEYS)
    wish = act.attribute(lake.read(silver_table("wishlists")), keys, [("shopify_customer_id", "customer_id")])

    def as_events(df, at: str, kind, order=None):
        kind = F.lit(kind) if isinstance(kind, str) else kind
        order = F.col(order) if order else F.lit(None).cast("string")
        return df.select(
            "customer_id", "sku", F.col(at).alias("at"), kind.alias("kind"), order.alias("order_id")
        )

    behaviour = activity.events.filter(F.col("event_type").isin("product_view", "add_to_cart"))
    parts = [
        as_events(activity.lines, "ordered_at", "purchase", "order_id"),
        as_events(behaviour, "at", F.col("event_type")),
        as_events(wish.filter(F.col("action") == "add"), "occurred_at", "wishlist"),
        as_events(activity.returns, "returned_at", "return"),
    ]
    log = parts[0]
    for p in parts[1:]:
        log = log.unionByName(p)
    weight = F.lit(0.0)
    for kind, w in cfg.weights.items():
        weight = F.when(F.col("kind") == kind, F.lit(float(w))).otherwise(weight)
    return log.filter(
        F.col("customer_id").isNotNull()
        & F.col("sku").isNotNull()
        & (F.col("at") >= F.lit(start))
        & (F.col("at") < F.lit(end))
    ).withColumn("weight", weight)


def erased_customers(lake: Lake) -> set[str]:
    """Customer ids with an erasure on record (`ops.erasures`, written by privacy requests): never scored."""
    if not lake.exists(OPS_ERASURES):
        return set()
    return set(to_pandas(lake.read(OPS_ERASURES, columns=["customer_id"]))["customer_id"].dropna())


def read_data(lake: Lake, settings: Settings, as_of: dt.date) -> Data:
    from p13n.customers.pipeline import read_activity

    for t in (silver_table("wishlists"), silver_table("inventory_snapshots"), GOLD_SEGMENTS):
        if not lake.exists(t):
            raise FileNotFoundError(f"recommendations need {t}: ingest the sources and score customers first")
    activity = read_activity(lake)
    log = to_pandas(_event_log(lake, activity, settings, as_of))
    profiles = to_pandas(
        lake.read(GOLD_CUSTOMER_PROFILES, columns=["customer_id", "consent_personalization"])
    )
    erased = erased_customers(lake)
    profiles = profiles[~profiles["customer_id"].isin(erased)].sort_values("customer_id")
    log = log[~log["customer_id"].isin(erased)]
    products = (
        to_pandas(lake.read(silver_table("products"))).drop_duplicates("sku", keep="last").set_index("sku")
    )
    users = pd.Index(profiles["customer_id"].to_numpy(), name="customer_id")
    items = pd.Index(sorted(set(products.index) | set(log["sku"])), name="sku")
    log = log[log["customer_id"].isin(users)]
    events = pd.DataFrame(
        {
            "user": users.get_indexer(log["customer_id"]),
            "item": items.get_indexer(log["sku"]),
            "at": pd.to_datetime(log["at"], utc=True),
            "kind": log["kind"].to_numpy(),
            "weight": log["weight"].to_numpy(float),
            "order": log["order_id"].to_numpy(),
        }
    )
    # Spark returns rows in no particular order: sort, so sums (and so every list) are reproducible.
    events = events.sort_values(["user", "at", "item", "kind"], kind="stable").reset_index(drop=True)
    prod = products.reindex(items)
    segments = to_pandas(
        lake.read(GOLD_SEGMENTS, where=[("as_of_date", "=", as_of)], columns=["customer_id", "persona"])
    )
    if segments.empty:
        raise LookupError(
            f"{GOLD_SEGMENTS} has no rows for as_of_date {as_of}: score customers for that date first"
        )
    seg = segments.assign(user=users.get_indexer(segments["customer_id"]))
    seg = seg[seg["user"] >= 0].set_index("user")["persona"]
    end = pd.Timestamp(interval_end(as_of))
    versions = {
        t: lake.delta_table(t).version()
        for t in (
            silver_table("wishlists"),
            silver_table("inventory_snapshots"),
            silver_table("products"),
            GOLD_SEGMENTS,
            GOLD_CUSTOMER_PROFILES,
        )
    }
    versions |= activity.versions
    return Data(
        users=users,
        items=items,
        events=events,
        category=prod["category"].fillna("unknown").to_numpy(str),
        brand=prod["brand"].fillna("unknown").to_numpy(str),
        price=pd.to_numeric(prod["price"], errors="coerce").to_numpy(float),
        title=prod["title"].fillna("").to_numpy(str),
        repeatable=pd.to_numeric(prod["repeatable"], errors="coerce").to_numpy(float),
        unavailable=_out_of_stock(lake, settings, as_of, items),
        segment=seg,
        consented=(profiles["consent_personalization"].fillna("granted") != "revoked").to_numpy(),
        end=end,
        versions=versions,
    )


def _out_of_stock(lake: Lake, settings: Settings, as_of: dt.date, items: pd.Index) -> np.ndarray:
    """Per item: nothing on hand in the latest snapshot on or before the run date (at the configured
    location, or at any). Items the inventory feed does not track count as available."""
    inv = lake.read(
        silver_table("inventory_snapshots"), columns=["snapshot_date", "location_id", "sku", "on_hand"]
    )
    inv = inv.filter(F.col("snapshot_date") <= F.lit(as_of))
    loc = settings.recommend.stock_location
    if loc:
        inv = inv.filter(F.col("location_id") == loc)
    latest = inv.agg(F.max("snapshot_date")).first()[0]
    out = np.zeros(len(items), bool)
    if latest is None:
        return out
    stock = to_pandas(
        inv.filter(F.col("snapshot_date") == latest).groupBy("sku").agg(F.sum("on_hand").alias("on_hand"))
    )
    idx = items.get_indexer(stock["sku"])
    ok = idx >= 0
    out[idx[ok]] = stock["on_hand"].to_numpy()[ok] <= 0
    return out


# ------------------------------------------------------------------------------- the recipe
@dataclass
class Recipe:
    """What is registered and gated: the engine, ALS parameters and the blend weights."""

    engine: str
    als: dict
    blend: dict[str, float]
    half_life_days: float

    def as_dict(self) -> dict:
        return asdict(self)


def _fit_als(recipe: Recipe, seen, skip, spark, seed: int):
    """The recipe's ALS fitted on the `seen` weights, leaving out the `skip` pairs when it ranks."""
    if recipe.engine == "spark":
        from p13n.models.spark_als import SparkALS

        model = SparkALS(spark, **recipe.als, seed=seed)
    else:
        model = ImplicitALS(**recipe.als, seed=seed)
    return model.fit(seen).excluding(skip)


@dataclass
class Lists:
    """The per-user candidate lists and item-level tables one fitted recipe produces."""

    components: dict[str, pd.DataFrame]
    similar: pd.DataFrame
    together: pd.DataFrame
    trending: pd.DataFrame
    popular: pd.DataFrame
    seen: object
    similarity: object
    repeats: np.ndarray  # per item: bought again (learned, the catalog's flag overriding)


@dataclass
class Fitted:
    """Every model of a recipe fitted on some events, before any user's list is drawn from it."""

    als: object
    sim: ItemSimilarity
    seen: object  # the user × item weight matrix
    purchases: pd.DataFrame
    buy_again: pd.DataFrame  # for every user asked for (its cadences are learned across users)
    together: pd.DataFrame
    popular: pd.DataFrame
    trending: pd.DataFrame
    similar: pd.DataFrame  # item, other, rank, score
    depth: int
    repeats: np.ndarray
    basket: nb.NextBasket | None  # None when `basket_lists` came with the inputs
    basket_lists: pd.DataFrame | None = None  # every user's next-basket list, drawn beforehand


def repeating(data: Data, purchases: pd.DataFrame) -> np.ndarray:
    """Per item: is it bought again? The catalog's `repeatable` flag where it has one, else learned
    from `purchases`: the item's repeat rate (`nb.repeat_rates`, per category for items with few
    buyers) at least MIN_REPEAT_RATE. Items nobody bought follow their category, else the catalog."""
    flag = np.asarray(data.repeatable, dtype=float)
    learned = np.zeros(len(data.items), bool)
    if len(purchases):
        rates = nb.repeat_rates(purchases[["user", "item", "at"]], pd.Series(data.category)).set_index("item")
        learned[rates.index.to_numpy()] = rates["rate"].to_numpy() >= MIN_REPEAT_RATE
        cat_rate = rates.groupby(data.category[rates.index.to_numpy()])["category_rate"].first()
        unseen = np.setdiff1d(np.arange(len(data.items)), rates.index.to_numpy())
        learned[unseen] = (
            pd.Series(data.category[unseen]).map(cat_rate).fillna(0).to_numpy() >= MIN_REPEAT_RATE
        )
    return np.where(np.isnan(flag), learned, flag > 0)


def fit_models(
    data: Data,
    events: pd.DataFrame,
    users: np.ndarray,
    recipe: Recipe,
    settings: Settings,
    spark,
    end: pd.Timestamp | pd.Series,
    basket_lists: pd.DataFrame | None = None,
    progress: Progress | None = None,
) -> Fitted:
    """Fit every model of `recipe` on `events`; `users` are those whose buy-again lists are wanted.
    `basket_lists`: the next-basket lists `next_basket_lists` drew on the same events (its model is
    then not fitted again). `progress` hears when the next-basket model is fitted, before ALS."""
    cfg = settings.recommend
    sizes = cfg.list_sizes
    global_end = data.end if isinstance(end, pd.Series) else end
    weights = L.decayed_weights(events, global_end, recipe.half_life_days)
    shape = (len(data.users), len(data.items))
    m = Interactions.from_frame(
        weights, weight="weight", users=pd.RangeIndex(shape[0]), items=pd.RangeIndex(shape[1])
    ).matrix
    purchases = events[events["kind"] == "purchase"]
    repeats = repeating(data, purchases)
    buy_again = L.buy_again(purchases, repeats, end, sizes["buy_again"])
    together = L.bought_together(
        purchases, shape[1], cfg.bought_together_min_support, sizes["bought_together"]
    )
    depth = 2 * sizes["personalized"]
    pop = L.popular(purchases, data.segment, global_end, cfg.popular_days, max(sizes["popular"], depth))
    trend = L.trending(
        events[events["kind"] != "return"],
        data.category,
        global_end,
        cfg.trending_days,
        cfg.trending_baseline_days,
        sizes["trending"],
    )
    skip = not_repeating(m, repeats)
    sim = ItemSimilarity().fit(m).excluding(skip)
    basket = None
    if basket_lists is None:
        start = time.monotonic()
        basket = _fit_basket(data, purchases, settings)
        if progress is not None:
            progress(
                f"recommend: next-basket model fitted on {len(purchases):,} purchases in "
                f"{time.monotonic() - start:.1f} s"
            )
    return Fitted(
        als=_fit_als(recipe, m, skip, spark, cfg.seed),
        sim=sim,
        seen=m,
        purchases=purchases,
        buy_again=buy_again[buy_again["user"].isin(users)],
        together=together,
        popular=pop,
        trending=trend,
        similar=sim.similar_items(sizes["similar_items"]).rename(
            columns={"item_a": "item", "item_b": "other"}
        ),
        depth=depth,
        repeats=repeats,
        basket=basket,
        basket_lists=basket_lists,
    )


def _fit_basket(data: Data, purchases: pd.DataFrame, settings: Settings) -> nb.NextBasket:
    return nb.NextBasket(seed=settings.recommend.seed).fit(_baskets(purchases), pd.Series(data.category))


def _user_batches(n_users: int, settings: Settings):
    """The users' codes in the batches lists are drawn in (`recommend.list_batch_customers`)."""
    users = np.arange(n_users)
    batch = max(1, settings.recommend.list_batch_customers)
    for start in range(0, max(n_users, 1), batch):
        yield users[start : start + batch]


def _basket_list(basket: nb.NextBasket, purchases: pd.DataFrame, users: np.ndarray, depth: int):
    return basket.recommend(_baskets(purchases[purchases["user"].isin(users)]), depth)


def next_basket_lists(data: Data, settings: Settings) -> pd.DataFrame:
    """Every customer's next-basket list as `build_lists` draws it: the model fitted on every purchase,
    the lists drawn per batch of customers. The recommendations DAG draws it in a task beside train
    (it needs no recipe, and each task gets its share of the cores: `share_cores`), and `build_lists`
    takes it instead of fitting the model again (it was half of the lists task's time)."""
    purchases = data.events[data.events["kind"] == "purchase"]
    basket = _fit_basket(data, purchases, settings)
    depth = 2 * settings.recommend.list_sizes["personalized"]
    parts = [
        _basket_list(basket, purchases, chunk, depth) for chunk in _user_batches(len(data.users), settings)
    ]
    return pd.concat(parts, ignore_index=True)


def _baskets(purchases: pd.DataFrame) -> pd.DataFrame:
    """Purchases as next-basket rows: an order is a basket (a line without an order id: its time)."""
    order = purchases["order"].astype(object).where(purchases["order"].notna(), purchases["at"].astype(str))
    return pd.DataFrame(
        {
            "user": purchases["user"],
            "item": purchases["item"],
            "at": purchases["at"],
            "basket": order.astype(str),
        }
    )


def lists_for(fitted: Fitted, data: Data, users: np.ndarray, settings: Settings) -> Lists:
    """Each list for `users` (any subset of the users `fitted` was asked for) from the fitted models."""
    f = fitted
    if f.basket_lists is None:
        basket = _basket_list(f.basket, f.purchases, users, f.depth)
    else:
        basket = f.basket_lists[f.basket_lists["user"].isin(users)].reset_index(drop=True)
    comps = {
        "next_basket": basket,
        "als": f.als.recommend(users, f.depth),
        "item_similarity": f.sim.recommend(users, f.depth),
        "buy_again": f.buy_again[f.buy_again["user"].isin(users)],
        "bought_together": _with_last_order(f.purchases, f.together, users, f.depth),
    }
    seg_lists = f.popular[f.popular["scope"] != "all"]
    comps["popular_in_segment"] = L.expand_shared(seg_lists, data.segment.reindex(users))
    trend = f.trending
    comps["trending"] = L.expand_shared(trend[trend["scope"] == "all"], pd.Series("all", index=users))
    comps["popular"] = L.expand_shared(f.popular[f.popular["scope"] == "all"], pd.Series("all", index=users))
    return Lists(comps, f.similar, f.together, trend, f.popular, f.seen, f.sim.similarity, f.repeats)


def fit_lists(
    data: Data,
    events: pd.DataFrame,
    users: np.ndarray,
    recipe: Recipe,
    settings: Settings,
    spark,
    end: pd.Timestamp | pd.Series | None = None,
) -> Lists:
    """Fit every model on `events` and produce each list for `users`. `end` is when the lists are for:
    the run's end, or per user their own cut-off (evaluation)."""
    end = data.end if end is None else end
    fitted = fit_models(data, events, users, recipe, settings, spark, end)
    return lists_for(fitted, data, users, settings)


def _with_last_order(
    purchases: pd.DataFrame, together: pd.DataFrame, users: np.ndarray, k: int
) -> pd.DataFrame:
    """Per user: the items bought together with the items of their last order, by confidence; anchor =
    that item."""
    p = purchases[purchases["user"].isin(users)]
    if p.empty or together.empty:
        return pd.DataFrame(columns=["user", "item", "rank", "score", "anchor"])
    last = p[p["at"] == p.groupby("user")["at"].transform("max")][["user", "item"]].drop_duplicates()
    pairs = last.rename(columns={"item": "anchor"}).merge(
        together.rename(columns={"item": "anchor", "other": "item"})[["anchor", "item", "confidence"]],
        on="anchor",
    )
    pairs = pairs.sort_values("confidence", ascending=False).drop_duplicates(["user", "item"])
    return L.rank_within(pairs.rename(columns={"confidence": "score"}), "user", k=k)[
        ["user", "item", "rank", "score", "anchor"]
    ]


def served(
    data: Data,
    lists: Lists,
    users: np.ndarray,
    events: pd.DataFrame,
    recipe: Recipe,
    settings: Settings,
    stock: bool = True,
    end: pd.Series | None = None,
) -> pd.DataFrame:
    """The personalized list channels show: fused, business rules applied, topped up by the fallback
    chain (popular in segment → popular overall). Customers who objected to personalization get the
    overall popular list only. The rules drop items bought before that do not repeat, and repeating
    ones bought less than `recommend.due_share` of their cadence ago (`end`: per user, when evaluating).
    Returns user, item, rank, score, source, anchor."""
    cfg = settings.recommend
    k = cfg.list_sizes["personalized"]
    comps = {n: df for n, df in lists.components.items() if n in recipe.blend}
    fused = L.fuse(comps, recipe.blend)
    if not len(fused):
        fused = pd.DataFrame(columns=["user", "item", "score", "source", "anchor"])
    consented = users[data.consented[users]]
    fused = fused[fused["user"].isin(consented)]
    exclude = _bought_not_repeatable(lists.repeats, events)
    purchases = events[events["kind"] == "purchase"]
    due_at = data.end if end is None else end
    exclude = pd.concat(
        [exclude, L.not_yet_due(purchases, lists.repeats, due_at, cfg.due_share)], ignore_index=True
    )
    unavailable = data.unavailable if stock else None
    kept = L.apply_rules(
        fused, k, exclude, unavailable, data.brand, data.category, cfg.max_per_brand, cfg.max_per_category
    )
    seg = lists.components["popular_in_segment"]
    fallbacks = [
        ("popular_in_segment", seg[seg["user"].isin(consented)]),
        ("popular", lists.components["popular"]),
    ]
    # Objectors are in neither the fused list nor the segment list: the overall popular list is all they get.
    return L.top_up(kept, users, fallbacks, k, exclude, unavailable)


def _bought_not_repeatable(repeats: np.ndarray, events: pd.DataFrame) -> pd.DataFrame:
    p = events[events["kind"] == "purchase"]
    return p[~repeats[p["item"].to_numpy()]][["user", "item"]].drop_duplicates()


# ------------------------------------------------------------------------------ evaluation
def time_split(
    events: pd.DataFrame, max_users: int | None = None, seed: int = 13
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """Each customer's latest order is the test set, for customers with activity before it (a seeded
    sample of at most `max_users` of them); the training set is everything before each test
    customer's cut-off (and all of everyone else's).
    Returns train events, test (user, item) and the cut-off per test user."""
    p = events[events["kind"] == "purchase"]
    latest = p.groupby("user")["at"].max()
    first = events.groupby("user")["at"].min()
    cut = latest[latest > first.reindex(latest.index)]
    if max_users is not None and len(cut) > max_users:
        cut = cut.sample(n=max_users, random_state=seed).sort_index()
    test = p[p["at"] == p["user"].map(cut)][["user", "item"]].drop_duplicates()
    cutoff = events["user"].map(cut)
    train = events[cutoff.isna() | (events["at"] < cutoff)]
    return train, test, cut


def evaluate_recipe(data: Data, recipe: Recipe, settings: Settings, spark, split=None) -> tuple[dict, dict]:
    """Every list and the served blend, on the time split. Returns (metrics per model, facts)."""
    return evaluate_recipes(data, [recipe], settings, spark, split)[0]


def evaluate_recipes(
    data: Data, recipes: list[Recipe], settings: Settings, spark, split=None, progress: Progress | None = None
) -> list[tuple[dict, dict]]:
    """`evaluate_recipe` of each recipe on the same split. What a recipe's ALS parameters and blend
    weights do not change (next basket, item similarity and the rule lists, given one half-life) is
    fitted once: a challenger and the champion it is gated against differ in those parameters, and the
    next-basket model is most of an evaluation's time."""
    train, test, cut = split or time_split(data.events)
    users = cut.index.to_numpy()
    fitted: dict[float, tuple[Fitted, Lists]] = {}
    out = []
    say = progress or (lambda _message: None)
    for n, recipe in enumerate(recipes, 1):
        start = time.monotonic()
        if recipe.half_life_days not in fitted:
            first = fit_models(data, train, users, recipe, settings, spark, cut, progress=progress)
            fitted[recipe.half_life_days] = first, lists_for(first, data, users, settings)
            lists = fitted[recipe.half_life_days][1]
        else:  # the same weights: only this recipe's ALS list differs
            first, shared = fitted[recipe.half_life_days]
            skip = not_repeating(first.seen, first.repeats)
            als = _fit_als(recipe, first.seen, skip, spark, settings.recommend.seed)
            lists = replace(
                shared, components={**shared.components, "als": als.recommend(users, first.depth)}
            )
        out.append(_evaluation(data, lists, recipe, settings, users, train, test, cut))
        say(
            f"recommend: recipe {n} of {len(recipes)} evaluated on {len(users):,} customers in "
            f"{time.monotonic() - start:.1f} s"
        )
    return out


def _evaluation(data: Data, lists: Lists, recipe: Recipe, settings: Settings, users, train, test, cut):
    k = settings.recommend.k
    shape = (len(data.users), len(data.items))
    m = lists.seen
    runs = {"popularity": Popularity().fit(m).excluding(not_repeating(m, lists.repeats)).recommend(users, 20)}
    runs |= {
        n: lists.components[n]
        for n in (
            "next_basket",
            "als",
            "item_similarity",
            "buy_again",
            "bought_together",
            "popular_in_segment",
            "trending",
        )
    }
    runs["personalized"] = served(data, lists, users, train, recipe, settings, stock=False, end=cut)
    popularity = pd.Series(np.asarray((m > 0).sum(axis=0)).ravel())
    category = pd.Series(data.category)
    out = {
        name: ev.list_metrics(recs, test, k, popularity, shape[0], category) for name, recs in runs.items()
    }
    facts = {"test_customers": int(len(users)), "train_events": int(len(train)), "items": shape[1]}
    return out, facts


def gate_metrics(metrics: dict, k: int) -> dict:
    """What the gate compares: the served list's NDCG@k, its lift over popularity and its catalog
    coverage (so accuracy is not bought with a narrower catalog beyond the coverage gate's tolerance)."""
    served_ndcg, base = metrics["personalized"][f"ndcg@{k}"], metrics["popularity"][f"ndcg@{k}"]
    return {
        "ndcg_at_k": served_ndcg,
        "lift_over_popularity": round(served_ndcg / base, 4) if base > 0 else 0.0,
        "coverage": metrics["personalized"]["coverage"],
    }


def tune(data: Data, settings: Settings, spark, split) -> Recipe:
    """A challenger recipe: ALS parameters tuned on the training part's own latest interactions."""
    from p13n.models.tuning import tune_als

    cfg = settings.recommend
    train = split[0]
    frame = train[train["kind"] != "return"].rename(columns={"at": "time"})[
        ["user", "item", "time", "weight"]
    ]
    make = ImplicitALS
    if cfg.engine == "spark":
        from p13n.models.spark_als import SparkALS

        def make(**kw):
            return SparkALS(spark, **kw)

    repeats = pd.Series(repeating(data, train[train["kind"] == "purchase"]))
    params = tune_als(
        frame,
        cfg.k,
        cfg.seed,
        grid=cfg.als_grid,
        make=make,
        iterations=cfg.als_iterations,
        max_users=cfg.tune_max_users,
        repeats=repeats,
    )
    params["iterations"] = cfg.als_iterations
    return Recipe(cfg.engine, params, dict(cfg.blend), cfg.half_life_days)


# ----------------------------------------------------------------------------------- steps
def build_interactions(
    lake: Lake, data: Data, settings: Settings, as_of: dt.date, run: RunContext | None = None
) -> dict:
    """gold.interactions for the run date: decayed weight, counts per kind and the last time."""
    e = data.events
    w = L.decayed_weights(e, data.end, settings.recommend.half_life_days)
    counts = e.pivot_table(
        index=["user", "item"], columns="kind", values="weight", aggfunc="size", fill_value=0
    )
    counts = counts.reindex(
        columns=["purchase", "add_to_cart", "wishlist", "product_view", "return"], fill_value=0
    )
    last = e.groupby(["user", "item"])["at"].max().rename("last_at")
    t = w.set_index(["user", "item"]).join(counts).join(last).reset_index()
    table = pd.DataFrame(
        {
            "customer_id": data.users[t["user"].to_numpy()],
            "sku": data.items[t["item"].to_numpy()],
            "as_of_date": as_of,
            "weight": t["weight"].round(4),
            "purchases": t["purchase"].astype(int),
            "carts": t["add_to_cart"].astype(int),
            "wishlists": t["wishlist"].astype(int),
            "views": t["product_view"].astype(int),
            "returns": t["return"].astype(int),
            "last_at": t["last_at"],
        }
    )
    lake.replace_partition_rows(GOLD_INTERACTIONS, table, "as_of_date", as_of, run=run)
    return {
        "customers": int(table["customer_id"].nunique()),
        "items": int(table["sku"].nunique()),
        "pairs": len(table),
    }


def train_recommender(
    lake: Lake,
    settings: Settings,
    data: Data,
    as_of: dt.date,
    run: RunContext | None = None,
    progress: Progress = print,
):
    """Tune a challenger, evaluate it and the champion recipe on the same split, register and gate.
    Returns (ModelRun, the recipe to serve, the evaluation table)."""
    import mlflow

    from p13n.models.registry import GateRule, run_key

    cfg = settings.recommend
    life = Lifecycle(
        settings,
        "recommend",
        flavor="pyfunc",
        rules={m: GateRule(**g.model_dump()) for m, g in cfg.gates.items()},
    )
    spark = lake.spark
    split = time_split(data.events, cfg.eval_max_users, cfg.seed)
    if split[1].empty:
        raise LookupError(
            "no customer has an order after earlier activity: nothing to evaluate recommendations on"
        )
    challenger = tune(data, settings, spark, split)
    progress(f"recommend: challenger {challenger.engine} ALS {challenger.als}")
    champ = _recipe(life.champion())
    rivals = [challenger] if champ is None or champ == challenger else [challenger, champ]
    evaluations = evaluate_recipes(data, rivals, settings, spark, split, progress=progress)
    table, facts = evaluations[0]
    metrics = gate_metrics(table, cfg.k)
    champ_metrics = None if champ is None else gate_metrics(evaluations[-1][0], cfg.k)
    params = {
        "engine": challenger.engine,
        **{f"als.{k}": v for k, v in challenger.als.items()},
        **{f"blend.{k}": v for k, v in challenger.blend.items()},
        **facts,
    }
    with life.tracked(as_of, params, data.versions):
        mlflow.log_metrics(
            metrics | {f"{m}.{k.replace('@', '_at_')}": v for m, r in table.items() for k, v in r.items()}
        )
        mlflow.log_dict(table, "evaluation.json")
        info = mlflow.pyfunc.log_model(
            name="model", python_model=_recipe_model(challenger), pip_requirements=["pandas"]
        )
        # A rerun with the same inputs *and* the same recommend settings keeps its first decision; a
        # changed setting (blend weights, grid…) is a new challenger.
        contents = {t: lake.content_key(t, v) for t, v in data.versions.items()}
        key = run_key(as_of, contents, extra=cfg.model_dump_json())
        decision = life.gate(info.model_uri, metrics, champ_metrics, key)
    progress(decision.summary())
    recipe = _recipe(life.serving())
    out = life.record(lake, as_of, metrics | {"test_customers": facts["test_customers"]}, run=run)
    return out, recipe, table


def _recipe_model(recipe: Recipe):
    import mlflow.pyfunc

    class RecipeModel(mlflow.pyfunc.PythonModel):
        """The recommender recipe: `predict` returns its engine, ALS parameters and blend weights."""

        def __init__(self, recipe: dict):
            self.recipe = recipe

        def predict(self, context, model_input, params=None):
            return pd.DataFrame([{"recipe": json.dumps(self.recipe)}])

    return RecipeModel(recipe.as_dict())


def _recipe(champion) -> Recipe | None:
    """The recipe behind a registered champion (the pyfunc model's `recipe`), or None."""
    return None if champion is None else Recipe(**champion.recipe)


def champion_recipe(settings: Settings) -> Recipe:
    life = Lifecycle(settings, "recommend", flavor="pyfunc", rules={})
    recipe = _recipe(life.champion())
    if recipe is None:
        raise LookupError(f"no champion {life.name} recipe: run the train step first")
    return recipe


def build_lists(
    lake: Lake,
    settings: Settings,
    data: Data,
    recipe: Recipe,
    as_of: dt.date,
    run: RunContext | None = None,
    basket_lists: pd.DataFrame | None = None,
) -> dict:
    """Every list for every customer and item, with the served recipe, written to the gold tables.

    The models are fitted once (the next-basket model not at all when `basket_lists`, from
    `next_basket_lists`, are given); the customers' lists are drawn in batches of
    `recommend.list_batch_customers` (at 1M customers one pass held tens of millions of candidate
    rows per list in pandas) and gathered as Arrow before the one write.
    """
    import pyarrow as pa

    users = np.arange(len(data.users))
    fitted = fit_models(data, data.events, users, recipe, settings, lake.spark, data.end, basket_lists)
    parts, counts, lists = [], [], None
    for chunk in _user_batches(len(users), settings):
        lists = lists_for(fitted, data, chunk, settings)
        table = customer_lists(data, lists, chunk, recipe, settings, as_of)
        counts.append(_list_counts(table))
        parts.append(pa.Table.from_pandas(table, preserve_index=False))
        del table
    table = pa.concat_tables(parts)
    del parts
    lake.replace_partition_rows(GOLD_RECOMMENDATIONS, table, "as_of_date", as_of, run=run)
    rows = table.num_rows
    del table
    item_tables = _item_tables(data, lists, as_of, settings.recommend.list_sizes["similar_items"])
    for name, df in item_tables.items():
        lake.replace_partition_rows(name, df, "as_of_date", as_of, run=run)
    return _list_stats(rows, counts, item_tables, data)


def customer_lists(
    data: Data, lists: Lists, users: np.ndarray, recipe: Recipe, settings: Settings, as_of: dt.date
) -> pd.DataFrame:
    """The rows of `gold.recommendations` for `users` (their lists drawn in `lists`)."""
    cfg = settings.recommend
    sizes = cfg.list_sizes
    events = data.events[data.events["user"].isin(users)] if len(users) < len(data.users) else data.events
    personalized = served(data, lists, users, events, recipe, settings)
    exclude = _bought_not_repeatable(lists.repeats, events)
    cons = data.consented
    purchases = events[events["kind"] == "purchase"]
    per_type = {
        "personalized": personalized,
        "buy_again": _ruled(lists.components["buy_again"], sizes["buy_again"], data, cons),
        "recently_viewed": _ruled(
            L.recently_viewed(
                events[events["kind"] == "product_view"],
                purchases,
                data.end,
                cfg.recently_viewed_days,
                sizes["recently_viewed"],
            ),
            sizes["recently_viewed"],
            data,
            cons,
        ),
        "popular_in_segment": _ruled(
            lists.components["popular_in_segment"], sizes["popular_in_segment"], data, cons, exclude
        ),
    }
    rows = []
    for list_type, df in per_type.items():
        df = df.assign(source=df.get("source", list_type))
        if "anchor" not in df:
            df = df.assign(anchor=-1)
        if list_type == "personalized":
            sim_rows = (df["source"] == "item_similarity").to_numpy()
            anchors = df["anchor"].to_numpy().copy()
            anchors[sim_rows] = L.strongest_anchor(df[sim_rows], lists.seen, lists.similarity)
            df = df.assign(anchor=anchors)
        rows.append(df.assign(list_type=list_type))
    recs = pd.concat(rows, ignore_index=True)
    cadence = lists.components["buy_again"][["user", "item", "cadence_days"]]
    recs = recs.drop(columns=["cadence_days"], errors="ignore").merge(
        cadence, on=["user", "item"], how="left"
    )
    basket = lists.components["next_basket"]
    basket = basket.assign(basket_cadence=basket["own_cadence"].fillna(basket["item_cadence"]))
    recs = recs.merge(basket[["user", "item", "bought", "basket_cadence"]], on=["user", "item"], how="left")
    recs["reason"] = _reasons(recs, data)
    return pd.DataFrame(
        {
            "customer_id": data.users[recs["user"].to_numpy()],
            "as_of_date": as_of,
            "list_type": recs["list_type"],
            "rank": recs["rank"].astype(int),
            "sku": data.items[recs["item"].to_numpy()],
            "score": recs["score"].astype(float).round(6),
            "source": recs["source"],
            "reason": recs["reason"],
        }
    )


def _ruled(df: pd.DataFrame, k: int, data: Data, consented: np.ndarray, exclude: pd.DataFrame | None = None):
    df = df[consented[df["user"].to_numpy()]]
    if "score" not in df:
        df = df.assign(score=1.0 / df["rank"])
    return L.apply_rules(df, k, exclude, data.unavailable)


def _reasons(recs: pd.DataFrame, data: Data) -> np.ndarray:
    title = np.append(data.title, "")  # index -1 → ""
    anchor = title[recs["anchor"].to_numpy().astype(int)]
    src = recs["source"].to_numpy()
    out = np.full(len(recs), "Popular right now", dtype=object)
    out[src == "als"] = "Picked for you from what you shop"
    sim = src == "item_similarity"
    out[sim] = np.where(
        anchor[sim] != "", "Similar to " + anchor[sim].astype(object), "Similar to items you liked"
    )
    bt = src == "bought_together"
    out[bt] = "Often bought with " + anchor[bt].astype(object)
    ba = src == "buy_again"
    days = recs["cadence_days"].to_numpy(float)[ba] if "cadence_days" in recs else np.full(ba.sum(), np.nan)
    every = np.where(
        np.isnan(days),
        "regularly",
        "about every " + np.nan_to_num(days).round().astype(int).astype(str) + " days",
    )
    out[ba] = "Time to restock? You buy this " + every.astype(object)
    nb_rows = src == "next_basket"
    if nb_rows.any():
        again = recs["bought"].to_numpy(float)[nb_rows] > 0
        cadence = recs["basket_cadence"].to_numpy(float)[nb_rows]
        every = np.where(
            np.isnan(cadence),
            "regularly",
            "about every " + np.nan_to_num(cadence).round().astype(int).astype(str) + " days",
        )
        out[nb_rows] = np.where(again, "You buy this " + every.astype(object), "Often in baskets like yours")
    out[src == "recently_viewed"] = "You viewed this recently"
    # shown to shoppers: the segment's internal name ("Frequent returners, …") stays out of it
    out[src == "popular_in_segment"] = "Popular with shoppers like you"
    out[src == "trending"] = "Trending now"
    return out


def _item_tables(data: Data, lists: Lists, as_of: dt.date, k: int) -> dict[str, pd.DataFrame]:
    sku = data.items
    beh = lists.similar[~data.unavailable[lists.similar["other"].to_numpy()]].assign(basis="behaviour")
    have = beh.groupby("item").size().reindex(np.arange(len(sku)), fill_value=0)
    short = have[have < k].index.to_numpy()
    content = L.content_similar(short, data.category, data.brand, data.price, 2 * k)
    content = content[~data.unavailable[content["other"].to_numpy()]].assign(
        score=lambda d: d["score"] / 10, basis="content"
    )
    both = pd.concat([beh, content], ignore_index=True).drop_duplicates(["item", "other"])
    both = both.assign(order=(both["basis"] == "content").astype(int)).sort_values(["item", "order", "rank"])
    both["rank"] = both.groupby("item").cumcount() + 1
    both = both[both["rank"] <= k]
    similar = pd.DataFrame(
        {
            "sku": sku[both["item"].to_numpy()],
            "as_of_date": as_of,
            "similar_sku": sku[both["other"].to_numpy()],
            "rank": both["rank"].astype(int),
            "score": both["score"].astype(float).round(6),
            "basis": both["basis"],
        }
    )
    t = lists.together
    together = pd.DataFrame(
        {
            "sku": sku[t["item"].to_numpy()],
            "as_of_date": as_of,
            "other_sku": sku[t["other"].to_numpy()],
            "rank": t["rank"].astype(int),
            "support": t["support"].astype(int),
            "confidence": t["confidence"].astype(float),
            "lift": t["lift"].astype(float),
        }
    )
    tr = lists.trending
    trending = pd.DataFrame(
        {
            "scope": tr["scope"],
            "as_of_date": as_of,
            "rank": tr["rank"].astype(int),
            "sku": sku[tr["item"].to_numpy()],
            "score": tr["score"].astype(float).round(6),
            "recent_customers": tr["recent"].astype(int),
            "velocity": tr["velocity"].astype(float),
        }
    )
    p = lists.popular
    popular = pd.DataFrame(
        {
            "scope": p["scope"],
            "as_of_date": as_of,
            "rank": p["rank"].astype(int),
            "sku": sku[p["item"].to_numpy()],
            "buyers": p["score"].astype(int),
        }
    )
    return {
        GOLD_ITEM_SIMILARITY: similar,
        GOLD_BOUGHT_TOGETHER: together,
        GOLD_TRENDING: trending,
        GOLD_POPULAR_ITEMS: popular,
    }


def _list_counts(table: pd.DataFrame) -> dict:
    """A batch's share of the run's list statistics (batches hold disjoint customers, so they add up)."""
    pers = table[table["list_type"] == "personalized"]
    return {
        "sizes": pers.groupby("customer_id").size(),
        "personal": int(pers.loc[pers["source"].isin(PERSONAL), "customer_id"].nunique()),
        "lists": table.groupby("list_type")["customer_id"].nunique(),
        "sources": pers["source"].value_counts(),
    }


def _list_stats(rows: int, counts: list[dict], item_tables: dict, data: Data) -> dict:
    sizes = pd.concat([c["sizes"] for c in counts]) if counts else pd.Series(dtype=int)
    personal = sum(c["personal"] for c in counts)
    lists = pd.concat([c["lists"] for c in counts]).groupby(level=0).sum() if counts else pd.Series(dtype=int)
    sources = (
        pd.concat([c["sources"] for c in counts]).groupby(level=0).sum() if counts else pd.Series(dtype=int)
    )
    sources = sources.sort_values(ascending=False, kind="stable")
    k = int(sizes.max()) if len(sizes) else 0
    sim = item_tables[GOLD_ITEM_SIMILARITY]
    return {
        "customers": len(data.users),
        "rows": rows,
        "personalized_full_share": round(float((sizes >= k).sum() / max(len(data.users), 1)), 4),
        "personalized_share": round(personal / max(len(data.users), 1), 4),
        "personalized_share_active": round(personal / max(data.events["user"].nunique(), 1), 4),
        # of the customers who allow personalization and did anything we can learn from
        "personalized_share_eligible": round(
            personal / max(int(data.consented[data.events["user"].unique()].sum()), 1), 4
        ),
        "lists": {t: int(n) for t, n in lists.items()},
        "items_with_similar": int(sim["sku"].nunique()),
        "items": len(data.items),
        "bought_together_pairs": len(item_tables[GOLD_BOUGHT_TOGETHER]),
        "trending_scopes": int(item_tables[GOLD_TRENDING]["scope"].nunique()),
        "excluded_out_of_stock_items": int(data.unavailable.sum()),
        "personalization_objectors": int((~data.consented).sum()),
        "sources": {s: int(n) for s, n in sources.items()},
    }
