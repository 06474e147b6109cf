"""The generator keeps a day's records packed until it writes them: the landing zone is the same."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from p13n.generate import writers
from p13n.generate.retail import generate
from p13n.generate.writers import Spool
from p13n.sources.catalog import load_catalog


def test_a_spool_packs_all_but_its_newest_records_and_gives_them_back_in_order():
    spool, records = Spool(chunk=3), [{"n": i, "tag": f"r{i}"} for i in range(10)]
    for r in records:
        spool.append(r)
    assert (len(spool), spool._n_packed, len(spool._tail)) == (10, 6, 4)  # 3 newer follow each packed one
    assert list(spool) == records and list(spool) == records  # iterable twice
    assert spool.take([9, 0, 5, 5]) == {0: records[0], 5: records[5], 9: records[9]}
    assert not Spool() and spool


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_packing_changes_nothing_the_generator_writes(tmp_path, monkeypatch):
    """Bad records are planted by drawing victims first and fetching them from the packed chunks
    after: with 5-record chunks (everything packed) every landing and truth file is byte-identical."""
    cat = load_catalog()
    kwargs = {"customers": 400, "days": 2, "seed": 7, "start": dt.date(2024, 3, 1), "history_days": 60}
    generate(cat, tmp_path / "default", bad_rate=0.05, **kwargs)
    monkeypatch.setattr(writers.Spool.__init__, "__defaults__", (5,))
    generate(cat, tmp_path / "tiny", bad_rate=0.05, **kwargs)
    default, tiny = _tree(tmp_path / "default"), _tree(tmp_path / "tiny")
    assert len(default) > 40 and default.keys() == tiny.keys()
    assert [k for k in default if default[k] != tiny[k]] == []
    assert b"malformed" in default["truth/bad_records.csv"]


def test_a_planted_lift_leaves_day_0_alone_and_multiplies_the_treated_purchases_after(tmp_path):
    """`plant` multiplies the purchase rate of the people it names from day 1 on: day 0 (and its
    history) is byte-identical, so a measurement can assign treatment on day 0's data."""
    import json

    import numpy as np

    cat = load_catalog()
    kwargs = {"customers": 400, "days": 8, "seed": 3, "start": dt.date(2024, 3, 1), "history_days": 10}
    generate(cat, tmp_path / "plain", bad_rate=0.0, **kwargs)
    generate(cat, tmp_path / "planted", bad_rate=0.0, plant=np.full(400, 3.0), **kwargs)
    plain, planted = _tree(tmp_path / "plain"), _tree(tmp_path / "planted")
    day0 = [k for k in plain if "/2024-03-01/" in k]
    assert day0 and [k for k in day0 if plain[k] != planted.get(k)] == []

    def web_orders(tree) -> int:
        files = [k for k in tree if k.startswith("landing/shopify/orders/") and "/2024-03-01/" not in k]
        return sum(1 for k in files for line in tree[k].splitlines() if json.loads(line).get("id"))

    assert web_orders(planted) > 2.2 * web_orders(plain)  # three times the rate, in expectation


def test_about_a_third_of_web_sessions_land_from_a_campaign(tmp_path):
    """The landing page (a session's first event) carries utm parameters for about 30% of sessions;
    every medium is one attribution reads as a paid or owned channel."""
    import json
    from collections import defaultdict
    from urllib.parse import parse_qs, urlparse

    from p13n.customers.activity import UTM_CHANNELS

    cat = load_catalog()
    generate(cat, tmp_path, 3000, 2, 5, dt.date(2024, 3, 1), bad_rate=0.0, history_days=5)
    sessions = defaultdict(list)
    for path in sorted((tmp_path / "landing" / "_topics" / "web-events").rglob("*")):
        if path.is_file():
            for line in path.read_text().splitlines():
                event = json.loads(line)
                sessions[event["session_id"]].append(event)
    assert len(sessions) > 250
    mediums = []
    for events in sessions.values():
        events.sort(key=lambda e: e["event_at"])
        assert all("utm_" not in e["page_url"] for e in events[1:])  # only the landing page
        query = parse_qs(urlparse(events[0]["page_url"]).query)
        if query:
            mediums.append(query["utm_medium"][0])
    assert 0.24 < len(mediums) / len(sessions) < 0.36
    assert {"cpc", "paid_social", "email"} <= set(mediums) <= set(UTM_CHANNELS)
