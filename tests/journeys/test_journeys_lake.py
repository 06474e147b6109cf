"""Journeys on a small lake: the nightly writes state, events and sends; a rerun writes the same rows;
simulate replays the same nights without writing; the CLI describes them."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from deltalake import DeltaTable, write_deltalake

from p13n.config import load_settings
from p13n.journeys.pipeline import run_night, simulate
from p13n.lake.duck import table_uri
from p13n.lake.tables import GOLD_JOURNEY_EVENTS, GOLD_JOURNEY_STATE, SILVER_SENDS

D1, D2 = dt.date(2024, 3, 1), dt.date(2024, 3, 2)
IDS = [f"C{i:04d}" for i in range(400)]


@pytest.fixture
def own(tmp_path):
    s = load_settings("test", environ={"P13N_DATA_DIR": str(tmp_path / "data")})
    root = s.lake_root
    # Day 1 everyone is active; day 2 half of them lapsed (win_back's entry), C0000 ordered on day 2.
    stage = {D1: ["active"] * 400, D2: ["lapsed"] * 200 + ["active"] * 200}
    write_deltalake(
        f"{root}/gold/segments",
        pd.DataFrame(
            [
                {
                    "customer_id": c,
                    "as_of_date": d,
                    "persona": "p",
                    "rfm_segment": "x",
                    "lifecycle_stage": st,
                    "churn_risk_band": "low",
                    "clv_12m": float(i),
                    "cluster": 0,
                }
                for d, stages in stage.items()
                for i, (c, st) in enumerate(zip(IDS, stages, strict=True))
            ]
        ),
    )
    write_deltalake(
        f"{root}/gold/customer_profiles",
        pd.DataFrame(
            {
                "customer_id": IDS,
                "consent_email": ["granted", "revoked"] * 200,
                "consent_sms": "granted",
                "consent_push": "unknown",
            }
        ),
    )
    write_deltalake(
        f"{root}/gold/identity_keys",
        pd.DataFrame({"key_type": ["shopify_customer_id"], "key_value": ["SH0"], "customer_id": ["C0000"]}),
    )
    write_deltalake(
        f"{root}/silver/shopify_orders",
        pd.DataFrame(
            {
                "order_id": ["1"],
                "customer_id": ["SH0"],
                "created_at": [pd.Timestamp("2024-03-03 10:00")],
                "channel": ["web"],
                "total_usd": [10.0],
            }
        ),
    )
    write_deltalake(
        f"{root}/silver/square_transactions",
        pd.DataFrame(
            {
                "transaction_id": ["S"],
                "created_at": [pd.Timestamp("2023-01-01")],
                "loyalty_id": ["L"],
                "total": [1.0],
                "customer_email_hmac": pd.Series([None], dtype="string"),
            }
        ),
    )
    write_deltalake(
        f"{root}/silver/legacy_pos_sales",
        pd.DataFrame(
            {
                "receipt_no": ["R"],
                "sold_at": [pd.Timestamp("2023-01-01")],
                "loyalty_id": ["L"],
                "amount": [1.0],
            }
        ),
    )
    return s


def _read(s, table) -> pd.DataFrame:
    return DeltaTable(table_uri(s.lake_root, table)).to_pandas()


def test_the_nightly_moves_customers_and_a_rerun_writes_the_same_rows(own):
    assert run_night(own, D1)["win_back"] == {"active": 0}  # nobody moved into lapsed yet
    out = run_night(own, D2)["win_back"]
    assert out["entered"] + out["held_out"] == 200 and 10 <= out["held_out"] <= 40
    assert out["sent"] + out["suppressed"] == out["entered"]  # every other customer has no email consent
    first = (
        _read(own, GOLD_JOURNEY_EVENTS)
        .sort_values(["journey", "customer_id", "event"])
        .reset_index(drop=True)
    )
    run_night(own, D2)
    again = (
        _read(own, GOLD_JOURNEY_EVENTS)
        .sort_values(["journey", "customer_id", "event"])
        .reset_index(drop=True)
    )
    pd.testing.assert_frame_equal(first, again)
    state = _read(own, GOLD_JOURNEY_STATE)
    assert set(state["as_of_date"].astype(str)) == {"2024-03-02"}  # the first night left nobody in
    now = state[state["as_of_date"].astype(str) == "2024-03-02"]
    assert (now["status"] == "active").sum() == out["entered"] and set(now["step"].dropna()) == {"pause"}
    sends = _read(own, SILVER_SENDS)
    journey = sends[sends["program"] == "win_back"]
    assert set(journey["status"]) == {"entered", "held_out", "sent"}
    assert (journey["status"] == "sent").sum() == out["sent"]
    counts, events = simulate(own, "win_back", D1, D2)
    assert counts[0] == {"step": "(entry)", "entered": out["entered"], "held_out": out["held_out"]}
    assert len(_read(own, GOLD_JOURNEY_EVENTS)) == len(again)  # simulate writes nothing


def test_the_simulation_applies_the_caps_and_writes_no_ledger(own):
    """With no email allowed, every email the replay would send is suppressed as capped, and the
    contact ledger is left as the nightly runs wrote it."""
    from p13n.lake.duck import table_exists
    from p13n.lake.tables import OPS_CONTACT_LEDGER

    counts, _ = simulate(own, "win_back", D1, D2)
    reminder = next(c for c in counts if c["step"] == "reminder")
    assert reminder["sent"] > 0 and reminder["capped"] == 0
    strict = own.model_copy(
        update={
            "cadence": own.cadence.model_copy(
                update={
                    "channels": {"email": own.cadence.channels["email"].model_copy(update={"max_per_day": 0})}
                }
            )
        }
    )
    counts, events = simulate(strict, "win_back", D1, D2)
    capped = next(c for c in counts if c["step"] == "reminder")
    assert capped["sent"] == 0 and capped["capped"] == reminder["sent"]
    assert set(events.loc[events["detail"].fillna("").str.contains("cap"), "detail"]) == {
        "email cap: 0 a day"
    }
    assert not table_exists(own.lake_root, OPS_CONTACT_LEDGER)


def test_journeys_cli_lists_shows_and_simulates(own, monkeypatch, capsys):
    from p13n.cli import main
    from p13n.config import get_settings

    monkeypatch.setenv("P13N_DATA_DIR", str(own.data_dir))
    get_settings.cache_clear() if hasattr(get_settings, "cache_clear") else None
    assert main(["journeys", "list"]) == 0
    assert "win_back         5 steps, enters on moves into at_risk, lapsed" in capsys.readouterr().out
    assert (
        main(["journeys", "simulate", "win_back", "--from", "2024-03-01", "--to", "2024-03-02", "--json"])
        == 0
    )
    assert '"entered"' in capsys.readouterr().out
    assert main(["journeys", "simulate", "win_back", "--from", "2024-03-02", "--to", "2024-03-01"]) == 2
    assert "--to 2024-03-01 is before --from 2024-03-02" in capsys.readouterr().err
