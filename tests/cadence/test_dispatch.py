"""Dispatch: the ledger's due trigger and journey messages handed to Klaviyo (through its SDK, to the
local fake) or to the outbox file, each once."""

from __future__ import annotations

import datetime as dt
import os
import stat

import pandas as pd
import pyarrow as pa
import pytest
from deltalake import write_deltalake
from fakes.marketing import FakeKlaviyo, serve

from p13n.cadence.dispatch import METRIC, dispatch
from p13n.cadence.ledger import SCHEMA as LEDGER
from p13n.config import load_settings
from p13n.lake.duck import duckdb_connection, scan
from p13n.lake.tables import OPS_DISPATCHES

NOW = dt.datetime(2024, 3, 5, 18, tzinfo=dt.UTC)


def _message(mid, customer, channel, ptype, program, step, hours_ago):
    return {
        "message_id": mid,
        "decision_id": f"{ptype}:{program}",
        "customer_id": customer,
        "channel": channel,
        "program_type": ptype,
        "program": program,
        "step": step,
        "priority": 0,
        "status": "scheduled",
        "reason": "",
        "decided_at": NOW - dt.timedelta(days=1),
        "scheduled_at": NOW - dt.timedelta(hours=hours_ago),
        "time_zone": "America/Chicago",
        "local_date": NOW.date(),
        "ledger_date": NOW.date() - dt.timedelta(days=1),
    }


@pytest.fixture
def lake(tmp_path):
    s = load_settings("test", environ={"P13N_DATA_DIR": str(tmp_path / "data")})
    rows = [
        _message("m1", "A", "email", "journey", "win_back", "reminder", 2),
        _message("m2", "B", "sms", "journey", "win_back", "offer_sms", 1),
        _message("m3", "A", "push", "journey", "cart_recovery", "cart_push", 1),
        _message("m4", "C", "email", "trigger", "abandoned_cart", "abandoned_cart:C:x", 3),  # no address
        _message("m5", "A", "email", "journey", "welcome", "welcome", -2),  # due in two hours
        _message("m6", "B", "email", "audience", "vip_win_back", "entry", 5),  # the list sync's
    ]
    write_deltalake(f"{s.lake_root}/ops/contact_ledger", pa.Table.from_pylist(rows, schema=LEDGER))
    write_deltalake(
        f"{s.lake_root}/restricted/customer_profiles",
        pd.DataFrame(
            {
                "customer_id": ["A", "B", "C"],
                "email": ["a@x.com", "b@x.com", None],
                "phone": [None, "+15550001", None],
            }
        ),
    )
    return s


def _dispatched(s):
    q = f"SELECT message_id, destination, status FROM {scan(s.lake_root, OPS_DISPATCHES)} ORDER BY 1"
    return duckdb_connection(settings=s).execute(q).fetchall()


def test_due_messages_reach_klaviyo_as_events_once(lake):
    from p13n.activation.klaviyo import Klaviyo

    fake = FakeKlaviyo(api_key="pk_test")
    with serve(fake) as url:
        s = lake.model_copy(
            update={
                "activation": lake.activation.model_copy(
                    update={"klaviyo": lake.activation.klaviyo.model_copy(update={"host": url})}
                )
            }
        )
        counts = dispatch(s, NOW, client=Klaviyo(s, "pk_test"), progress=lambda _: None)
        assert counts == {"sent": 2, "undeliverable": 2}
        assert [(e["profile"], e["unique_id"], e["properties"]["template"]) for e in fake.events] == [
            ("a@x.com", "m1", "winback_reminder"),
            ("+15550001", "m2", "winback_offer"),
        ]
        assert {e["metric"] for e in fake.events} == {METRIC}
        assert _dispatched(s) == [
            ("m1", "klaviyo", "sent"),
            ("m2", "klaviyo", "sent"),
            ("m3", "none", "undeliverable"),
            ("m4", "none", "undeliverable"),
        ]
        # nothing is handed over twice; the welcome email goes when it is due
        assert dispatch(s, NOW, client=Klaviyo(s, "pk_test"), progress=lambda _: None) == {}
        later = dispatch(
            s, NOW + dt.timedelta(hours=3), client=Klaviyo(s, "pk_test"), progress=lambda _: None
        )
        assert later == {"sent": 1} and fake.events[-1]["unique_id"] == "m5"


def test_without_a_key_due_messages_go_to_an_owner_only_outbox(lake):
    os.environ.pop(lake.activation.klaviyo.credential_env, None)
    assert dispatch(lake, NOW, progress=lambda _: None) == {"outbox": 2, "undeliverable": 2}
    (path,) = (lake.data_dir / "exports" / "outbox").rglob("*.csv")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    sent = pd.read_csv(path)
    assert list(sent["message_id"]) == ["m1", "m2"] and list(sent["template"]) == [
        "winback_reminder",
        "winback_offer",
    ]
