"""Task bodies of the recommendations DAG: a few lines each, calling the pipeline functions."""

from __future__ import annotations

import datetime as dt

from p13n.config import get_settings
from p13n.lake.tables import (
    GOLD_BOUGHT_TOGETHER,
    GOLD_INTERACTIONS,
    GOLD_ITEM_SIMILARITY,
    GOLD_POPULAR_ITEMS,
    GOLD_RECOMMENDATIONS,
    GOLD_TRENDING,
)
from p13n.orchestration import progress, share_cores
from p13n.runctx import RunContext

SUITES = (
    GOLD_INTERACTIONS,
    GOLD_RECOMMENDATIONS,
    GOLD_ITEM_SIMILARITY,
    GOLD_BOUGHT_TOGETHER,
    GOLD_TRENDING,
    GOLD_POPULAR_ITEMS,
)
METRICS = (
    "precision@{k}",
    "recall@{k}",
    "recall@20",
    "ndcg@{k}",
    "map@{k}",
    "coverage",
    "diversity",
    "novelty",
)


def _data(ds: str):
    """The run's inputs: read from the lake by the first task, from its copy by the others
    (`p13n.recommend.cache`)."""
    from p13n.recommend.cache import load_data
    from p13n.session import lake

    settings = get_settings()
    data, copy, cached = load_data(lake(), settings, dt.date.fromisoformat(ds))
    origin = "the run's copy" if cached else "read from the lake"
    progress(
        f"recommendation inputs as of {ds}: {len(data.events):,} events, {len(data.users):,} customers, "
        f"{len(data.items):,} items ({origin})"
    )
    return settings, lake(), data, copy


def interactions_task(ds: str) -> dict:
    from p13n.recommend.pipeline import build_interactions

    settings, lk, data, _ = _data(ds)
    out = build_interactions(lk, data, settings, dt.date.fromisoformat(ds), run=RunContext.from_env())
    progress(
        f"interactions as of {ds}: {out['pairs']:,} customer-item pairs, {out['customers']:,} customers, "
        f"{out['items']:,} items"
    )
    return out


def train_task(ds: str) -> dict:
    """Tune, evaluate (every model and the popularity baseline), register and gate the recipe."""
    from p13n.recommend.pipeline import train_recommender

    settings, lk, data, _ = _data(ds)
    with share_cores(2):  # next_basket runs beside it
        out, recipe, table = train_recommender(
            lk, settings, data, dt.date.fromisoformat(ds), run=RunContext.from_env(), progress=progress
        )
    for line in evaluation_table(table, settings.recommend.k).splitlines():
        progress(line)
    progress(out.summary())
    return {
        "version": out.decision.version,
        "promoted": out.decision.promoted,
        "engine": recipe.engine,
        **out.metrics,
    }


def next_basket_task(ds: str) -> dict:
    """Every customer's next-basket list, kept in the run's copy for the lists task (it needs no recipe,
    so it runs beside train)."""
    from p13n.recommend.cache import save_part
    from p13n.recommend.pipeline import next_basket_lists

    settings, _, data, copy = _data(ds)
    with share_cores(2):  # train runs beside it
        lists = next_basket_lists(data, settings)
    kept = save_part(copy, "next_basket", lists)
    progress(
        f"next-basket lists as of {ds}: {len(lists):,} rows for {lists['user'].nunique():,} customers"
        + ("" if kept else " (no copy of the inputs to keep them in: the lists task draws them again)")
    )
    return {"rows": len(lists), "customers": int(lists["user"].nunique()), "kept": kept}


def lists_task(ds: str) -> dict:
    """Every list for every customer and item with the champion recipe."""
    from p13n.recommend.cache import drop, load_part
    from p13n.recommend.pipeline import build_lists, champion_recipe

    settings, lk, data, copy = _data(ds)
    out = build_lists(
        lk,
        settings,
        data,
        champion_recipe(settings),
        dt.date.fromisoformat(ds),
        run=RunContext.from_env(),
        basket_lists=load_part(copy, "next_basket"),
    )
    drop(copy)  # the run's last reader of its inputs' copy
    progress(
        f"recommendations as of {ds}: {out['rows']:,} rows for {out['customers']:,} customers; "
        f"{out['personalized_share']:.1%} with a personal signal in their list "
        f"({out['personalized_share_active']:.1%} of customers with any activity, "
        f"{out['personalized_share_eligible']:.1%} of those who allow personalization), "
        f"{out['personalized_full_share']:.1%} with a full list; similar items for "
        f"{out['items_with_similar']:,} of "
        f"{out['items']:,} items; {out['bought_together_pairs']:,} bought-together pairs; "
        f"{out['excluded_out_of_stock_items']} items out of stock"
    )
    progress(f"personalized list sources: {out['sources']}")
    return out


def validate_task(ds: str) -> dict:
    from p13n.orchestration import validate_outputs

    where = [("as_of_date", "=", dt.date.fromisoformat(ds))]
    try:
        return validate_outputs(dict.fromkeys(SUITES, where), "recommendation outputs")
    finally:
        release_cache()


def release_cache() -> None:
    """Let the night's cached activity go from the Spark service. A Spark Connect server shares its
    cache between sessions and keeps it after a task's process exits: the frames the features task
    caches serve churn, CLV, segments, attribution and this DAG's inputs, the run's last readers of
    them. Nothing released them, so each night left its frames behind for as long as the server ran
    (`make run`'s second night still held the first night's 7). Clearing only ever drops copies: a
    task of another DAG that had cached something recomputes it."""
    from p13n.session import lake

    lake().spark.catalog.clearCache()


def evaluation_table(table: dict, k: int) -> str:
    """The offline evaluation as an aligned text table, best NDCG first, the baseline marked."""
    cols = [m.format(k=k) for m in METRICS]
    width = max(len(n) for n in table) + 2
    lines = [f"{'model':<{width}}" + "".join(f"{c:>13}" for c in cols)]
    for name, row in sorted(table.items(), key=lambda kv: -kv[1][f"ndcg@{k}"]):
        label = name + (" *" if name == "popularity" else "")
        lines.append(f"{label:<{width}}" + "".join(f"{row[c]:>13.4f}" for c in cols))
    lines.append("* the popularity baseline; personalized = the served list (blend + rules + fallbacks)")
    return "\n".join(lines)
