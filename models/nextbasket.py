"""Next-basket recommendation: what a shopper buys again, learned from the baskets themselves.

In repeat-purchase retail (groceries, beauty, pet, household) the strongest signal is the shopper's own
history: personal top-frequency is a baseline most published next-basket models fail to beat (Li et
al. 2023, "A Next Basket Recommendation Reality Check"). This module builds on it in three steps:

* `repeat_rates` — per item (and per category when given) the share of its buyers who bought it
  again, smoothed towards the catalog's rate, and its cadence: the median days between two purchases
  by the same shopper. Learned from the data; a catalog's `repeatable` flag only overrides it.
* `tifu_vectors` — TIFU-KNN's personal item-frequency vectors (Hu et al. 2020): baskets split into
  groups in time order, decayed within a group and across groups, so recent habits weigh most.
  `neighbour_scores` smooths them with the mean vector of each shopper's most similar shoppers
  (cosine), which is where a shopper's *new* items come from.
* `NextBasket` — a gradient-boosted classifier (scikit-learn) on per (shopper, item) candidates: the
  items the shopper bought and the items their neighbours buy. Features: the TIFU and neighbour
  scores, counts, recency in baskets and in days, the shopper's own cadence for the item and how due
  it is, the item's learned repeat rate and cadence, the shopper's basket habits. It is trained on
  the shoppers' own previous baskets (each of the last `windows` baskets held out in turn, on the
  history before it), so the mix of repeat and explore items is learned from the data, per shopper
  through their features. With too few held-out baskets to learn from, it ranks by the TIFU-KNN
  score instead (`learned` is False).

Frames are long: `user`, `item`, `at` (the basket's time) and optionally `basket` (an order id;
else a shopper's basket is their purchases at one time). Users and items may be any hashable ids.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse

DAY_S = 86_400.0
FEATURES = (
    "tifu",
    "neighbour",
    "bought",
    "count",
    "share",
    "baskets_since",
    "share_since_first",
    "days_since",
    "own_cadence",
    "due",
    "item_rate",
    "item_cadence",
    "category_rate",
    "item_buyers",
    "user_baskets",
    "user_basket_size",
    "user_gap",
    "user_repeat_share",
)


MIN_REPEAT_RATE = 0.1  # below it (learned from the purchases) a bought item is not recommended again


def baskets_of(purchases: pd.DataFrame) -> pd.DataFrame:
    """One row per (user, item, basket): `basket` when given, else the purchase time. Adds `pos`, the
    basket's place in the user's history (0 = first), and `n_baskets`."""
    if "basket" in purchases:
        p = purchases[["user", "item", "at", "basket"]]
    else:
        p = purchases[["user", "item", "at"]].assign(basket=purchases["at"])
    p = p.drop_duplicates(["user", "item", "basket"])
    b = p.groupby(["user", "basket"], as_index=False, sort=False)["at"].max()
    b = b.sort_values(["user", "at", "basket"], kind="stable")
    b = b.assign(pos=b.groupby("user").cumcount())
    b["n_baskets"] = b.groupby("user")["pos"].transform("size")
    return p.drop(columns="at").merge(b, on=["user", "basket"])


def tifu_weights(b: pd.DataFrame, within: float = 0.9, across: float = 0.7, groups: int = 7) -> np.ndarray:
    """Per row (with `user`, `pos` of its basket and the user's `n_baskets`), its basket's weight in
    TIFU-KNN's user vector: the user's baskets are split in time order into `groups` groups (each
    basket its own group when fewer); within a group a basket counts `within`^(baskets after it in
    the group) / group size, and a group `across`^(groups after it) / number of groups."""
    keys = b[["user", "pos", "n_baskets"]].drop_duplicates(["user", "pos"])
    n, pos = keys["n_baskets"].to_numpy(), keys["pos"].to_numpy()
    real = np.minimum(n, groups)
    g = np.where(n >= groups, pos * groups // np.maximum(n, 1), pos)
    per_group = pd.DataFrame({"user": keys["user"].to_numpy(), "g": g, "pos": pos}).groupby(["user", "g"])[
        "pos"
    ]
    gsize = per_group.transform("size").to_numpy()
    glast = per_group.transform("max").to_numpy()
    w = within ** (glast - pos) / gsize * across ** (real - 1 - g) / real
    weights = pd.DataFrame({"user": keys["user"].to_numpy(), "pos": pos, "w": w})
    return b[["user", "pos"]].merge(weights, on=["user", "pos"], how="left")["w"].to_numpy()


def repeat_rates(
    purchases: pd.DataFrame, category: pd.Series | None = None, prior: float = 10.0
) -> pd.DataFrame:
    """Per item: buyers, repeat buyers (bought it in two baskets or more), `rate` = repeat buyers ÷
    buyers smoothed towards the overall rate by `prior` pseudo-buyers, `cadence_days` = the median
    days between two purchases of it by the same shopper (NaN when nobody bought it twice), and
    `category_rate` (the same rate over the item's category, when `category` maps item → category)."""
    b = baskets_of(purchases)
    per = b.groupby(["user", "item"]).agg(n=("pos", "size"))
    overall = float((per["n"] > 1).mean()) if len(per) else 0.0
    per = per.assign(again=(per["n"] > 1).astype(int))
    items = per.groupby("item").agg(buyers=("n", "size"), repeat_buyers=("again", "sum"))
    items["rate"] = (items["repeat_buyers"] + prior * overall) / (items["buyers"] + prior)
    gaps = b.sort_values(["user", "item", "at"])
    gaps = gaps.assign(gap=gaps.groupby(["user", "item"])["at"].diff().dt.total_seconds() / DAY_S)
    items["cadence_days"] = gaps.groupby("item")["gap"].median()
    if category is not None:
        cat = pd.Series(category.reindex(items.index).to_numpy(), index=items.index).fillna("unknown")
        sums = items.groupby(cat)[["buyers", "repeat_buyers"]].transform("sum")
        items["category_rate"] = (sums["repeat_buyers"] + prior * overall) / (sums["buyers"] + prior)
    else:  # no catalog: the item's own rate stands in
        items["category_rate"] = items["rate"]
    return items.reset_index()


def tifu_vectors(
    b: pd.DataFrame, within: float, across: float, groups: int, users: pd.Index, items: pd.Index
):
    """The users × items matrix of TIFU-KNN user vectors from basket rows (see `tifu_weights`)."""
    w = tifu_weights(b, within, across, groups)
    m = sparse.csr_matrix(
        (w, (users.get_indexer(b["user"]), items.get_indexer(b["item"]))), shape=(len(users), len(items))
    )
    m.sum_duplicates()
    return m


def neighbour_scores(
    vectors: sparse.csr_matrix, neighbours: int, explore: int, pool: int = 20_000, seed: int = 13
) -> pd.DataFrame:
    """TIFU-KNN's neighbour part, per batch of users (memory stays bounded): each user's most similar
    `neighbours` other users by cosine; their mean vector read at the user's own items and at the
    `explore` best items the user never bought. Neighbours are drawn from a seeded sample of at most
    `pool` users (all of them up to that), so the cost grows linearly with the users, not squared.
    Returns u, i (row and column codes), neighbour."""
    n, n_items = vectors.shape
    cand = np.arange(n) if n <= pool else np.sort(np.random.default_rng(seed).choice(n, pool, replace=False))
    k = min(neighbours, len(cand) - 1)
    if k <= 0 or vectors.nnz == 0:
        return pd.DataFrame({"u": np.zeros(0, int), "i": np.zeros(0, int), "neighbour": np.zeros(0)})
    norms = np.sqrt(np.asarray(vectors.multiply(vectors).sum(axis=1)).ravel())
    unit = (sparse.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ vectors).tocsr()
    pool_unit, pool_vectors = unit[cand].T.tocsc(), vectors[cand]
    batch = int(np.clip(8_000_000 // max(n_items, len(cand), 1), 16, 2048))
    parts = []
    for lo in range(0, n, batch):
        hi = min(lo + batch, n)
        sim = (unit[lo:hi] @ pool_unit).toarray()
        rows = np.arange(lo, hi)
        at = np.minimum(np.searchsorted(cand, rows), len(cand) - 1)
        own = cand[at] == rows  # a user is never their own neighbour
        sim[np.flatnonzero(own), at[own]] = -np.inf
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        mean = sparse.csr_matrix(
            (np.full(top.size, 1.0 / k), (np.repeat(np.arange(hi - lo), k), top.ravel())),
            shape=(hi - lo, len(cand)),
        )
        near = (mean @ pool_vectors).toarray()
        own_r, own_c = vectors[lo:hi].nonzero()
        parts.append(pd.DataFrame({"u": own_r + lo, "i": own_c, "neighbour": near[own_r, own_c]}))
        if explore > 0:
            near[own_r, own_c] = -np.inf
            e = min(explore, n_items)
            best = np.argpartition(-near, e - 1, axis=1)[:, :e]
            value = np.take_along_axis(near, best, axis=1)
            r = np.repeat(np.arange(hi - lo), e)
            keep = value.ravel() > 0
            parts.append(
                pd.DataFrame({"u": r[keep] + lo, "i": best.ravel()[keep], "neighbour": value.ravel()[keep]})
            )
    return pd.concat(parts, ignore_index=True)


class NextBasket:
    """Learned next-basket ranking over repeat and neighbour candidates (see the module's docstring)."""

    name = "next_basket"

    def __init__(
        self,
        windows: int = 5,
        neighbours: int = 300,
        explore: int = 20,
        within: float = 0.9,
        across: float = 0.7,
        groups: int = 7,
        alpha: float = 0.7,
        min_positives: int = 200,
        max_train_users: int = 5_000,
        seed: int = 13,
    ):
        self.windows, self.neighbours, self.explore = windows, neighbours, explore
        self.max_train_users = max_train_users
        self.within, self.across, self.groups, self.alpha = within, across, groups, alpha
        self.min_positives, self.seed = min_positives, seed
        self.model = None
        self.learned = False

    # -------------------------------------------------------------------------- features
    def candidates(self, purchases: pd.DataFrame, category: pd.Series | None = None) -> pd.DataFrame:
        """Per user of `purchases`: the items they bought and the `explore` best items of their
        neighbours they did not, with every feature of `FEATURES` as of their latest basket."""
        b = baskets_of(purchases)
        if b.empty:
            return pd.DataFrame(columns=["user", "item", *FEATURES])
        users, items = pd.Index(b["user"].unique()), pd.Index(b["item"].unique())
        tifu = tifu_vectors(b, self.within, self.across, self.groups, users, items)
        near = neighbour_scores(tifu, self.neighbours, self.explore)
        per = (
            b.groupby(["user", "item"], sort=False)
            .agg(
                count=("pos", "size"),
                last_pos=("pos", "max"),
                first_pos=("pos", "min"),
                last_at=("at", "max"),
                n_baskets=("n_baskets", "first"),
            )
            .reset_index()
        )
        gaps = b.sort_values(["user", "item", "at"])
        gaps = gaps.assign(gap=gaps.groupby(["user", "item"])["at"].diff().dt.total_seconds() / DAY_S)
        per = per.merge(
            gaps.groupby(["user", "item"])["gap"].mean().rename("own_cadence").reset_index(),
            on=["user", "item"],
        )
        near = near.assign(user=users[near["u"].to_numpy()], item=items[near["i"].to_numpy()])
        c = per.assign(bought=1.0).merge(
            near[["user", "item", "neighbour"]], on=["user", "item"], how="outer"
        )
        c["bought"] = c["bought"].fillna(0.0)
        c["neighbour"] = c["neighbour"].fillna(0.0)
        ui, ii = users.get_indexer(c["user"]), items.get_indexer(c["item"])
        c["tifu"] = np.asarray(tifu[ui, ii]).ravel()
        ub = self._user_facts(b, per)
        c["n_baskets"] = c["user"].map(ub["baskets"]).to_numpy()
        c["count"] = c["count"].fillna(0.0)
        c["share"] = c["count"] / c["n_baskets"]
        c["baskets_since"] = c["n_baskets"] - 1 - c["last_pos"]
        c["share_since_first"] = c["count"] / (c["n_baskets"] - c["first_pos"])
        c["days_since"] = (c["user"].map(ub["last"]) - c["last_at"]).dt.total_seconds() / DAY_S
        c["due"] = c["days_since"] / c["own_cadence"].where(c["own_cadence"] > 0)
        rates = repeat_rates(b.drop(columns=["pos", "n_baskets"]), category).set_index("item")
        c["item_rate"] = c["item"].map(rates["rate"]).to_numpy(float)
        c["item_cadence"] = c["item"].map(rates["cadence_days"]).to_numpy(float)
        c["category_rate"] = c["item"].map(rates["category_rate"]).to_numpy(float)
        c["item_buyers"] = np.log1p(c["item"].map(rates["buyers"]).fillna(0).to_numpy(float))
        for col, fact in (
            ("user_baskets", "baskets"),
            ("user_basket_size", "basket_size"),
            ("user_gap", "gap"),
            ("user_repeat_share", "repeat_share"),
        ):
            c[col] = c["user"].map(ub[fact]).to_numpy(float)
        out = c[["user", "item", *FEATURES]]
        return out.fillna({f: -1.0 for f in FEATURES if out[f].isna().all()})

    @staticmethod
    def _user_facts(b: pd.DataFrame, per: pd.DataFrame) -> pd.DataFrame:
        baskets = b.drop_duplicates(["user", "basket"]).sort_values(["user", "at"])
        gap = baskets.groupby("user")["at"].diff().dt.total_seconds() / DAY_S
        facts = (
            baskets.assign(gap=gap)
            .groupby("user")
            .agg(baskets=("pos", "size"), last=("at", "max"), gap=("gap", "mean"))
        )
        facts["basket_size"] = b.groupby("user").size() / facts["baskets"]
        facts["repeat_share"] = (per["count"] > 1).groupby(per["user"]).mean()
        return facts

    # ------------------------------------------------------------------------- fit, rank
    def fit(self, purchases: pd.DataFrame, category: pd.Series | None = None) -> NextBasket:
        """Learn the ranking from each user's last `windows` baskets, each predicted from the history
        before it."""
        from sklearn.ensemble import HistGradientBoostingClassifier

        b = baskets_of(purchases)
        many = b.loc[b["n_baskets"] > 1, "user"].unique()
        if len(many) > self.max_train_users:  # a seeded sample of the shoppers with a history teaches it
            keep = np.random.default_rng(self.seed).choice(np.sort(many), self.max_train_users, replace=False)
            b = b[b["user"].isin(keep)]
        from_end = b["n_baskets"] - 1 - b["pos"]
        parts = []
        for w in range(self.windows):
            history = b[from_end > w]
            target = b[from_end == w]
            target = target[target["user"].isin(history["user"])]
            if target.empty:
                break
            c = self.candidates(history.drop(columns=["pos", "n_baskets"]), category)
            truth = pd.MultiIndex.from_frame(target[["user", "item"]])
            c["label"] = pd.MultiIndex.from_frame(c[["user", "item"]]).isin(truth)
            parts.append(c)
        train = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
        positives = int(train["label"].sum()) if len(train) else 0
        self.learned = positives >= self.min_positives and positives < len(train)
        self.training_rows, self.training_positives = len(train), positives
        if self.learned:
            self.model = HistGradientBoostingClassifier(
                max_iter=200, learning_rate=0.05, random_state=self.seed
            ).fit(train[list(FEATURES)].to_numpy(float), train["label"].to_numpy())
        self.category = category
        return self

    def score(self, purchases: pd.DataFrame) -> pd.DataFrame:
        """Every candidate of the users of `purchases` with its features and `score`: the learned
        probability that it is in their next basket (or the TIFU-KNN score when nothing was learned)."""
        c = self.candidates(purchases, self.category)
        if self.learned and len(c):
            c["score"] = self.model.predict_proba(c[list(FEATURES)].to_numpy(float))[:, 1]
        else:
            c["score"] = self.alpha * c["tifu"] + (1 - self.alpha) * c["neighbour"]
        return c

    def recommend(self, purchases: pd.DataFrame, k: int) -> pd.DataFrame:
        """user, item, rank, score (best first) for every user of `purchases`, plus the features a
        reason is written from (`bought`, `own_cadence`, `due`, `item_cadence`)."""
        c = self.score(purchases)
        c = c[c["score"] > 0].sort_values(
            ["user", "score", "item"], ascending=[True, False, True], kind="stable"
        )
        c = c.assign(rank=c.groupby("user", sort=False).cumcount() + 1)
        c = c[c["rank"] <= k]
        return c[
            ["user", "item", "rank", "score", "bought", "own_cadence", "due", "item_cadence"]
        ].reset_index(drop=True)


def blend(
    primary: pd.DataFrame, explore: pd.DataFrame, weight: float, k: int, rrf_k: int = 10
) -> pd.DataFrame:
    """The next-basket ranking (`primary`: user, item, rank, score) mixed with an explore list (user,
    item, rank) by weighted reciprocal rank: 1/(rrf_k + rank) + weight/(rrf_k + explore rank). With
    weight 0 the explore items only fill what the next-basket list leaves empty (shoppers with little
    history). Returns user, item, rank, score, source (the list contributing most)."""
    a = pd.DataFrame(
        {
            "user": primary["user"],
            "item": primary["item"],
            "part": 1.0 / (rrf_k + primary["rank"]),
            "source": "next_basket",
        }
    )
    w = max(weight, 1e-9)
    b = pd.DataFrame(
        {
            "user": explore["user"],
            "item": explore["item"],
            "part": w / (rrf_k + explore["rank"]),
            "source": "explore",
        }
    )
    both = pd.concat([a, b], ignore_index=True).sort_values(
        ["user", "item", "part"], ascending=[True, True, False]
    )
    fused = both.groupby(["user", "item"], as_index=False, sort=False).agg(
        score=("part", "sum"), source=("source", "first")
    )
    fused = fused.sort_values(["user", "score", "item"], ascending=[True, False, True], kind="stable")
    fused = fused.assign(rank=fused.groupby("user", sort=False).cumcount() + 1)
    return fused[fused["rank"] <= k][["user", "item", "rank", "score", "source"]].reset_index(drop=True)
