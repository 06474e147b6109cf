"""The run report on a small hand-made lake: every section's figures are the ones the tables imply."""

from __future__ import annotations

import datetime as dt
import json
import re

import pandas as pd
import pytest
from deltalake import write_deltalake

from p13n.lake.duck import table_uri
from p13n.report.render import build

DAY, BEFORE = dt.date(2024, 3, 2), dt.date(2024, 3, 1)


def _write(root: str, table: str, rows: list[dict]) -> None:
    write_deltalake(table_uri(root, table), pd.DataFrame(rows), mode="append")


@pytest.fixture
def lake(settings, tmp_path):
    s = settings.model_copy(update={"data_dir": tmp_path})
    root = s.lake_root
    ingest = [
        ("orders", 1000, 990, 10, [["price: below the minimum 0", 7], ["duplicate order_id", 3]], 0),
        ("clicks", 500, 500, 0, [], 0),
        ("reviews", 40, 30, 10, [["rating: above 5", 10]], 1),
    ]
    _write(
        root,
        "ops.ingest_runs",
        [
            {
                "batch_date": d,
                "source": src,
                "status": "ok",
                "files": 1,
                "bronze_rows": n,
                "silver_rows": ok,
                "quarantined": q,
                "top_reasons": json.dumps(why),
                "drifted_rows": 0,
                "expectations_passed": 5,
                "expectations_failed": bad,
                "warnings": "",
            }
            for src, n, ok, q, why, bad in ingest
            for d in (BEFORE, DAY)
        ],
    )
    now = dt.datetime(2024, 3, 2, 3)
    _write(
        root,
        "ops.validations",
        [
            {
                "run_date": DAY,
                "table_name": t,
                "success": ok,
                "passed": p,
                "failed": f,
                "failures": "",
                "warnings": w,
                "validated_at": now,
            }
            for t, ok, p, f, w in [
                ("silver.orders", True, 12, 0, ""),
                ("gold.segments", True, 8, 0, "clv: 2% null"),
                ("silver.reviews", False, 4, 1, ""),
            ]
        ],
    )
    _write(
        root,
        "ops.identity_runs",
        [
            {
                "run_date": d,
                "counts": json.dumps({"records": r, "customers": c}),
                "changes": json.dumps(ch),
                "refused": "{}",
                "timings": "{}",
                "model_columns": "",
                "precision": 0.99,
                "recall": 0.98,
                "f1": 0.985,
                "metrics": "{}",
            }
            for d, r, c, ch in [(BEFORE, 100, 60, {"new": 60}), (DAY, 110, 64, {"new": 5, "merged": 1})]
        ],
    )
    graph = [(f"c{i}", n) for i, n in enumerate([1] * 40 + [2] * 20 + [3] * 4)]
    _write(
        root,
        "gold.identity_graph",
        [
            {
                "record_key": f"{c}-{k}",
                "source": "crm",
                "record_id": f"{c}-{k}",
                "profile_id": c,
                "customer_id": c,
                "run_date": DAY,
            }
            for c, n in graph
            for k in range(n)
        ],
    )
    stages = {
        "c1": ("active", "at_risk"),
        "c2": ("active", "active"),
        "c3": ("new", "active"),
        "c4": (None, "new"),
    }
    _write(
        root,
        "gold.segments",
        [
            {
                "customer_id": c,
                "as_of_date": d,
                "lifecycle_stage": st,
                "rfm_segment": "champions",
                "persona": "p",
                "churn_risk_band": "low",
            }
            for c, (before, now) in stages.items()
            for d, st in ((BEFORE, before), (DAY, now))
            if st
        ],
    )
    _write(
        root,
        "ops.model_runs",
        [
            {
                "model": "churn",
                "as_of_date": d,
                "version": v,
                "promoted": p,
                "champion_version": "1",
                "reasons": "",
                "metrics": json.dumps({"auc": auc, "lift": {"top_decile": 2.0}}),
                "rows": 4,
            }
            for d, v, p, auc in [(BEFORE, "1", True, 0.70), (DAY, "2", False, 0.75)]
        ],
    )
    recs = [
        ("c1", "personalized", "a", "als"),
        ("c1", "personalized", "b", "als"),
        ("c2", "personalized", "a", "popular"),
        ("c2", "buy_again", "c", "buy_again"),
    ]
    _write(
        root,
        "gold.recommendations",
        [
            {
                "customer_id": c,
                "as_of_date": DAY,
                "list_type": lt,
                "rank": 1,
                "sku": sku,
                "score": 1.0,
                "source": src,
                "reason": "",
            }
            for c, lt, sku, src in recs
        ],
    )
    _write(root, "gold.customer_profiles", [{"customer_id": c} for c in ("c1", "c2", "c3", "c4")])
    _write(root, "silver.products", [{"sku": x} for x in "abcdefgh"])
    _write(
        root,
        "ops.publish_runs",
        [
            {
                "as_of_date": DAY,
                "version": "20240302.4",
                "previous": "20240301.3",
                "keys": 1234,
                "keys_by_kind": "{}",
                "bytes": 2_500_000,
                "seconds": 3.2,
                "forced": False,
                "published_at": now,
            }
        ],
    )
    _write(
        root,
        "ops.export_runs",
        [
            {
                "destination": "klaviyo",
                "audience": "vip",
                "as_of": DAY.isoformat(),
                "run_id": "r",
                "eligible": 30,
                "added": 20,
                "updated": 5,
                "removed": 1,
                "unchanged": 4,
                "rejected": 0,
                "blocked": 0,
                "skipped_no_consent": 3,
                "skipped_erased": 0,
                "skipped_no_address": 1,
                "batches": 1,
                "api_calls": 2,
                "seconds": 1.5,
                "status": "succeeded",
                "errors": "",
                "profiles_per_second": 17.0,
                "finished_at": now,
            }
        ],
    )
    # an audience holdout with a planted 30% lift, measured by the real estimators
    import pyarrow as pa

    from p13n.measurement import experiments, simulate

    sums = experiments.arm_sums(simulate.units(20_000, seed=1, lift=0.3, experiment="audience:vip"))
    frame = experiments.results(s, sums, DAY).astype({"note": "string"})
    table = pa.Table.from_pandas(frame, schema=experiments.result_schema(), preserve_index=False)
    write_deltalake(table_uri(root, "gold.experiment_results"), table)
    credit = [("last_touch", "email", 0.25), ("last_touch", "web", 0.75), ("markov", "email", 0.4)]
    credit += [("markov", "web", 0.6)]
    _write(
        root,
        "gold.attribution",
        [
            {
                "as_of_date": DAY,
                "model": m,
                "channel": c,
                "conversions": 40 * sh,
                "revenue": 4000 * sh,
                "removal_effect": 0.5 if m == "markov" else None,
                "share": sh,
                "period_start": dt.date(2024, 2, 2),
                "period_end": DAY,
                "conversions_in_period": 50,
                "unattributed_conversions": 10,
                "open_journeys": 7,
            }
            for m, c, sh in credit
        ],
    )
    events = [("win_back", "entered")] * 3 + [("win_back", "sent")] * 2 + [("win_back", "suppressed")]
    events += [("win_back", "held_out"), ("welcome", "converted")]
    _write(
        root,
        "gold.journey_events",
        [
            {"as_of_date": DAY, "journey": j, "customer_id": f"C{i}", "step": "s", "event": e}
            for i, (j, e) in enumerate(events)
        ],
    )
    _write(
        root,
        "gold.journey_state",
        [
            {"as_of_date": DAY, "journey": "win_back", "customer_id": f"C{i}", "status": "active"}
            for i in range(3)
        ],
    )
    decided = [("trigger", "abandoned_cart", "email", "scheduled")] * 3 + [
        ("trigger", "abandoned_cart", "email", "capped"),
        ("journey", "win_back", "sms", "suppressed"),
        ("audience", "vip", "email", "no_consent"),
    ]
    _write(
        root,
        "ops.contact_ledger",
        [
            {
                "ledger_date": DAY,
                "program_type": t,
                "program": p,
                "channel": c,
                "status": st,
                "customer_id": f"C{i}",
            }
            for i, (t, p, c, st) in enumerate(decided)
        ],
    )
    return s


def _section(page: str, anchor: str) -> str:
    return re.search(rf'<section id="{anchor}">(.*?)</section>', page, re.S).group(1)


def _summary(page: str, anchor: str) -> str:
    return re.search(r"</h2><p>(.*?)</p>", _section(page, anchor), re.S).group(1).replace("&#x27;", "'")


def test_the_report_states_what_the_tables_hold(lake):
    path = build(lake, DAY)
    page = path.read_text()
    assert path == lake.data_dir / "reports" / "2024-03-02" / "index.html"
    assert _summary(page, "ingestion") == (
        "3 sources, 1,540 rows read, 1,520 promoted to silver, 20 quarantined (1.30%); highest quarantine "
        "share: reviews (25.00%). Expectations failed on: reviews."
    )
    assert 'id="ingestion"><h2>Ingestion and quarantine<span class="badge fail">' in page
    assert "price: below the minimum 0 ×7; duplicate order_id ×3" in _section(page, "ingestion")
    assert _summary(page, "expectations") == (
        "3 tables validated with Great Expectations: 24 expectations passed, 1 failed; 1 tables failed a "
        "critical expectation, 1 have warnings."
    )
    assert _summary(page, "identity") == (
        "110 identity records resolved into 64 customers. Changes on the day: merged 1, new 5. "
        "Against the generator's truth: precision 0.9900, recall 0.9800."
    )
    assert (
        _summary(page, "segments")
        == "4 customers scored; 3 changed lifecycle stage since 2024-03-01 (heatmap: before → now)."
    )
    assert _summary(page, "models") == "churn v2: kept the champion, compared with 2024-03-01."
    models = _section(page, "models")
    assert re.search(r"<td>auc</td>\s*<td>0.75</td>\s*<td>0.7</td>\s*<td>0.05</td>", models)
    assert "<td>lift.top_decile</td>" in models
    assert _summary(page, "recommendations") == (
        "2 of 4 customers (50.0%) have a personalized list; it uses 2 of 8 catalog items (25.0%); "
        "the top 10% of those items fill 66.7% of the slots."
    )
    assert _summary(page, "delivery") == (
        "published serving version 20240302.4 (1,234 keys, 2.5 MB, 3s); 1 audience exports, 25 profiles sent."
    )
    assert _summary(page, "experiments") == (
        "1 experiments and holdouts, 1 comparisons; 1 with a revenue lift whose 95% interval excludes 0."
    )
    assert "<td>audience:vip</td>" in _section(page, "experiments")
    assert _summary(page, "attribution") == (
        "50 conversions from 2024-02-02 to 2024-03-02, 10 of them without a touch before (not credited); "
        "7 journeys not converted yet; Markov credit: web 60% (last touch 75%), email 40% (last touch 25%)."
    )
    assert _summary(page, "journeys") == (
        "3 customers entered 2 journeys tonight (1 held out), 2 messages sent, 1 suppressed (no consent, a "
        "cap, an open case), 1 converted; 3 customers in a journey now."
    )
    assert _summary(page, "cadence") == (
        "6 messages decided: 3 scheduled, 1 over a cap, 1 suppressed (open case, refund), 1 without consent "
        "for their channel."
    )
    # a plot for ingestion, four segment bars and the movement heatmap, cluster sizes, three for
    # recommendations, the experiments' lifts, the attribution, the journeys' sends and steps, the
    # ledger's decisions
    assert page.count("<svg") == 15
    assert (lake.data_dir / "reports" / "index.html").read_text().count('href="2024-03-02/index.html"') == 1


def test_a_date_without_runs_says_so(lake):
    page = build(lake, dt.date(2024, 2, 1)).read_text()
    assert page.count("has not run for this date yet") == 10  # every section but the publish's
    assert "nothing published for this date" in page


def test_the_airflow_plugin_serves_the_reports(lake):
    from fastapi.testclient import TestClient

    from p13n.report.plugin import P13nPlugin, create_app

    build(lake, DAY)
    client = TestClient(create_app(lake.data_dir / "reports"))
    assert client.get("/reports/").status_code == 200
    latest = client.get("/reports/latest", follow_redirects=False)
    assert latest.headers["location"] == "/p13n/reports/2024-03-02/index.html"
    assert "p13n nightly run · 2024-03-02" in client.get("/reports/2024-03-02/index.html").text
    assert client.get("/reports/2024-02-30/index.html").status_code == 404
    assert client.get("/reports/2023-01-01/index.html").status_code == 404
    assert {v["href"] for v in P13nPlugin.external_views} == {"/p13n/reports/", "/p13n/reports/latest"}
