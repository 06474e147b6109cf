"""The served list on a small hand-made shop: the time split, the blend, the rules and the fallback chain
(no Spark: the single-node engine)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from p13n.config import Settings
from p13n.recommend.pipeline import (
    Data,
    Recipe,
    customer_lists,
    evaluate_recipe,
    evaluate_recipes,
    fit_lists,
    fit_models,
    lists_for,
    served,
    time_split,
)

END = pd.Timestamp("2024-03-02", tz="UTC")
N_ITEMS = 12
# items 0-5: pet food (repeats), 6-11: toys (do not)
CATEGORY = np.array(["pet"] * 6 + ["toys"] * 6)


def _data(events: pd.DataFrame, n_users: int, consented=None, unavailable=None) -> Data:
    return Data(
        users=pd.Index([f"C{u:02d}" for u in range(n_users)]),
        items=pd.Index([f"SKU-{i:06d}" for i in range(N_ITEMS)]),
        events=events,
        category=CATEGORY,
        brand=np.array([f"b{i % 4}" for i in range(N_ITEMS)]),
        price=np.full(N_ITEMS, 10.0),
        title=np.array([f"item {i}" for i in range(N_ITEMS)]),
        repeatable=CATEGORY == "pet",
        unavailable=np.zeros(N_ITEMS, bool) if unavailable is None else unavailable,
        segment=pd.Series(["dog people"] * n_users, index=range(n_users)),
        consented=np.ones(n_users, bool) if consented is None else consented,
        end=END,
    )


def _shop(n_users: int = 30, seed: int = 3) -> pd.DataFrame:
    """Users 0..n-1 buy two of pet items 0-2 and toy 6+u%3 every ~10 days; user 29 never does anything."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users - 1):
        for n in range(4):
            at = END - pd.Timedelta(days=40 - 10 * n + int(rng.integers(0, 3)))
            order = f"o{u}-{n}"
            for item in (u % 3, (u + 1) % 3):
                rows.append((u, item, at, "purchase", 5.0, order))
            if n == 0:
                rows.append((u, 6 + u % 3, at, "purchase", 5.0, order))
            rows.append((u, 3 + u % 3, at - pd.Timedelta(hours=1), "product_view", 1.0, None))
    return pd.DataFrame(rows, columns=["user", "item", "at", "kind", "weight", "order"])


@pytest.fixture
def rec_settings():
    s = Settings()
    cfg = s.recommend.model_copy(
        update={"list_sizes": {**s.recommend.list_sizes, "personalized": 6}, "max_per_brand": 3}
    )
    return s.model_copy(update={"recommend": cfg})


RECIPE = Recipe(
    "implicit",
    {"factors": 4, "regularization": 0.1, "alpha": 5.0, "iterations": 5},
    {
        "als": 1.0,
        "item_similarity": 1.0,
        "buy_again": 1.5,
        "bought_together": 0.5,
        "popular_in_segment": 0.3,
        "trending": 0.2,
    },
    90.0,
)


def test_time_split_holds_out_each_customers_latest_order_and_everything_after_it():
    events = pd.DataFrame(
        {
            "user": [0, 0, 0, 0, 1, 2, 2],
            "item": [1, 2, 3, 4, 1, 5, 6],
            "at": [END - pd.Timedelta(days=d) for d in (9, 5, 5, 1)] + [END - pd.Timedelta(days=3)] * 3,
            "kind": [
                "purchase",
                "purchase",
                "purchase",
                "product_view",
                "purchase",
                "product_view",
                "purchase",
            ],
        }
    )
    train, test, cut = time_split(events)
    # user 0: latest order (items 2, 3) held out, the later view dropped; user 1 has nothing before
    # its only order; user 2 viewed and bought at the same moment: nothing strictly earlier either
    assert test.values.tolist() == [[0, 2], [0, 3]]
    assert list(cut.index) == [0]
    assert sorted(train[train["user"] == 0]["item"]) == [1]
    assert len(train[train["user"] != 0]) == 3


def test_served_list_applies_rules_and_falls_back_for_unknown_customers_and_objectors(rec_settings):
    events = _shop()
    n = 30
    consented = np.ones(n, bool)
    consented[5] = False  # objected to personalization
    unavailable = np.zeros(N_ITEMS, bool)
    unavailable[4] = True  # out of stock
    data = _data(events, n, consented, unavailable)
    users = np.arange(n)
    lists = fit_lists(data, events, users, RECIPE, rec_settings, spark=None)
    out = served(data, lists, users, events, RECIPE, rec_settings)
    sizes = out.groupby("user").size()
    assert set(out["user"]) == set(users) and (sizes.drop(5) == 6).all()
    # the objector's list is the overall popular one: six items were bought, one of them by them (a toy)
    assert sizes[5] == 5
    assert 4 not in set(out["item"])  # out of stock, for everyone
    bought_toys = events[(events["kind"] == "purchase") & (events["item"] >= 6)][["user", "item"]]
    assert bought_toys.merge(out, on=["user", "item"]).empty  # toys do not repeat
    # pet food does repeat: the customer's own staples come back as "buy again"
    u0 = out[out["user"] == 0]
    assert {0, 1} <= set(u0.loc[u0["source"] == "buy_again", "item"])
    # an objector and a customer with no history get lists without personal sources
    assert set(out.loc[out["user"] == 5, "source"]) == {"popular"}
    assert set(out.loc[out["user"] == 29, "source"]) <= {"popular_in_segment", "trending", "popular"}
    assert out["rank"].between(1, 6).all()


def test_evaluation_scores_every_list_and_the_served_blend_beats_popularity(rec_settings):
    events = _shop()
    data = _data(events, 30)
    table, facts = evaluate_recipe(data, RECIPE, rec_settings, spark=None)
    assert set(table) == {
        "popularity",
        "next_basket",
        "als",
        "item_similarity",
        "buy_again",
        "bought_together",
        "popular_in_segment",
        "trending",
        "personalized",
    }
    assert facts["test_customers"] == 29
    # every held-out order is two of the customer's three staples: the served list finds them
    assert table["personalized"]["recall@10"] > 0.9
    # they rank first: the popularity of all items (repeats allowed, pet food repeats) ranks them
    # too, but behind the other customers' staple
    assert table["personalized"]["ndcg@10"] == 1.0 and table["next_basket"]["ndcg@10"] == 1.0
    assert table["popularity"]["ndcg@10"] < 0.9


def test_recipes_evaluated_together_score_as_each_alone_with_one_next_basket_fit(rec_settings, monkeypatch):
    """A challenger and the champion differ in ALS parameters: the rest is fitted once for both."""
    import dataclasses

    from p13n.models import nextbasket

    data = _data(_shop(), 30)
    champion = dataclasses.replace(RECIPE, als={**RECIPE.als, "factors": 4, "regularization": 0.5})
    alone = [evaluate_recipe(data, r, rec_settings, spark=None) for r in (RECIPE, champion)]
    fits = []
    original = nextbasket.NextBasket.fit
    monkeypatch.setattr(
        nextbasket.NextBasket, "fit", lambda self, *a, **k: fits.append(1) or original(self, *a, **k)
    )
    together = evaluate_recipes(data, [RECIPE, champion], rec_settings, spark=None)
    assert together == alone
    assert len(fits) == 1
    # the two ALS lists differ: the comparison means something
    assert alone[0][0]["als"] != alone[1][0]["als"]
    other_half_life = dataclasses.replace(champion, half_life_days=RECIPE.half_life_days * 2)
    evaluate_recipes(data, [RECIPE, other_half_life], rec_settings, spark=None)
    assert len(fits) == 3  # a different half-life weighs the events differently: everything is refitted


@pytest.mark.spark
def test_the_spark_engine_serves_the_same_lists_contract(rec_settings, spark):
    events = _shop()
    data = _data(events, 30)
    recipe = Recipe("spark", RECIPE.als, RECIPE.blend, RECIPE.half_life_days)
    table, _ = evaluate_recipe(data, recipe, rec_settings, spark=spark)
    # pet food repeats (learned from the purchases): ALS may list a customer's own staples again
    assert table["als"]["recall@10"] > 0 and table["als"]["coverage"] >= 0.5
    assert table["personalized"]["recall@10"] > 0.9


def test_time_split_samples_at_most_max_users_test_customers_and_keeps_the_others_history():
    events = _shop()
    full_train, full_test, full_cut = time_split(events)
    train, test, cut = time_split(events, max_users=10, seed=5)
    assert len(cut) == 10 and set(cut.index) < set(full_cut.index)
    assert set(test["user"]) == set(cut.index)
    assert cut.equals(full_cut[cut.index])  # a sampled customer's cut-off is unchanged
    # the customers left out of the test keep their whole history for training
    others = events[~events["user"].isin(cut.index)]
    assert len(train[~train["user"].isin(cut.index)]) == len(others)
    assert time_split(events, max_users=10, seed=5)[2].index.equals(cut.index)  # seeded
    assert time_split(events, max_users=1000)[2].equals(full_cut)


def test_lists_drawn_in_batches_of_customers_are_the_lists_drawn_at_once(rec_settings):
    """build_lists draws the customers' lists a batch at a time: the rows must not depend on it."""
    import datetime as dt

    events = _shop()
    n = 30
    consented = np.ones(n, bool)
    consented[5] = False
    data = _data(events, n, consented)
    users = np.arange(n)
    fitted = fit_models(data, events, users, RECIPE, rec_settings, None, data.end)
    day = dt.date(2024, 3, 2)

    def rows(chunk):
        return customer_lists(
            data, lists_for(fitted, data, chunk, rec_settings), chunk, RECIPE, rec_settings, day
        )

    whole = rows(users)
    batched = pd.concat([rows(users[i : i + 7]) for i in range(0, n, 7)], ignore_index=True)
    key = ["customer_id", "list_type", "rank"]
    assert len(whole) > 10 * n and set(whole["list_type"]) == {
        "personalized",
        "buy_again",
        "recently_viewed",
        "popular_in_segment",
    }
    pd.testing.assert_frame_equal(
        batched.sort_values(key).reset_index(drop=True), whole.sort_values(key).reset_index(drop=True)
    )


def test_next_basket_lists_drawn_beforehand_give_the_same_rows_without_a_second_fit(
    rec_settings, monkeypatch
):
    """The DAG's next_basket task draws the next-basket lists beside train; lists then takes them
    instead of fitting the model: every table it writes is what one task doing both writes."""
    import datetime as dt

    from p13n.models import nextbasket
    from p13n.recommend.pipeline import build_lists, next_basket_lists

    class Lake:  # what build_lists writes, by table
        spark = None

        def __init__(self):
            self.tables = {}

        def replace_partition_rows(self, table, rows, column, value, run=None):
            self.tables[table] = rows if isinstance(rows, pd.DataFrame) else rows.to_pandas()

    n = 30
    data = _data(_shop(), n)
    day = dt.date(2024, 3, 2)
    settings = rec_settings.model_copy(  # drawn in batches, as at a million customers
        update={"recommend": rec_settings.recommend.model_copy(update={"list_batch_customers": 7})}
    )
    recipe = Recipe(RECIPE.engine, RECIPE.als, {"next_basket": 20.0, **RECIPE.blend}, RECIPE.half_life_days)
    alone, given = Lake(), Lake()
    build_lists(alone, settings, data, recipe, day)
    drawn = next_basket_lists(data, settings)
    assert set(drawn["user"]) == set(range(n - 1)) and len(drawn) > 2 * n  # user 29 never bought
    fits = []
    original = nextbasket.NextBasket.fit
    monkeypatch.setattr(
        nextbasket.NextBasket, "fit", lambda self, *a, **k: fits.append(1) or original(self, *a, **k)
    )
    build_lists(given, settings, data, recipe, day, basket_lists=drawn)
    assert fits == []
    assert set(given.tables) == set(alone.tables) and len(alone.tables) == 5
    for table, rows in alone.tables.items():
        pd.testing.assert_frame_equal(given.tables[table], rows, obj=table)
    served = alone.tables["gold.recommendations"]
    assert (served["source"] == "next_basket").sum() > n  # the next-basket list is in the served one


def test_the_gate_refuses_accuracy_bought_with_a_narrower_catalog():
    from p13n.config import load_settings
    from p13n.models.registry import GateRule, decide
    from p13n.recommend.pipeline import gate_metrics

    rules = {m: GateRule(**g.model_dump()) for m, g in load_settings("local").recommend.gates.items()}
    assert rules["coverage"].tolerance == 0.03
    table = {
        "personalized": {"ndcg@10": 0.30, "coverage": 0.10},
        "popularity": {"ndcg@10": 0.05, "coverage": 0.01},
    }
    challenger = gate_metrics(table, 10)
    assert challenger == {"ndcg_at_k": 0.30, "lift_over_popularity": 6.0, "coverage": 0.10}
    wider = {"ndcg_at_k": 0.28, "lift_over_popularity": 5.6, "coverage": 0.14}
    ok, reasons = decide(challenger, wider, rules)  # more accurate, 0.04 less coverage: refused
    assert not ok and "coverage 0.1 worse than the champion's 0.14" in reasons
    ok, _ = decide(challenger, wider | {"coverage": 0.12}, rules)  # 0.02 less: within the tolerance
    assert ok


def test_the_run_s_copy_of_the_inputs_gives_back_the_same_data(tmp_path):
    """What the first task of recommend_products saves, the next ones load: every field equal, with
    its dtype, so their lists and metrics are those of a read from the lake."""
    from p13n.recommend import cache

    events = _shop()
    events["at"] = pd.to_datetime(events["at"], utc=True)
    data = _data(events, 30, consented=np.arange(30) % 7 != 0)
    data.price = np.linspace(1.0, 12.0, N_ITEMS)
    data.repeatable = np.where(CATEGORY == "pet", 1.0, np.nan)
    data.segment = pd.Series(
        ["dog people", "cat people"] * 15, index=pd.Index(range(30), name="user"), name="persona"
    )
    data.versions = {"silver.products": 3, "gold.segments": 7}
    data.users, data.items = data.users.rename("customer_id"), data.items.rename("sku")  # as read_data
    path = cache.save(data, tmp_path / "cache", "2024-03-02-abc")
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    back = cache.load(path)
    pd.testing.assert_frame_equal(back.events, data.events)
    pd.testing.assert_index_equal(back.users, data.users)
    pd.testing.assert_index_equal(back.items, data.items)
    pd.testing.assert_series_equal(back.segment, data.segment)
    for name in (*cache.ITEM_ARRAYS, "consented"):
        np.testing.assert_array_equal(getattr(back, name), getattr(data, name), err_msg=name)
        assert getattr(back, name).dtype.kind == getattr(data, name).dtype.kind, name
    assert back.end == data.end and back.versions == data.versions
    assert not list((tmp_path / "cache").glob(".*"))  # no staging folder left
    # what a later task keeps beside the copy (the next-basket lists) comes back as it was
    part = pd.DataFrame(
        {"user": [0, 0, 3], "item": [1, 2, 1], "rank": [1, 2, 1], "score": [0.9, 0.5, np.nan]}
    )
    assert cache.load_part(path, "next_basket") is None
    assert cache.save_part(path, "next_basket", part)
    pd.testing.assert_frame_equal(cache.load_part(path, "next_basket"), part)
    assert not list(path.glob(".*"))
    assert not cache.save_part(tmp_path / "cache" / "gone", "next_basket", part)  # no copy: not kept


def test_a_part_that_cannot_be_written_is_not_kept_and_leaves_nothing(tmp_path, monkeypatch):
    from p13n.recommend import cache

    data = _data(_shop(), 30)
    path = cache.save(data, tmp_path / "cache", "2024-03-02-abc")

    def full_disk(table, where):
        Path(where).write_bytes(b"PAR1")  # half a file, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache.pq, "write_table", full_disk)
    assert not cache.save_part(path, "next_basket", pd.DataFrame({"user": [0]}))
    assert cache.load_part(path, "next_basket") is None
    assert not list(path.glob("*next_basket*"))


def test_a_copy_that_cannot_be_kept_or_read_back_falls_back_to_the_lake(tmp_path, monkeypatch):
    from p13n.recommend import cache

    settings = Settings().model_copy(update={"data_dir": tmp_path})
    data = _data(_shop(), 30)
    reads = []
    monkeypatch.setattr(cache, "key", lambda *_: "2024-03-02-abc")
    monkeypatch.setattr(cache, "read_data", lambda *_: reads.append(1) or data)
    monkeypatch.setattr(cache, "save", lambda *_: (_ for _ in ()).throw(OSError("disk full")))
    copy = cache.folder(settings) / "2024-03-02-abc"
    assert cache.load_data(None, settings, END.date()) == (data, copy, False)  # no copy kept: still the data
    copy.mkdir(parents=True)
    (copy / "meta.json").write_text("{")  # half a copy (never written so; a disk went bad)
    assert cache.load_data(None, settings, END.date()) == (data, copy, False) and len(reads) == 2
    assert not copy.exists()
