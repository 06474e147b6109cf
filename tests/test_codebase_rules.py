"""Rules of the codebase that review alone does not hold: the lake has one door (every Delta read
and write goes through `p13n.lake`), every table is named once in its catalog, and no module
reaches into another's private names."""

import re
from pathlib import Path

import pytest

from p13n.lake.tables import CATALOG, LAYERS, Table, source_tables, table

ROOT = Path(__file__).resolve().parents[1]
CODE = [p for d in ("jobs", "models", "dags") for p in sorted((ROOT / d).rglob("*.py"))]
LAKE = ROOT / "jobs" / "lake"


def _outside_lake():
    return [p for p in CODE if LAKE not in p.parents]


@pytest.mark.parametrize("door", ["write_deltalake(", "DeltaTable(", "delta_scan(", "from deltalake"])
def test_no_delta_access_outside_the_lake_package(door):
    found = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in _outside_lake()
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if door in line and not line.lstrip().startswith("#") and "`" not in line
    ]
    assert found == [], f"{door} outside p13n.lake (use p13n.lake.duck or the Lake): {found}"


def test_no_table_name_is_written_out_outside_the_catalog():
    layers = "|".join(LAYERS)
    name = re.compile(rf"""["']((?:{layers})\.[a-z0-9_]+)["']""")
    found = [
        f"{p.relative_to(ROOT)}:{n}: {m.group(1)}"
        for p in _outside_lake()
        for n, line in enumerate(p.read_text().splitlines(), 1)
        for m in name.finditer(line)
        if m.group(1) in CATALOG or m.group(1) in set(source_tables())
    ]
    assert found == [], f"table names written out instead of p13n.lake.tables' constants: {found}"


def test_the_catalog_names_each_table_once_with_its_layout():
    names = [*CATALOG, *source_tables()]
    assert len(names) == len(set(names))
    assert len(CATALOG) == 42 and len(source_tables()) == 32 * 3 + 17
    assert all(isinstance(t, Table) and t.owner for t in [*CATALOG.values(), *source_tables()])
    seg = table("gold.segments")
    assert (seg.partition_by, seg.key, seg.owner, seg.layer) == (
        "as_of_date",
        ("customer_id",),
        "customers",
        "gold",
    )
    orders = table("silver.shopify_orders")
    assert (orders.partition_by, orders.key) == ("event_date", ("order_id",))
    assert table("bronze.products").partition_by == "_batch_date"
    assert table("ops.model_runs").partition_columns == ["as_of_date", "model"]
    assert seg.uri("/lake/") == "/lake/gold/segments" and f"{seg}" == "gold.segments"


def test_an_unknown_table_is_refused_with_the_way_out():
    with pytest.raises(ValueError, match="not a table of the catalog; `p13n lake tables --catalog`"):
        table("gold.nope")
    with pytest.raises(ValueError, match="must be <layer>.<name>"):
        table("nope")


def test_no_private_name_is_imported_across_modules():
    import ast

    found = []
    for p in CODE:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("p13n"):
                found += [
                    f"{p.relative_to(ROOT)}: {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert found == [], f"private names imported from another module: {found}"


def test_spark_frames_reach_pandas_through_one_function():
    """`p13n.spark.to_pandas`, which drops the plan metrics a Spark Connect client attaches as `attrs`
    (pandas deep-copies them into every derived frame: 5 s of the churn task's 31 s at 20k customers)."""
    found = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in CODE
        if p != ROOT / "jobs" / "spark.py"
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if ".toPandas()" in line and not line.lstrip().startswith("#")
    ]
    assert found == [], f"toPandas() outside p13n.spark.to_pandas: {found}"


def test_to_pandas_leaves_no_attributes_to_copy():
    import pandas as pd

    from p13n.spark import to_pandas

    class Frame:  # what a Spark Connect frame's toPandas returns: the plan's metrics in attrs
        def toPandas(self):
            pdf = pd.DataFrame({"a": [1, 2]})
            pdf.attrs["metrics"] = [{"plan": "node"}] * 3
            return pdf

    pdf = to_pandas(Frame())
    assert pdf.attrs == {}
    assert pdf["a"].tolist() == [1, 2]
