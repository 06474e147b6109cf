"""Next-basket recommendation and repeat-awareness on inline baskets, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from p13n.models import lists as L
from p13n.models import nextbasket as nb
from p13n.models.recommenders import Popularity, not_repeating

T0 = pd.Timestamp("2024-01-01", tz="UTC")


def _baskets(rows: list[tuple[str, int, list[str]]]) -> pd.DataFrame:
    """(user, day, items) → one purchase row per item."""
    return pd.DataFrame(
        [(u, item, T0 + pd.Timedelta(days=d)) for u, d, items in rows for item in items],
        columns=["user", "item", "at"],
    )


def test_repeat_rates_are_learned_per_item_and_category_with_their_cadence():
    p = _baskets(
        [("u1", 0, ["A", "B"]), ("u1", 10, ["A"]), ("u1", 30, ["A"]), ("u2", 0, ["A", "B"]), ("u2", 6, ["A"])]
        + [("u3", 0, ["A"])]
    )
    rates = nb.repeat_rates(p, pd.Series({"A": "food", "B": "food"})).set_index("item")
    # pairs (u1,A)×3 (u2,A)×2 (u3,A)×1 (u1,B) (u2,B): 2 of 5 repeat, the prior's rate 0.4
    assert rates.loc["A", "buyers"] == 3 and rates.loc["A", "repeat_buyers"] == 2
    assert rates.loc["A", "rate"] == pytest.approx((2 + 10 * 0.4) / (3 + 10))
    assert rates.loc["B", "rate"] == pytest.approx((0 + 10 * 0.4) / (2 + 10))
    assert rates.loc["A", "cadence_days"] == 10.0  # median of the gaps 10, 20 and 6
    assert np.isnan(rates.loc["B", "cadence_days"])
    assert rates.loc["B", "category_rate"] == pytest.approx((2 + 4) / (5 + 10))


def test_tifu_weights_decay_within_and_across_groups():
    three = pd.DataFrame({"user": ["a"] * 3, "pos": [0, 1, 2], "n_baskets": 3})
    # fewer baskets than groups: each basket its own group, 3 groups
    assert nb.tifu_weights(three, 0.9, 0.7, 7) == pytest.approx([0.49 / 3, 0.7 / 3, 1 / 3])
    many = pd.DataFrame({"user": ["b"] * 14, "pos": range(14), "n_baskets": 14})
    w = nb.tifu_weights(many, 0.9, 0.7, 7)  # 7 groups of two baskets
    assert w[13] == pytest.approx(1 / 2 / 7) and w[12] == pytest.approx(0.9 / 2 / 7)
    assert w[0] == pytest.approx(0.9 / 2 * 0.7**6 / 7)


def test_unlearned_ranking_is_tifu_knn_and_finds_a_neighbours_item():
    p = _baskets([("u1", 0, ["A", "B"]), ("u1", 7, ["A"]), ("u2", 0, ["C"]), ("u2", 7, ["C", "A"])])
    model = nb.NextBasket(neighbours=1, min_positives=10**6).fit(p)
    assert not model.learned
    recs = model.recommend(p, 3)
    # u1: A 0.85 (0.35 + 0.5), B 0.35; neighbour u2: C 0.85, A 0.5 → 0.7·own + 0.3·neighbour
    u1 = recs[recs["user"] == "u1"].set_index("item")["score"]
    assert list(u1.index) == ["A", "C", "B"]
    assert u1.to_dict() == pytest.approx({"A": 0.745, "C": 0.255, "B": 0.245})
    u2 = recs[recs["user"] == "u2"].set_index("item")["score"]
    assert u2.to_dict() == pytest.approx({"A": 0.605, "C": 0.595, "B": 0.105})
    assert recs.loc[recs["item"] == "C", "bought"].tolist() == [0.0, 1.0]  # C is new to u1


def test_the_learned_ranking_puts_each_shoppers_staple_first():
    rng = np.random.default_rng(5)
    rows = []
    for u in range(60):
        staple = f"milk{u % 3}"
        for n in range(8):  # every week the staple and two one-off items from a large catalog
            rows.append((f"u{u}", 7 * n, [staple, f"x{rng.integers(0, 400)}", f"x{rng.integers(0, 400)}"]))
    p = _baskets(rows)
    model = nb.NextBasket(min_positives=50, seed=1).fit(p)
    assert model.learned and model.training_positives >= 60 * 5
    first = model.recommend(p, 1).set_index("user")["item"]
    assert first.to_dict() == {f"u{u}": f"milk{u % 3}" for u in range(60)}


def test_not_repeating_keeps_only_seen_items_that_do_not_repeat():
    seen = sparse.csr_matrix(np.array([[1.0, 2.0], [0.0, 1.0]]))
    out = not_repeating(seen, np.array([True, False]))
    assert out.toarray().tolist() == [[0.0, 2.0], [0.0, 1.0]]
    # popularity then offers the repeating item a user already has, never the other
    pop = Popularity().fit(seen).excluding(out)
    assert pop.recommend(np.array([0, 1]), 2)[["user", "item"]].values.tolist() == [[0, 0], [1, 0]]


def test_a_repeating_item_is_held_back_until_its_cadence_is_half_gone():
    day = pd.Timedelta(days=1)
    p = pd.DataFrame(
        {
            "user": [0, 0, 0, 1, 1, 2],
            "item": [0, 0, 0, 0, 1, 0],
            "at": [T0, T0 + 12 * day, T0 + 24 * day, T0 + 15 * day, T0 + 20 * day, T0 + 27 * day],
        }
    )
    repeats = np.array([True, False])
    end = T0 + 28 * day
    out = L.not_yet_due(p, repeats, end, 0.5)
    # user 0 buys item 0 every 12 days, last 4 days ago (< 6): held back; user 1 bought it once 13
    # days ago (the item's cadence 12: due); user 2 bought it 1 day ago (< 6); item 1 never repeats
    assert sorted(map(tuple, out.values.tolist())) == [(0, 0), (2, 0)]
    assert L.not_yet_due(p, repeats, end, 0.0).empty
