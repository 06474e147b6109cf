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


def _with_devices(s):
    """Customer A's app devices (their FCM registration tokens) in silver.app_events."""
    seen = {"D-new": 1, "D-old": 30, "D-dead": 2, "D-stale": 300}  # days before NOW
    write_deltalake(
        f"{s.lake_root}/silver/app_events",
        pd.DataFrame(
            {
                "event_id": [f"e{i}" for i in range(len(seen) + 1)],
                "event_at": [NOW - dt.timedelta(days=d) for d in seen.values()] + [NOW],
                "device_id": [*seen, "D-anon"],
                "app_user_id": ["SH1"] * len(seen) + [None],
                "platform": "ios",
            }
        ),
    )
    write_deltalake(
        f"{s.lake_root}/gold/identity_keys",
        pd.DataFrame({"key_type": ["shopify_customer_id"], "key_value": ["SH1"], "customer_id": ["A"]}),
    )


def _fcm_settings(s, url):
    fcm = s.activation.fcm.model_copy(update={"host": url, "max_backoff_seconds": 0.2})
    return s.model_copy(update={"activation": s.activation.model_copy(update={"fcm": fcm})})


def test_push_reaches_each_recent_device_through_fcm_once(lake, tmp_path, monkeypatch):
    import json

    from fakes.fcm import FakeFCM, service_account

    _with_devices(lake)
    monkeypatch.delenv(lake.activation.klaviyo.credential_env, raising=False)
    info, public = service_account("http://placeholder/token")
    fake = FakeFCM(public, tokens={"D-new", "D-old"})
    fake.fail_next = [503]  # retried
    with serve(fake) as url:
        info["token_uri"] = f"{url}/token"
        (tmp_path / "sa.json").write_text(json.dumps(info))
        monkeypatch.setenv(lake.activation.fcm.credential_env, str(tmp_path / "sa.json"))
        s = _fcm_settings(lake, url)
        counts = dispatch(s, NOW, progress=lambda _: None)
        assert counts == {"outbox": 2, "sent": 1, "undeliverable": 1}
        assert sorted(m["token"] for m in fake.messages) == ["D-new", "D-old"]
        first = fake.messages[0]
        assert first["notification"] == {
            "title": "Still thinking it over?",
            "body": "The items in your cart are waiting for you.",
        }
        assert first["data"] == {
            "message_id": "m3",
            "program_type": "journey",
            "program": "cart_recovery",
            "step": "cart_push",
            "template": "cart_push",
        }
        table = scan(s.lake_root, OPS_DISPATCHES)
        q = f"SELECT destination, status, detail FROM {table} WHERE message_id = 'm3'"
        assert duckdb_connection(settings=s).execute(q).fetchall() == [
            ("fcm", "sent", "2 of 3 devices; 1 unregistered")  # D-stale: silent for 300 days
        ]
        assert len(fake.tokens_issued) == 1  # one access token for every request
        assert dispatch(s, NOW, progress=lambda _: None) == {}  # nothing twice


def test_push_without_credentials_goes_to_the_outbox_and_a_wrong_project_stops(lake, tmp_path, monkeypatch):
    import json

    from fakes.fcm import FakeFCM, service_account

    from p13n.activation.sync import SyncError

    _with_devices(lake)
    monkeypatch.delenv(lake.activation.klaviyo.credential_env, raising=False)
    monkeypatch.delenv(lake.activation.fcm.credential_env, raising=False)
    info, public = service_account("http://placeholder/token")
    fake = FakeFCM(public, project="another-project", tokens={"D-new"})
    with serve(fake) as url:
        info["token_uri"] = f"{url}/token"
        (tmp_path / "sa.json").write_text(json.dumps(info))
        monkeypatch.setenv(lake.activation.fcm.credential_env, str(tmp_path / "sa.json"))
        with pytest.raises(SyncError, match="403 SENDER_ID_MISMATCH"):
            dispatch(_fcm_settings(lake, url), NOW, progress=lambda _: None)
    assert fake.messages == []
    # the email and SMS still went out (to the outbox); the push is left for the next dispatch
    assert sorted(r[0] for r in _dispatched(lake)) == ["m1", "m2", "m4"]
    monkeypatch.delenv(lake.activation.fcm.credential_env)
    assert dispatch(lake, NOW, progress=lambda _: None) == {"outbox": 1}
    assert sorted(r[0] for r in _dispatched(lake)) == ["m1", "m2", "m3", "m4"]
    files = sorted((lake.data_dir / "exports" / "outbox").rglob("*.csv"))
    assert len(files) == 2  # the second dispatch, in the same second, did not overwrite the first
    sent = pd.concat([pd.read_csv(p) for p in files]).set_index("message_id")
    assert sorted(sent.index) == ["m1", "m2", "m3"]
    assert sent.loc["m3", "devices"] == "D-new;D-dead;D-old" and sent.loc["m3", "channel"] == "push"


def test_email_through_mailchimp_customer_journey_steps(lake, monkeypatch):
    from fakes.marketing import FakeMailchimp

    from p13n.activation.mailchimp import Mailchimp
    from p13n.config import MailchimpStep

    monkeypatch.delenv(lake.activation.klaviyo.credential_env, raising=False)
    extra = _message("m7", "B", "email", "journey", "win_back", "reminder", 2)
    write_deltalake(
        f"{lake.lake_root}/ops/contact_ledger", pa.Table.from_pylist([extra], schema=LEDGER), mode="append"
    )
    fake = FakeMailchimp(api_key="key-us1")
    fake.journeys[(7, 3)] = "L1"
    fake.members["L1"]["b@x.com"] = {"id": "h", "email_address": "b@x.com", "status": "unsubscribed"}
    with serve(fake) as url:
        mc = lake.activation.mailchimp.model_copy(
            update={
                "host": url,
                "journey_steps": {"winback_reminder": MailchimpStep(list_id="L1", journey_id=7, step_id=3)},
            }
        )
        s = lake.model_copy(
            update={
                "activation": lake.activation.model_copy(update={"mailchimp": mc}),
                "cadence": lake.cadence.model_copy(update={"email_platform": "mailchimp"}),
            }
        )
        client = Mailchimp(s, "key-us1")
        # A's reminder starts the journey step (A joins the audience first); B, unsubscribed there, is
        # not resubscribed; B's SMS goes to the outbox (no Klaviyo key), A's push has no device
        assert dispatch(s, NOW, progress=lambda _: None, mailchimp_client=client) == {
            "outbox": 1,
            "sent": 1,
            "undeliverable": 3,
        }
        assert fake.triggered == [(7, 3, "a@x.com")]
        assert fake.members["L1"]["a@x.com"]["status"] == "subscribed"
        assert fake.members["L1"]["b@x.com"]["status"] == "unsubscribed"
        table = scan(s.lake_root, OPS_DISPATCHES)
        rows = (
            duckdb_connection(settings=s)
            .execute(
                f"SELECT message_id, destination, status, detail FROM {table} "
                "WHERE channel = 'email' ORDER BY 1"
            )
            .fetchall()
        )
        assert [r[:3] for r in rows] == [
            ("m1", "mailchimp", "sent"),
            ("m4", "none", "undeliverable"),
            ("m7", "mailchimp", "undeliverable"),
        ]
        assert rows[2][3].startswith("blocked: the contact is in a compliance state")  # no address in ops
        # the welcome email has no journey step: undeliverable, saying which setting is missing
        later = dispatch(s, NOW + dt.timedelta(hours=3), progress=lambda _: None, mailchimp_client=client)
        assert later == {"undeliverable": 1}
        detail = (
            duckdb_connection(settings=s)
            .execute(f"SELECT detail FROM {table} WHERE message_id = 'm5'")
            .fetchone()[0]
        )
        assert (
            detail == "no Mailchimp journey step for template 'welcome' (activation.mailchimp.journey_steps)"
        )
