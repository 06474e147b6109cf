"""The README is tested, so it cannot drift from the code: every `p13n` command it shows exists with
the options it uses, every table it names is in the catalog, every date it runs falls in the data
`make run` generates, and its Python snippets import what exists. (Its read-only commands also run
against a whole generated night's lake at the end of `test_customers_dag`.)"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import importlib
import re
from pathlib import Path

import pytest

from p13n.cli import build_parser
from p13n.lake.tables import CATALOG, LAYERS, source_tables

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
MAKE_RUN_DAYS = {dt.date(2024, 3, 1), dt.date(2024, 3, 2)}  # `p13n run`'s generated days


def commands() -> list[str]:
    """Every `p13n …` command of the README: code-block lines and inline code, one per `&&` part."""
    found = re.findall(r"^(p13n [^\n]*(?:\\\n[^\n]*)*)", README, re.M)
    found += re.findall(r"`(p13n [a-z][^`]*)`", README)
    out = []
    for cmd in found:
        cmd = re.sub(r"\s+#.*$", "", cmd.replace("\\\n", " "), flags=re.M)
        for part in cmd.split("&&"):
            part = re.sub(r"\[[^\]]*\]", "", part).strip()  # optional parts
            if part.startswith("p13n ") and "…" not in part:
                out.append(part)
    return sorted(set(out))


def _tree(parser: argparse.ArgumentParser) -> dict[tuple[str, ...], set[str]]:
    """Each command path of the parser with the option strings it takes."""
    tree: dict[tuple[str, ...], set[str]] = {}

    def walk(p, path):
        tree[path] = {o for a in p._actions for o in a.option_strings}
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, child in a.choices.items():
                    walk(child, (*path, name))

    walk(parser, ())
    return tree


TREE = _tree(build_parser())


def test_the_readme_shows_many_commands():
    assert len(commands()) > 40


@pytest.mark.parametrize("command", commands())
def test_every_command_exists_with_its_options(command):
    words = command.split()[1:]
    path: tuple[str, ...] = ()
    while words and (*path, words[0]) in TREE:
        path = (*path, words.pop(0))
    assert path, f"{command}: no such command"
    if path[0] == "airflow":  # the rest goes to Airflow's own CLI
        return
    options = {w.split("=")[0] for w in words if w.startswith("--")}
    assert options <= TREE[path], f"{command}: unknown options {sorted(options - TREE[path])}"


def test_every_date_a_command_runs_lies_in_the_generated_data():
    dates = {d for c in commands() for d in re.findall(r"\b\d{4}-\d{2}-\d{2}\b", c)}
    assert dates and {dt.date.fromisoformat(d) for d in dates} <= MAKE_RUN_DAYS


def test_every_table_named_is_in_the_catalog():
    named = set(re.findall(rf"\b((?:{'|'.join(LAYERS)})\.[a-z_]+)\b", README))
    known = set(CATALOG) | set(source_tables())
    assert len(named) > 20 and named - known == set()


def test_python_snippets_parse_and_import_what_exists():
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks
    for block in blocks:
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and node.module.startswith("p13n"):
                module = importlib.import_module(node.module)
                missing = [a.name for a in node.names if not hasattr(module, a.name)]
                assert missing == [], f"from {node.module} import {missing}: not there"
