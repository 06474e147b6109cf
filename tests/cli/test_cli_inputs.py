"""Every CLI answers bad input with one line naming the input and the reason, exit code 2, and writes
nothing: files that are empty, binary, header-only, one row or a directory; out-of-range numbers;
impossible dates; unsupported outputs; SQL that does not parse or names no table; unknown people."""

from __future__ import annotations

import pytest

from p13n.cli import main

PEOPLE = ["--user-column", "customer", "--item-column", "item", "--time-column", "date"]
CLV = ["--customer-column", "customer", "--date-column", "date", "--amount-column", "amount"]


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.setenv("P13N_DATA_DIR", str(tmp_path / "data"))
    from p13n.config import get_settings

    get_settings.cache_clear() if hasattr(get_settings, "cache_clear") else None
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "binary.csv").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "header.csv").write_text("record_id,first_name,last_name\n")
    (tmp_path / "one.csv").write_text("record_id,first_name,last_name\n1,Ann,Lee\n")
    (tmp_path / "adir").mkdir()
    (tmp_path / "three.csv").write_text(
        "customer,item,date,amount\nA,x,2024-01-01,3\nB,y,2024-01-02,4\nA,y,2024-01-03,5\n"
    )
    return tmp_path


CASES = [
    (
        ["identity", "resolve", "--input", "{t}/empty.csv", "--output", "{t}/o.csv"],
        "empty.csv: the file is empty",
    ),
    (
        ["identity", "resolve", "--input", "{t}/binary.csv", "--output", "{t}/o.csv"],
        "binary.csv: not a UTF-8 text file",
    ),
    (
        ["identity", "resolve", "--input", "{t}/header.csv", "--output", "{t}/o.csv"],
        "header.csv: 0 record(s)",
    ),
    (["identity", "resolve", "--input", "{t}/one.csv", "--output", "{t}/o.csv"], "one.csv: 1 record(s)"),
    (["identity", "resolve", "--input", "{t}/adir", "--output", "{t}/o.csv"], "adir: is a directory"),
    (["identity", "resolve", "--input", "{t}/nope.csv", "--output", "{t}/o.csv"], "nope.csv: no such file"),
    (["clv", "fit", "--transactions", "{t}/adir", *CLV], "adir: is a directory"),
    (["clv", "fit", "--transactions", "{t}/binary.csv", *CLV], "binary.csv: not a UTF-8 text file"),
    (
        ["recommend", "evaluate", "--interactions", "{t}/three.csv", *PEOPLE, "--k", "0"],
        "argument --k: expected a whole number",
    ),
    (
        ["recommend", "evaluate", "--interactions", "{t}/three.csv", *PEOPLE, "--k", "-1"],
        "argument --k: expected a whole number",
    ),
    (
        ["recommend", "evaluate", "--interactions", "{t}/three.csv", *PEOPLE, "--k", "²"],
        "argument --k: expected a whole number",
    ),
    (
        ["export", "--audience", "vip_win_back", "--to", "csv", "--date", "2024-13-45"],
        "argument --date: expected a date",
    ),
    (
        [
            "export",
            "--audience",
            "vip_win_back",
            "--to",
            "csv",
            "--date",
            "2024-03-02",
            "--out",
            "{t}/x.xlsx",
        ],
        "x.xlsx: only a CSV export",
    ),
    (["sql", "{t}/bad.sql"], "ParserException"),
    (["sql", "{t}/nolayer.sql"], "table name 'nope.x' must be <layer>.<name>"),
    (["sql", "{t}/noview.sql"], "no sql/nope.sql"),
    (["privacy", "forget", "--customer", "granted"], "unknown customer id 'granted'"),
    (["privacy", "export", "--customer", "C404"], "unknown customer id 'C404'"),
    (
        ["privacy", "request", "forget", "--email", "not-an-address"],
        "'not-an-address' is not an email address",
    ),
    (["trigger", "ingest_sources", "--date", "yesterday"], "argument --date: expected a date"),
    (["bench", "experiments", "--reps", "0"], "--reps: expected a whole number from 1 to 1000, got '0'"),
    (["bench", "experiments", "--rows", "0"], "--rows: expected a whole number from 1 to 10^9, got '0'"),
]


@pytest.mark.parametrize(
    ("argv", "said"), CASES, ids=[" ".join(c[0][:2]) + f"-{i}" for i, c in enumerate(CASES)]
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(files, argv, said, capsys):
    (files / "bad.sql").write_text("SELEC 1 FROM {{ gold.segments }}")
    (files / "nolayer.sql").write_text("SELECT * FROM {{ nope.x }}")
    (files / "noview.sql").write_text("SELECT * FROM {{ nope }}")
    import pandas as pd
    from deltalake import write_deltalake

    write_deltalake(
        str(files / "data" / "lake" / "gold" / "segments"),
        pd.DataFrame({"customer_id": ["C1"]}),
        mode="overwrite",
    )
    before = sorted(
        p.relative_to(files) for p in files.rglob("*") if p.is_file() and "secrets" not in p.parts
    )
    code = _run([a.format(t=files) for a in argv])
    err = [
        line
        for line in capsys.readouterr().err.splitlines()
        if line.strip() and not line.startswith(("usage:", " "))
    ]
    assert code == 2, err
    assert len(err) == 1 and said in err[0], err
    after = sorted(p.relative_to(files) for p in files.rglob("*") if p.is_file() and "secrets" not in p.parts)
    assert after == before  # nothing written: no output file, no lake table, no partial state


def _run(argv: list[str]) -> int:
    """main's exit code, argparse's errors (SystemExit) included."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_ctrl_c_is_one_line_and_exit_130(files, monkeypatch, capsys):
    import p13n.cli.lake as lake_cli

    def interrupted(_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(lake_cli, "_cmd_generate", interrupted)
    code = main(["generate", "--customers", "10"])
    assert code == 130
    assert capsys.readouterr().err.splitlines() == ["p13n generate: interrupted"]
