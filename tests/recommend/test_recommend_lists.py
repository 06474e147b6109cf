"""The non-matrix recommendation lists and the business rules, on hand-made data with exact answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from p13n.models import lists as L

END = pd.Timestamp("2024-03-31", tz="UTC")


def day(n: int) -> pd.Timestamp:
    return pd.Timestamp("2024-03-01", tz="UTC") + pd.Timedelta(days=n)


def test_decayed_weights_halve_per_half_life_and_returns_count_against():
    events = pd.DataFrame(
        {
            "user": [0, 0, 1, 1],
            "item": [0, 1, 0, 0],
            "at": [END, END - pd.Timedelta(days=90), END, END],
            "weight": [5.0, 1.0, 5.0, -5.0],  # user 1 bought item 0 and returned it
        }
    )
    w = L.decayed_weights(events, END, half_life_days=90).sort_values(["user", "item"])
    assert w[["user", "item"]].values.tolist() == [[0, 0], [0, 1]]
    assert w["weight"].tolist() == pytest.approx([5.0, 0.5])


def test_buy_again_follows_each_customers_cadence_and_skips_items_that_do_not_repeat():
    repeatable = np.array([True, False, True, True])
    purchases = pd.DataFrame(
        {
            "user": [0, 0, 0, 0, 0, 1, 1],
            "item": [0, 0, 0, 1, 2, 3, 3],
            "at": [day(0), day(10), day(20), day(1), day(25), day(0), day(29)],
        }
    )
    out = L.buy_again(purchases, repeatable, END, k=5)
    u0 = out[out["user"] == 0].set_index("item")
    assert set(u0.index) == {0, 2}  # item 1 does not repeat
    # item 0: bought every 10 days, last on day 20, the list is for day 30: due now
    assert u0.loc[0, "cadence_days"] == 10.0
    assert u0.loc[0, "due_in_days"] == 0.0
    assert u0.loc[0, "score"] == pytest.approx(np.log1p(3))
    # item 2 bought once, nobody repeats it: the default cadence (30 days), 5 days after: not due yet
    assert u0.loc[2, "cadence_days"] == 30.0
    assert u0.loc[2, "due_in_days"] == 25.0
    assert u0.loc[0, "rank"] == 1 and u0.loc[2, "rank"] == 2
    # user 1 bought item 3 a day ago with a 29-day cadence: a low score
    u1 = out[out["user"] == 1].iloc[0]
    assert u1["cadence_days"] == 29.0 and u1["score"] < 0.05


def test_buy_again_uses_a_cut_off_per_customer_when_evaluating():
    purchases = pd.DataFrame(
        {"user": [0, 0, 1, 1], "item": [0, 0, 0, 0], "at": [day(0), day(10), day(0), day(10)]}
    )
    cut = pd.Series([day(20), day(11)], index=[0, 1])
    out = L.buy_again(purchases, np.array([True]), cut, k=1).set_index("user")
    assert out.loc[0, "due_in_days"] == 0.0
    assert out.loc[1, "due_in_days"] == 9.0


def test_bought_together_reports_support_confidence_and_lift():
    orders = pd.DataFrame(
        {
            "order": ["o1", "o1", "o2", "o2", "o3", "o3", "o4", "o5"],
            "item": [0, 1, 0, 1, 0, 2, 2, 3],
        }
    )
    out = L.bought_together(orders, n_items=4, min_support=2, k=5)
    # only the pair (0, 1) is seen together twice; 5 orders, item 0 in 3, item 1 in 2
    assert out[["item", "other", "rank", "support"]].values.tolist() == [[0, 1, 1, 2], [1, 0, 1, 2]]
    a = out.set_index("item")
    assert a.loc[0, "confidence"] == pytest.approx(2 / 3, abs=1e-4)
    assert a.loc[0, "lift"] == pytest.approx((2 / 3) / (2 / 5), abs=1e-3)
    assert a.loc[1, "confidence"] == 1.0
    assert a.loc[1, "lift"] == pytest.approx(1.0 / (3 / 5), abs=1e-3)


def test_trending_compares_recent_customers_with_the_baseline_rate():
    category = np.array(["toys", "toys", "pet"])
    rows = []
    # item 0: 7 customers in the last 7 days, 28 in the 28 days before (steady): velocity 1
    rows += [(u, 0, END - pd.Timedelta(days=1 + u % 7)) for u in range(7)]
    rows += [(100 + u, 0, END - pd.Timedelta(days=8 + u)) for u in range(28)]
    # item 1: 4 recent customers, none before: rising
    rows += [(200 + u, 1, END - pd.Timedelta(days=1)) for u in range(4)]
    # item 2: one recent customer only: not trending
    rows += [(300, 2, END - pd.Timedelta(days=1))]
    activity = pd.DataFrame(rows, columns=["user", "item", "at"])
    out = L.trending(activity, category, END, days=7, baseline_days=28, k=5)
    allp = out[out["scope"] == "all"].set_index("item")
    assert set(allp.index) == {0, 1}
    assert allp.loc[0, "velocity"] == pytest.approx((1 + 1 / 28) / (1 + 1 / 28), abs=1e-3)
    assert allp.loc[1, "velocity"] == pytest.approx((4 / 7 + 1 / 28) / (1 / 28), abs=1e-3)
    assert allp.loc[1, "rank"] == 1
    assert out[out["scope"] == "toys"]["item"].tolist() == [1, 0]
    assert "pet" not in set(out["scope"])


def test_popular_counts_distinct_buyers_overall_and_per_segment():
    purchases = pd.DataFrame(
        {
            "user": [0, 0, 1, 2, 2],
            "item": [5, 5, 5, 6, 5],
            "at": [END - pd.Timedelta(days=d) for d in (1, 2, 3, 4, 200)],
        }
    )
    seg = pd.Series(["a", "a", "b"], index=[0, 1, 2])
    out = L.popular(purchases, seg, END, days=90, k=5)
    assert out[out["scope"] == "all"][["item", "rank", "score"]].values.tolist() == [[5, 1, 2], [6, 2, 1]]
    assert out[out["scope"] == "a"][["item", "score"]].values.tolist() == [[5, 2]]
    assert out[out["scope"] == "b"][["item", "score"]].values.tolist() == [[6, 1]]  # item 5 was 200 days ago


def test_recently_viewed_drops_items_bought_since():
    views = pd.DataFrame({"user": [0, 0, 0], "item": [1, 2, 3], "at": [day(28), day(27), day(29)]})
    purchases = pd.DataFrame({"user": [0, 0], "item": [1, 3], "at": [day(29), day(20)]})
    out = L.recently_viewed(views, purchases, END, days=30, k=5)
    assert out["item"].tolist() == [3, 2]  # 1 was bought after it was viewed; 3 before


def test_content_similar_stays_in_the_category_and_prefers_the_brand_then_the_price():
    category = np.array(["a", "a", "a", "a", "b"])
    brand = np.array(["x", "x", "y", "y", "x"])
    price = np.array([10.0, 50.0, 10.0, 11.0, 10.0])
    out = L.content_similar(np.array([0]), category, brand, price, k=3)
    assert out["other"].tolist() == [1, 2, 3]  # same brand first, then the closest price
    assert 4 not in set(out["other"])


def test_fuse_sums_reciprocal_ranks_and_remembers_the_strongest_list():
    a = pd.DataFrame({"user": [0, 0], "item": [1, 2], "rank": [1, 2]})
    b = pd.DataFrame({"user": [0], "item": [2], "rank": [1], "anchor": [7]})
    out = L.fuse({"als": a, "bought_together": b}, {"als": 1.0, "bought_together": 2.0}, rrf_k=10).set_index(
        "item"
    )
    assert out.loc[1, "score"] == pytest.approx(1 / 11)
    assert out.loc[2, "score"] == pytest.approx(1 / 12 + 2 / 11)
    assert out.loc[2, "source"] == "bought_together" and out.loc[2, "anchor"] == 7
    assert out.loc[1, "source"] == "als" and out.loc[1, "anchor"] == -1


def test_rules_exclude_bought_and_out_of_stock_items_and_cap_brands():
    cand = pd.DataFrame({"user": [0] * 6, "item": [0, 1, 2, 3, 4, 5], "score": [6, 5, 4, 3, 2, 1.0]})
    brand = np.array(["x", "x", "x", "y", "x", "y"])
    category = np.array(["c"] * 6)
    unavailable = np.array([False, True, False, False, False, False])
    exclude = pd.DataFrame({"user": [0], "item": [2]})
    out = L.apply_rules(cand, 4, exclude, unavailable, brand, category, max_per_brand=2, max_per_category=10)
    # 1 out of stock, 2 already bought; brand x allows two: 0 and 4
    assert out["item"].tolist() == [0, 3, 4, 5]
    assert out["rank"].tolist() == [1, 2, 3, 4]
    capped = L.apply_rules(cand, 6, None, None, brand, category, max_per_brand=10, max_per_category=3)
    assert capped["item"].tolist() == [0, 1, 2]


def test_top_up_fills_from_the_fallbacks_in_order_without_repeats():
    lists = pd.DataFrame(
        {"user": [0], "item": [5], "rank": [1], "score": [1.0], "source": ["als"], "anchor": [-1]}
    )
    seg = pd.DataFrame({"user": [0, 0], "item": [5, 6], "rank": [1, 2]})
    pop = pd.DataFrame({"user": [0, 0, 0, 1, 1], "item": [6, 7, 8, 7, 9], "rank": [1, 2, 3, 1, 2]})
    unavailable = np.zeros(10, bool)
    unavailable[8] = True
    out = L.top_up(
        lists, np.array([0, 1]), [("popular_in_segment", seg), ("popular", pop)], k=3, unavailable=unavailable
    )
    u0 = out[out["user"] == 0]
    assert u0[["item", "rank", "source"]].values.tolist() == [
        [5, 1, "als"],
        [6, 2, "popular_in_segment"],
        [7, 3, "popular"],
    ]
    u1 = out[out["user"] == 1]  # an unknown customer: the global list
    assert u1[["item", "source"]].values.tolist() == [[7, "popular"], [9, "popular"]]
