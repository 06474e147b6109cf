"""`p13n bench planted`: a lift planted by the generator, recovered through the whole pipeline.

The estimators are checked on simulated units in `p13n bench experiments`; this checks the path a
real measurement takes, from landing files to `gold.experiment_results`' figures:

1. the generator writes a shop (`rows` customers, 15 days, the history before them);
2. day 0 is ingested and identities are resolved: p13n mints its customer ids;
3. the global holdout (`activation.global_holdout`, here half the customers so one run has power)
   splits those ids by the API's own hash; the generator's people are matched to them through its
   ground truth, and the treated ones (not held out) get their purchase rate multiplied by
   1 + `PLANTED_LIFT` from day 1 on (a second generation with the same seed: day 0 is unchanged);
4. the sales of days 1-14 are ingested (web, both store systems);
5. `p13n.measurement.experiments` measures `global:holdout` on day 14 over those 14 days, as the
   nightly `measure` task does.

Orders and revenue per customer scale by exactly the planted factor in expectation, so the
intervals should cover `PLANTED_LIFT`; `reps` runs that many seeds (about 5 minutes each) and
reports how often they did, and how much CUPED (the 90 days before the window) narrowed them.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

PLANTED_LIFT = 0.25
SHARE = 0.5  # the bench's global holdout
DAYS = 15
HISTORY_DAYS = 120  # CUPED's 90 pre-period days before the window, and some
IDENTITY = ("shopify_customers", "crm_contacts", "loyalty_members")
SALES = ("shopify_orders", "square_transactions", "legacy_pos_sales")
START = dt.date(2024, 3, 1)


def person_customers(settings, day: dt.date) -> pd.DataFrame:
    """person_id, customer_id: each generated person's p13n customer (the one holding most of their
    records on `day`'s identity graph)."""
    from p13n.lake.duck import duckdb_connection, scan
    from p13n.lake.tables import GOLD_IDENTITY_GRAPH

    truth = pd.read_csv(settings.truth_dir / "identity.csv", dtype=str)
    truth["record_key"] = truth["source"] + ":" + truth["record_id"]
    con = duckdb_connection(settings=settings)
    con.register("truth", truth[["record_key", "person_id"]])
    return con.execute(
        f"""SELECT person_id, arg_max(customer_id, n) AS customer_id FROM (
                SELECT t.person_id, g.customer_id, count(*) AS n
                FROM {scan(settings.lake_root, GOLD_IDENTITY_GRAPH)} g JOIN truth t USING (record_key)
                WHERE g.run_date = ? GROUP BY ALL)
            GROUP BY person_id""",
        [day],
    ).df()


def _one_seed(base, customers: int, seed: int) -> dict:
    from p13n.generate.retail import generate
    from p13n.identity.pipeline import resolve_identities
    from p13n.lake import Lake
    from p13n.measurement.experiments import arm_sums, results, unit_outcomes
    from p13n.serving.experiments import GLOBAL_SALT, in_holdout
    from p13n.sources.catalog import catalog
    from p13n.sources.ingest import ingest_batch
    from p13n.sources.simulate import load_warehouse
    from p13n.spark import get_spark

    work = Path(tempfile.mkdtemp(prefix="bench-planted-", dir=base.data_dir))
    settings = base.model_copy(
        update={
            "data_dir": work,
            "activation": base.activation.model_copy(update={"global_holdout": SHARE}),
            "measurement": base.measurement.model_copy(update={"window_days": DAYS - 1}),
        }
    )
    last = START + dt.timedelta(days=DAYS - 1)
    out: dict = {}
    try:
        t0 = time.perf_counter()
        shop = (catalog(), work, customers, DAYS, seed, START)
        generate(*shop, bad_rate=0.0, history_days=HISTORY_DAYS)
        load_warehouse(settings, catalog())
        lake = Lake(get_spark(settings), settings.lake, settings.lake_root)
        for name in (*IDENTITY, *SALES):
            ingest_batch(lake, settings, catalog(), catalog()[name], START, b"bench")
        resolve_identities(lake, settings, START, b"bench")
        owners = person_customers(settings, START)
        treated = ~owners["customer_id"].map(lambda c: in_holdout(GLOBAL_SALT, SHARE, c))
        plant = np.ones(customers)
        people = owners.loc[treated.to_numpy(), "person_id"].str[1:].astype(int).to_numpy() - 1
        plant[people] = 1 + PLANTED_LIFT
        again = work / "planted"
        generate(
            catalog(),
            again,
            customers,
            DAYS,
            seed,
            START,
            bad_rate=0.0,
            history_days=HISTORY_DAYS,
            plant=plant,
        )
        for name in SALES:  # days 1-14 of the sales as the planted run wrote them
            location = catalog()[name].location
            for d in range(1, DAYS):
                day = (START + dt.timedelta(days=d)).isoformat()
                target = settings.landing_dir / location / day
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(again / "landing" / location / day, target)
        for d in range(1, DAYS):
            for name in SALES:
                ingest_batch(
                    lake, settings, catalog(), catalog()[name], START + dt.timedelta(days=d), b"bench"
                )
        measured = results(settings, arm_sums(unit_outcomes(settings, last)), last)
        out["seconds"] = round(time.perf_counter() - t0, 1)
        out["people_treated"] = int(treated.sum())
        out["people_matched"] = len(owners)
        for _, r in measured[measured["experiment"] == "global:holdout"].iterrows():
            out[r["metric"]] = r
        return out
    finally:
        if not os.environ.get("P13N_BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)


def bench_planted(rows: int | None = None, reps: int = 1) -> dict:
    from p13n.config import get_settings

    base = get_settings()
    base.data_dir.mkdir(parents=True, exist_ok=True)
    customers = rows or 4000
    figures: dict = {"planted_lift": PLANTED_LIFT, "customers_generated": customers, "seeds": reps}
    hits: dict[str, list[bool]] = {}
    widths: list[float] = []
    lifts: dict[str, list[float]] = {}
    for seed in range(reps):
        got = _one_seed(base, customers, 1000 + seed)
        line = [f"seed {1000 + seed}: {got['seconds']} s"]
        for metric in ("orders", "revenue"):
            r = got.get(metric)
            if r is None:
                continue
            lifts.setdefault(metric, []).append(float(r["lift"]))
            line.append(f"{metric} {r['lift']:+.1%} [{r['ci_low']:+.1%}, {r['ci_high']:+.1%}]")
            for kind, low, high in (
                ("plain", "ci_low", "ci_high"),
                ("cuped", "cuped_ci_low", "cuped_ci_high"),
            ):
                hits.setdefault(f"{metric}_{kind}", []).append(bool(r[low] <= PLANTED_LIFT <= r[high]))
            widths.append((r["cuped_ci_high"] - r["cuped_ci_low"]) / (r["ci_high"] - r["ci_low"]))
            if seed == 0:
                figures[f"{metric}_lift"] = round(float(r["lift"]), 4)
                figures[f"{metric}_ci"] = f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}]"
                figures[f"{metric}_cuped_lift"] = round(float(r["cuped_lift"]), 4)
                figures[f"{metric}_cuped_ci"] = f"[{r['cuped_ci_low']:.4f}, {r['cuped_ci_high']:.4f}]"
                figures["units_treatment"] = int(r["units"])
                figures["units_holdout"] = int(r["baseline_units"])
        print("; ".join(line), flush=True)
        if seed == 0:
            figures["people_matched"] = got["people_matched"]
            figures["seconds_per_seed"] = got["seconds"]
    for key, values in sorted(hits.items()):
        figures[f"coverage_{key}"] = round(float(np.mean(values)), 3)
    for metric, values in lifts.items():
        figures[f"mean_{metric}_lift"] = round(float(np.mean(values)), 4)
    figures["cuped_width_ratio"] = round(float(np.mean(widths)), 4) if widths else float("nan")
    return figures
