"""Identity resolution, unit level: normalization, guarded clustering, stable ids, metrics, survivorship."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from p13n.config import FieldRule
from p13n.identity.clustering import cluster_profiles
from p13n.identity.evaluation import evaluate_clusters
from p13n.identity.ids import assign_ids, mint_id, update_aliases


def _normalized(df: pd.DataFrame) -> dict:
    import duckdb

    from p13n.identity.records import normalize

    con = duckdb.connect()
    con.register("records", df)
    return {r["record_id"]: r for r in con.sql(normalize(con, "records")).df().to_dict("records")}


def test_normalize_folds_spellings_of_one_person():
    rows = [
        (
            "a",
            " Bob.Smith+shop@GMAIL.com ",
            "(212) 555-0100",
            "BOB",
            "O'Brien",
            "12 Oak Street",
            "10001-1234",
        ),
        ("b", "bobsmith@gmail.com", "+1 212 555 0100", "robert", "OBRIEN", "12 oak st.", "10001"),
        ("c", "not an email", "555", None, "Van der Berg", "9 North Main Avenue", "K1A 0B1"),
    ]
    df = pd.DataFrame(
        rows, columns=["record_id", "email", "phone", "first_name", "last_name", "street", "postal_code"]
    )
    out = _normalized(df)
    for col in ("email_n", "phone_n", "first_c", "last_n", "street_n", "postal_n"):
        assert out["a"][col] == out["b"][col], col
    assert out["a"]["email_n"] == "bobsmith@gmail.com"
    assert out["a"]["phone_n"] == "2125550100"
    assert (out["a"]["first_n"], out["a"]["first_c"]) == ("bob", "robert")
    assert out["a"]["street_n"] == "12 oak st"
    assert out["c"]["email_n"] is None and out["c"]["phone_n"] is None
    assert (out["c"]["last_n"], out["c"]["street_n"], out["c"]["postal_n"]) == (
        "vanderberg",
        "9 n main ave",
        "K1A0B1",
    )
    assert out["c"]["first_c"] is None


def test_birth_dates_are_read_in_every_documented_format_and_nothing_else():
    dates = ["1956-09-09", "09/09/1956", "1956/09/09", "19560909", "1956-9-9", "31/02/1956", "2156x", None]
    out = _normalized(pd.DataFrame({"record_id": list("abcdefgh"), "birth_date": dates}))
    assert [out[k]["dob"] for k in "abcdefgh"] == ["1956-09-09"] * 5 + [None] * 3


@pytest.mark.spark
def test_the_golden_records_street_and_postal_forms_are_the_matchers(spark):
    """The household id (Spark, on the golden record) and the matcher (DuckDB) read addresses alike."""
    from pyspark.sql import functions as F

    from p13n.identity.records import normalize_postal, normalize_street

    streets = ["12 Oak Street", "12 oak st.", "9 North Main Avenue", "  Flat 3, 1 Rue de l'Église ", "", None]
    postals = ["10001-1234", "K1A 0B1", "4011", "SW1A 1AA", "12", "123456789"]
    df = pd.DataFrame({"record_id": list("abcdef"), "street": streets, "postal_code": postals})
    duck = _normalized(df)
    rows = spark.createDataFrame(df).select(
        "record_id",
        normalize_street(F.col("street")).alias("street_n"),
        normalize_postal(F.col("postal_code")).alias("postal_n"),
    )
    for r in rows.collect():
        assert (r["street_n"], r["postal_n"]) == (
            duck[r["record_id"]]["street_n"],
            duck[r["record_id"]]["postal_n"],
        )


def _profiles(*rows):
    return pd.DataFrame(rows, columns=["profile_id", "records", "guard_source", "dob"])


def _edges(*rows):
    cols = [
        "profile_l",
        "profile_r",
        "rule",
        "match_probability",
        "gamma_first_c",
        "gamma_email_n",
        "gamma_phone_n",
    ]
    return pd.DataFrame(rows, columns=cols)


def test_clustering_merges_links_and_refuses_what_the_guards_forbid():
    profiles = _profiles(
        (1, 1, "shopify_customers", "1980-01-01"),
        (2, 5, None, None),  # consent events with the same email
        (3, 1, "crm_contacts", "1980-01-01"),
        (4, 1, "shopify_customers", None),  # a second shop account: never in the same customer as 1
        (5, 1, "crm_contacts", "1990-05-05"),  # household member at the same address
        (6, 1, None, "1975-03-03"),  # a different birth date, scored by the model on both dates
        (7, 1, None, "1960-07-07"),  # another date, linked through a profile without one
    )
    edges = _edges(
        (1, 2, "email", 1.0, -1, -1, -1),
        (1, 3, "model", 0.999, 4, 4, -1),
        (2, 4, "email", 1.0, -1, -1, -1),  # would put two shop accounts together
        (3, 5, "model", 0.97, 0, 0, 0),  # same address and surname, first names differ
        (3, 6, "model", 0.96, 4, -1, -1),  # names agree, birth dates do not: the score weighed them
        (2, 7, "model", 0.955, 4, -1, -1),  # the score never saw 7's date beside 1's and 3's
    )
    exact = {"gamma_email_n": 4, "gamma_phone_n": 2}
    out = cluster_profiles(profiles, edges, max_records=100, exact_levels=exact)
    cluster = dict(zip(out.assignment["profile_id"], out.assignment["cluster"], strict=True))
    assert cluster == {1: 1, 2: 1, 3: 1, 4: 4, 5: 5, 6: 1, 7: 7}
    assert dict(out.refused) == {
        "two shopify_customers records": 1,
        "household: first names differ, no email or phone in common": 1,
        "different birth dates": 1,
    }
    assert sorted(map(tuple, out.accepted[["profile_l", "profile_r"]].to_numpy())) == [(1, 2), (1, 3), (3, 6)]

    strict = cluster_profiles(profiles, edges, max_records=100, exact_levels=exact, birth_date_guard="strict")
    assert dict(zip(strict.assignment["profile_id"], strict.assignment["cluster"], strict=True))[6] == 6
    assert strict.refused["different birth dates"] == 2
    off = cluster_profiles(profiles, edges, max_records=100, exact_levels=exact, birth_date_guard="off")
    assert dict(zip(off.assignment["profile_id"], off.assignment["cluster"], strict=True))[7] == 1


def test_clustering_respects_the_size_limit():
    profiles = _profiles((1, 3, None, None), (2, 3, None, None), (3, 1, None, None))
    edges = _edges((1, 2, "email", 1.0, -1, -1, -1), (2, 3, "phone", 1.0, -1, -1, -1))
    out = cluster_profiles(profiles, edges, max_records=6)
    assert sorted(out.assignment["cluster"]) == [1, 1, 3]
    assert dict(out.refused) == {"cluster would exceed 6 records": 1}


def _clusters(mapping: dict[str, int]) -> pd.DataFrame:
    return pd.DataFrame(list(mapping.items()), columns=["record_key", "cluster"])


def test_ids_are_inherited_and_merges_splits_new_and_retired_are_logged():
    previous = pd.DataFrame(
        [("a1", "CA"), ("a2", "CA"), ("b1", "CB"), ("c1", "CC"), ("c2", "CC"), ("c3", "CC"), ("d1", "CD")],
        columns=["record_key", "customer_id"],
    )
    # today: a and b merge (a has more records and keeps CA); c3 leaves c; d1 was erased; e1 is new
    today = _clusters({"a1": 10, "a2": 10, "b1": 10, "c1": 20, "c2": 20, "c3": 30, "e1": 40})
    ids, changes = assign_ids(
        today, previous, "2024-03-02", evidence=lambda c, ids: f"linked {'+'.join(ids)}"
    )
    got = dict(zip(ids["record_key"], ids["customer_id"], strict=True))
    assert {k: got[k] for k in ("a1", "a2", "b1", "c1", "c2")} == {
        "a1": "CA",
        "a2": "CA",
        "b1": "CA",
        "c1": "CC",
        "c2": "CC",
    }
    assert got["c3"] == mint_id("c3", "2024-03-02") and got["e1"] == mint_id("e1", "2024-03-02")
    rows = {(r.change_type, r.customer_id, r.previous_id, r.records) for r in changes.itertuples()}
    assert rows == {
        ("merge", "CA", "CB", 1),
        ("split", got["c3"], "CC", 1),
        ("new", got["c3"], None, 1),
        ("new", got["e1"], None, 1),
        ("retired", None, "CD", 0),
    }
    assert changes.loc[changes["change_type"] == "merge", "evidence"].item() == "linked CA+CB"


def test_ids_are_unchanged_when_nothing_changes_and_reruns_mint_the_same_ids():
    today = _clusters({"a1": 1, "a2": 1, "b1": 2})
    first, _ = assign_ids(today, None, "2024-03-01")
    again, _ = assign_ids(today, None, "2024-03-01")
    assert first.equals(again)
    second, changes = assign_ids(today, first, "2024-03-02")
    assert second.equals(first) and changes.empty


def test_aliases_follow_chains_of_merges():
    step1 = pd.DataFrame([{"change_type": "merge", "customer_id": "B", "previous_id": "A"}])
    step2 = pd.DataFrame([{"change_type": "merge", "customer_id": "C", "previous_id": "B"}])
    aliases = update_aliases(update_aliases(None, step1), step2)
    assert aliases.to_dict("records") == [
        {"alias_id": "A", "customer_id": "C"},
        {"alias_id": "B", "customer_id": "C"},
    ]


def test_pairwise_metrics_are_exact():
    truth = pd.DataFrame({"record_key": list("abcde"), "person_id": ["P1", "P1", "P1", "P2", "P2"]})
    predicted = pd.DataFrame(
        {"record_key": list("abcdex"), "customer_id": ["C1", "C1", "C2", "C2", "C3", "C9"]}
    )
    m = evaluate_clusters(predicted, truth)
    # true pairs: ab ac bc de = 4; predicted pairs: ab cd = 2; correct: ab = 1
    assert (m["true_pairs"], m["predicted_pairs"], m["true_positive_pairs"]) == (4, 2, 1)
    assert (m["precision"], m["recall"]) == (0.5, 0.25)
    assert m["f1"] == pytest.approx(1 / 3, abs=1e-6)
    assert (m["records_scored"], m["records_without_truth"]) == (5, 1)
    assert (m["persons_split"], m["customers_overmerged"], m["persons_exact"]) == (2, 1, 0)


@pytest.mark.spark
def test_survivorship_rules_and_provenance(spark):
    from p13n.identity.golden import survive

    ts = dt.datetime
    rows = [
        ("C1", "shopify_customers", "S1", ts(2024, 1, 5), "Robert", "1 Oak St"),
        ("C1", "crm_contacts", "K1", ts(2024, 2, 1), "Bob", "9 Elm St"),
        ("C1", "loyalty_members", "L1", ts(2024, 1, 1), "Bob", None),
        ("C2", "crm_contacts", "K2", None, None, None),  # nothing to choose: null fields, no provenance
        ("C2", "loyalty_members", "L2", ts(2024, 1, 1), "Ann", None),
    ]
    df = spark.createDataFrame(
        rows,
        "customer_id string, source string, record_id string, updated_at timestamp, "
        "first_name string, street string",
    )
    rules = {"first_name": FieldRule(rule="most_frequent"), "street": FieldRule(rule="source_priority")}
    out = survive(
        df, rules, ["shopify_customers", "crm_contacts", "loyalty_members"], fields=("first_name", "street")
    )
    row, other = sorted(out.collect(), key=lambda r: r["customer_id"])
    assert (row["first_name"], row["first_name_source"], row["first_name_record_id"]) == (
        "Bob",
        "crm_contacts",
        "K1",
    )
    assert (row["street"], row["street_source"], row["street_record_id"]) == (
        "1 Oak St",
        "shopify_customers",
        "S1",
    )
    assert row["records"] == 3 and row["sources"] == ["crm_contacts", "loyalty_members", "shopify_customers"]
    assert (other["first_name"], other["first_name_record_id"]) == ("Ann", "L2")
    assert (other["street"], other["street_source"], other["street_record_id"]) == (None, None, None)
    assert (other["first_seen_at"], other["records"]) == (ts(2024, 1, 1), 2)
    recent = survive(
        df.filter("customer_id = 'C1'"), {"street": FieldRule(rule="most_recent")}, [], fields=("street",)
    ).first()
    assert (recent["street"], recent["street_record_id"]) == ("9 Elm St", "K1")


@pytest.mark.spark
def test_consents_latest_per_identifier_and_most_restrictive_across_them(spark):
    from p13n.identity.golden import merge_consents

    ts = dt.datetime
    rows = [
        ("C1", "e1", "email", "granted", ts(2024, 1, 1)),
        ("C1", "e1", "email", "revoked", ts(2024, 2, 1)),
        ("C1", "e1", "email", "granted", ts(2024, 3, 1)),  # changed their mind again: granted
        ("C1", "e2", "sms", "granted", ts(2024, 3, 1)),
        ("C1", "e3", "sms", "revoked", ts(2023, 1, 1)),  # another identifier of theirs said no: no
        ("C2", "e4", "push", "granted", ts(2024, 3, 1)),
        ("C2", "e4", "push", "revoked", ts(2024, 3, 1)),  # same instant: the restrictive one
    ]
    df = spark.createDataFrame(
        rows, "customer_id string, identifier string, channel string, status string, recorded_at timestamp"
    )
    got = {r["customer_id"]: r.asDict() for r in merge_consents(df).collect()}
    assert (got["C1"]["consent_email"], got["C1"]["consent_sms"], got["C1"]["consent_push"]) == (
        "granted",
        "revoked",
        None,
    )
    assert got["C2"]["consent_push"] == "revoked"
    assert got["C1"]["consent_updated_at"] == ts(2024, 3, 1)


def test_splinks_duckdb_is_capped_spills_to_its_own_directory_and_is_released():
    """DuckDB's own default (80% of the machine) left nothing for the Spark driver: at 1M customers
    the DAG process was killed by the kernel. The connection Splink gets is capped and spills into a
    directory of its own; `release` drops what Splink made in it, `close` closes it and removes that
    directory."""
    from pathlib import Path
    from types import SimpleNamespace

    import psutil

    from p13n.identity.matching import close, duckdb_connection, release

    con = duckdb_connection(1.5)
    limit, temp = con.execute(
        "SELECT current_setting('memory_limit'), current_setting('temp_directory')"
    ).fetchone()
    assert limit == "1.5 GiB" and Path(temp).name.startswith("p13n-duckdb-") and Path(temp).is_dir()
    other = duckdb_connection(None)
    default, other_temp = other.execute(
        "SELECT current_setting('memory_limit'), current_setting('temp_directory')"
    ).fetchone()
    assert abs(float(default.split()[0]) - psutil.virtual_memory().total * 0.35 / 2**30) < 0.2
    assert other_temp != temp  # two identity runs on one host do not share spill files
    con.execute("CREATE TABLE profiles AS SELECT 1 AS profile_id")
    con.execute("CREATE TEMP TABLE __splink__df_concat AS SELECT 1 AS x")
    con.execute("CREATE VIEW __splink__blocked AS SELECT 2 AS x")
    release(SimpleNamespace(_db_api=SimpleNamespace(_con=con)))
    left = con.execute(
        "SELECT table_name FROM duckdb_tables() UNION ALL SELECT view_name FROM duckdb_views() "
        "WHERE NOT internal"
    ).fetchall()
    assert left == [("profiles",)]  # the matcher's own tables stay
    close(con)
    assert not Path(temp).exists()
    with pytest.raises(Exception, match="(?i)closed"):
        con.execute("SELECT 1")
    release(SimpleNamespace(_db_api=SimpleNamespace(_con=con)))  # a no-op once closed
    close(other)
    assert not Path(other_temp).exists()


def _duck(**tables):
    import duckdb

    con = duckdb.connect()
    for name, frame in tables.items():
        con.register(name, frame)
    return con


def test_block_pairs_counts_the_pairs_each_blocking_rule_makes():
    """What predicting will score, logged before it starts: n·(n−1)/2 per block, nulls in no block."""
    from p13n.identity.matching import rule_pairs

    prof = pd.DataFrame(
        [
            ("ann", "xu", "1"),
            ("ann", "xu", "1"),
            ("ann", "xu", "2"),
            ("ann", "yo", None),
            ("ann", "yo", "3"),
            ("bob", None, "3"),
        ],
        columns=["first_c", "last_n", "postal_n"],
    )
    con = _duck(profiles=prof)
    assert [rule_pairs(con, r) for r in (["first_c", "last_n"], ["last_n", "postal_n"], ["first_c"])] == [
        3 + 1,
        1,
        10,
    ]


def test_a_blocking_rule_over_the_pair_budget_is_tightened_with_the_city_or_left_out():
    """Names alone blow up quadratically with the customers: over budget, the city is added."""
    from p13n.identity.matching import budget_rules

    rows = [("ann", "xu", f"a{i}@x", "paris" if i < 3 else "lyon") for i in range(6)]
    prof = _duck(profiles=pd.DataFrame(rows, columns=["first_c", "last_n", "email_n", "city_n"]))
    present = ["first_c", "last_n", "email_n", "city_n"]
    # 6 alike names: 15 pairs; within the cities 3 + 3
    assert budget_rules(prof, present, 15) == (
        [["email_n"], ["first_c", "last_n"]],
        {"email_n": 0, "first_c+last_n": 15},
        [],
    )
    rules, pairs, changed = budget_rules(prof, present, 10)
    assert rules == [["email_n"], ["first_c", "last_n", "city_n"]]
    assert pairs == {"email_n": 0, "first_c+last_n+city_n": 6}
    assert changed == ["first_c+last_n (15 pairs) tightened to first_c+last_n+city_n (6)"]
    rules, pairs, changed = budget_rules(prof, present, 5)
    assert (
        rules == [["email_n"]]
        and changed[-1] == "first_c+last_n+city_n left out (6 pairs over the budget of 5)"
    )


def test_the_identity_gate_stops_a_merge_storm_and_truth_below_its_floors():
    from p13n.config import IdentityGate
    from p13n.identity.pipeline import gate_problem

    previous = pd.DataFrame({"record_key": [f"r{i}" for i in range(5000)], "customer_id": range(5000)})
    changes = pd.DataFrame({"change_type": ["merge"] * 120 + ["new"] * 30})
    gate = IdentityGate()  # 2% of 5,000 is 100
    assert gate_problem(changes, previous, {}, gate) == (
        "120 of the previous run's 5,000 customers would merge tonight (2.4%; "
        "identity.gate.max_merge_share is 2.0%)"
    )
    assert gate_problem(changes.iloc[20:], previous, {}, gate) is None  # 100 merges: at the limit
    small = previous.iloc[:100]  # 40 merges of 100 customers, but under min_merges (50)
    assert gate_problem(changes.iloc[80:], small, {}, gate) is None
    assert gate_problem(changes, None, {}, gate) is None  # the first night has nothing to merge into

    metrics = {"f1": 0.97, "customers_overmerged": 30, "customers": 1000}
    assert gate_problem(changes.iloc[:0], previous, metrics, gate) is None  # floors off by default
    strict = IdentityGate(min_f1=0.98, max_overmerged_share=0.01)
    assert "below identity.gate.min_f1 0.98" in gate_problem(changes.iloc[:0], previous, metrics, strict)
    metrics["f1"] = 0.99
    assert gate_problem(changes.iloc[:0], previous, metrics, strict) == (
        "30 customers hold records of several people (3.00%; identity.gate.max_overmerged_share is 1.00%)"
    )


def test_records_with_nothing_known_are_never_one_profile():
    """Identical records are one profile, but records carrying no attribute at all (a store visit
    without email or phone) are not an identity: grouped, they made one customer of 2,164 people."""
    import pandas as pd

    from p13n.identity.matching import profiles
    from p13n.identity.records import NORMALIZED

    blank = dict.fromkeys(NORMALIZED)
    rows = [
        {"record_key": "store_visits:1", "source": "store_visits", "record_id": "1", **blank},
        {"record_key": "social_engagement:2", "source": "social_engagement", "record_id": "2", **blank},
        {
            "record_key": "store_visits:3",
            "source": "store_visits",
            "record_id": "3",
            **blank,
            "email_n": "a@x.com",
        },
        {
            "record_key": "store_visits:4",
            "source": "store_visits",
            "record_id": "4",
            **blank,
            "email_n": "a@x.com",
        },
    ]
    con = _duck(normalized=pd.DataFrame(rows).astype(object))
    profiles(con, "normalized", ["shopify_customers"])
    got = dict(con.sql("SELECT record_key, profile_id FROM record_map").fetchall())
    assert got["store_visits:3"] == got["store_visits:4"]
    assert len({got["store_visits:1"], got["social_engagement:2"], got["store_visits:3"]}) == 3
    assert con.sql("SELECT sum(records) FROM profiles").fetchone()[0] == 4
