"""Record matching: deterministic rules on strong identifiers, then Fellegi-Sunter scoring with Splink.

1. **Profiles.** Records with the same normalized attributes and identifiers are one *profile*
   (a customer's 40 consent events that carry the same email are one row to compare, not 40).
2. **Deterministic edges.** Profiles sharing a normalized email, phone or platform id are linked,
   each to the smallest profile id holding that value (a star, so an email seen on n records makes
   n edges, not n²).
3. **Probabilistic edges.** Splink's Fellegi-Sunter model (on DuckDB in this process by default,
   or on Spark): blocking rules over whichever attributes the data has (within a pair budget),
   comparisons with Jaro-Winkler / Levenshtein levels on names (with a level for names typed in each
   other's field), email, phone, street, postal code, city, state and birth date, u estimated by
   random sampling, m by EM, match weights with term-frequency adjustment on names and city; pairs
   at or above the threshold become edges.

Profiles and deterministic edges are DuckDB tables (`profiles`, `record_map`) in the matcher's own
connection (`duckdb_connection`), built by `p13n.identity.resolve` from the normalized records.
Clustering (with its guards) is `p13n.identity.clustering`; this module only proposes edges.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from p13n.identity.records import KEY_TYPES, NORMALIZED
from p13n.lake.duck import literal

log = logging.getLogger(__name__)
STRONG = ("email_n", "phone_n", *KEY_TYPES)  # equal values mean the same person
MIN_EM_PAIRS = 10  # the fewest pairs an EM training block must make
_RULE_NAMES = {"email_n": "email", "phone_n": "phone"}


class NotEnoughToMatch(ValueError):
    """The records leave a model nothing to learn from (no blocking rule, or no pair to train on)."""


@dataclass
class MatchModel:
    """What was learned from the data: Splink's trained settings and the figures worth logging."""

    settings: dict
    threshold: float
    columns: list[str]
    metrics: dict[str, float] = field(default_factory=dict)
    block_pairs: dict[str, int] = field(default_factory=dict)  # blocking rule → pairs it makes
    blocking_changes: list[str] = field(default_factory=list)  # rules tightened or left out (budget)


def profiles(con, normalized: str, one_per_customer: list[str]) -> None:
    """Create the tables `profiles` (one row per distinct normalized identity: profile_id, the
    attributes, guard_source, records) and `record_map` (record_key, source, record_id, profile_id)
    from the normalized records `normalized`, in DuckDB connection `con`.

    A record of a one-per-customer source keeps a profile of its own (its source is part of the
    profile key), so the clustering guard can count such records. So does a record carrying no
    attribute at all (a store visit without email or phone): "nothing known" is not an identity, and
    grouping them made one customer of 2,164 people at 1M customers.
    """
    columns = {c for c, *_ in con.sql(f"DESCRIBE {normalized}").fetchall()}
    keys = [f'"{k}"' if k in columns else f"CAST(NULL AS VARCHAR) AS {k}" for k in KEY_TYPES]
    guard = ", ".join(literal(s) for s in one_per_customer) or "NULL"
    parts = [*NORMALIZED, *KEY_TYPES, "guard_source", "anonymous"]
    nothing = " AND ".join(f"{c} IS NULL" for c in [*NORMALIZED, *KEY_TYPES])
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE keyed AS
        SELECT *, CASE WHEN {nothing} THEN record_key END AS anonymous FROM (
            SELECT record_key, source, record_id, {", ".join(NORMALIZED)}, {", ".join(keys)},
                   CASE WHEN source IN ({guard}) THEN source END AS guard_source
            FROM {normalized}
        )
    """)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE keyed AS
        SELECT *, CAST(hash({", ".join(parts)}) >> 1 AS BIGINT) AS profile_id FROM keyed
    """)
    mapped = "record_key, source, record_id, profile_id"
    con.execute(f"CREATE OR REPLACE TEMP TABLE record_map AS SELECT {mapped} FROM keyed")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE profiles AS
        SELECT profile_id, {", ".join(parts)}, count(*) AS records FROM keyed GROUP BY ALL
    """)
    con.execute("DROP TABLE keyed")


def deterministic_edges(con, columns: list[str]):
    """Edges (profile_l, profile_r, rule) between profiles that share a strong identifier, as pandas:
    each profile to the smallest profile id holding the value (a star, not a clique)."""
    parts = [
        f"""SELECT anchor AS profile_l, profile_id AS profile_r, {literal(_RULE_NAMES.get(c, c))} AS rule
            FROM (SELECT profile_id, min(profile_id) OVER (PARTITION BY {c}) AS anchor
                  FROM profiles WHERE {c} IS NOT NULL)
            WHERE profile_id <> anchor"""
        for c in columns
    ]
    return con.sql(" UNION ALL ".join(parts)).df()


def present_attributes(con, columns, table: str = "profiles", min_share: float = 0.01) -> list[str]:
    """The attributes at least `min_share` of profiles carry, and at least one (a column all null says
    nothing)."""
    counts = con.sql(f"SELECT count(*), {', '.join(f'count({c})' for c in columns)} FROM {table}").fetchone()
    total = max(counts[0], 1)
    return [c for c, n in zip(columns, counts[1:], strict=True) if n >= max(1, min_share * total)]


def compared_attributes(present: list[str]) -> list[str]:
    """The attributes the model compares."""
    used = ["first_c", "last_n", "email_n", "phone_n", "street_n", "postal_n", "city_n", "dob"]
    if "street_n" in present or "postal_n" in present:
        used.append("state_n")  # a state says little alone; beside an address it corroborates it
    return [c for c in used if c in present]


def blocking_rules(present: list[str]) -> list[list[str]]:
    """The blocking rules of the predictions: the attributes two profiles must share to be scored."""
    candidates = [
        ["email_n"],
        ["phone_n"],
        ["first_c", "last_n"],
        ["last_n", "postal_n"],
        ["first_c", "dob"],
        ["last_n", "dob"],
        ["street_n", "postal_n"],
        ["first_c", "street_n"],
        ["dob", "postal_n"],  # names mistyped, swapped or replaced: the date and the place still agree
        ["dob", "city_n"],
    ]
    return [b for b in candidates if all(c in present for c in b)]


def rule_pairs(con, rule: list[str], table: str = "profiles") -> int:
    """The pairs of profiles `rule` makes: n·(n−1)/2 per block of n profiles sharing its values (nulls
    in no block), before Splink drops the pairs an earlier rule already made."""
    cols = ", ".join(rule)
    not_null = " AND ".join(f"{c} IS NOT NULL" for c in rule)
    n = con.sql(
        f"SELECT sum(n * (n - 1) / 2) FROM "
        f"(SELECT count(*) AS n FROM {table} WHERE {not_null} GROUP BY {cols})"
    ).fetchone()[0]
    return int(n or 0)


def budget_rules(
    con, present: list[str], max_pairs: int, table: str = "profiles"
) -> tuple[list[list[str]], dict[str, int], list[str]]:
    """(blocking rules, the pairs each makes, what was changed) within a budget of `max_pairs` a rule.

    A rule's pairs grow with the square of its blocks: names alone make 2.5M pairs at 100k customers
    and 246M at 1M (common names in one block). A rule over the budget is tightened with the city
    (two people named alike in one town are still compared); one still over it is left out. The caller
    reports `changed` (`resolve_records` says each line).
    """
    rules, pairs, changed = [], {}, []
    for rule in blocking_rules(present):
        n = rule_pairs(con, rule, table)
        if n > max_pairs and "city_n" in present and "city_n" not in rule:
            tighter = [*rule, "city_n"]
            m = rule_pairs(con, tighter, table)
            changed.append(f"{'+'.join(rule)} ({n:,} pairs) tightened to {'+'.join(tighter)} ({m:,})")
            rule, n = tighter, m
        if n > max_pairs:
            changed.append(f"{'+'.join(rule)} left out ({n:,} pairs over the budget of {max_pairs:,})")
            continue
        rules.append(rule)
        pairs["+".join(rule)] = n
    return rules, pairs, changed


def _name_comparison(col: str, other: str | None):
    """Splink's name comparison (exact with term frequencies, then Jaro-Winkler at 0.92, 0.88 and 0.7),
    with a level for a name typed in the other name's field ("Hanigan Bryce" for "Bryce Hanigan")."""
    import splink.comparison_level_library as cll
    import splink.comparison_library as cl

    if other is None:
        return cl.NameComparison(col).configure(term_frequency_adjustments=True)
    return cl.CustomComparison(
        [
            cll.NullLevel(col),
            cll.ExactMatchLevel(col).configure(tf_adjustment_column=col),
            cll.CustomLevel(
                f'("{col}_l" = "{other}_r" OR "{col}_r" = "{other}_l")', f"{col} is the other's {other}"
            ),
            *[cll.JaroWinklerLevel(col, t) for t in (0.92, 0.88, 0.7)],
            cll.ElseLevel(),
        ],
        output_column_name=col,
    )


def _splink_settings(
    present: list[str], blocks: list[list[str]]
) -> tuple[dict, list[list[str]], list[list[str]]]:
    """(Splink settings, EM training blocks, deterministic rules) for the attributes present and the
    blocking rules of the predictions."""
    import splink.comparison_library as cl
    from splink import SettingsCreator, block_on

    comparisons = []
    both_names = "first_c" in present and "last_n" in present
    for col, other in (("first_c", "last_n"), ("last_n", "first_c")):
        if col in present:
            comparisons.append(_name_comparison(col, other if both_names else None))
    if "email_n" in present:
        comparisons.append(cl.EmailComparison("email_n"))
    if "phone_n" in present:
        comparisons.append(cl.LevenshteinAtThresholds("phone_n", [1]))
    if "street_n" in present:
        comparisons.append(cl.JaroWinklerAtThresholds("street_n", [0.9, 0.7]))
    if "postal_n" in present:
        comparisons.append(cl.LevenshteinAtThresholds("postal_n", [1]))
    if "city_n" in present:
        comparisons.append(cl.ExactMatch("city_n").configure(term_frequency_adjustments=True))
    if "state_n" in compared_attributes(present):
        comparisons.append(cl.ExactMatch("state_n"))
    if "dob" in present:
        comparisons.append(cl.LevenshteinAtThresholds("dob", [1]))

    if not blocks:
        raise NotEnoughToMatch(
            "too little to match on: the records need an email, a phone, or names with a postal code "
            f"or birth date (present: {', '.join(present) or 'nothing'})"
        )
    # EM needs blocks that leave the other comparisons free to vary: one on contact details, one on
    # names, so every comparison is estimated at least once. The two name comparisons read both names
    # (the swapped-names level), so a block on either name fixes both.
    compared = compared_attributes(present)
    names = {"first_c", "last_n"} if both_names else set()

    def free_in(block: list[str]) -> set[str]:
        return {c for c in compared if not ((names if c in names else {c}) & set(block))}

    em = [
        b
        for b in (["first_c", "last_n"], ["email_n"], ["postal_n", "dob"], ["phone_n"], ["last_n", "dob"])
        if all(c in present for c in b) and free_in(b)
    ][:3]
    # Every compared attribute must vary in at least one EM block: with few attributes (an address
    # only, names and a postal code) add single-attribute blocks until each is left free once.
    for block in (["postal_n"], ["dob"], ["street_n"], ["last_n"], ["city_n"], ["first_c"]):
        free = set().union(*map(free_in, em))
        if set(compared) <= free:
            break
        if all(c in present for c in block) and block not in em and free_in(block) - free:
            em.append(block)
    deterministic = [
        b for b in (["email_n"], ["phone_n"], ["first_c", "last_n", "dob"]) if all(c in present for c in b)
    ]
    if not deterministic:  # no email, phone or birth date: the strictest combination the file has
        fallback = (
            ["first_c", "last_n", "street_n"],
            ["first_c", "last_n", "postal_n"],
            ["last_n", "street_n", "postal_n"],
            ["first_c", "last_n", "city_n"],
            *blocks,
        )
        deterministic = [next(b for b in fallback if all(c in present for c in b))]
    settings = SettingsCreator(
        link_type="dedupe_only",
        unique_id_column_name="profile_id",
        comparisons=comparisons,
        blocking_rules_to_generate_predictions=[block_on(*b) for b in blocks],
        retain_intermediate_calculation_columns=False,
        retain_matching_columns=True,  # Splink keeps the comparison levels (gamma_) only with them
    )
    return settings, em, deterministic


def train(
    con,
    present: list[str],
    n_profiles: int,
    *,
    threshold: float,
    em_max_pairs: int,
    u_max_pairs: int,
    seed: int,
    backend: str = "duckdb",
    max_pairs_per_profile: float = 20.0,
):
    """Learn the Fellegi-Sunter model from the profiles themselves (the table `profiles` of DuckDB
    connection `con`: `n_profiles` of them, carrying the attributes `present`); return
    (linker, MatchModel).

    `backend` is where Splink runs its SQL: "duckdb" (`con` itself, on the compact profile table;
    faster on one machine, see `p13n bench identity`) or "spark" (the Spark session's executors).
    """
    from splink import Linker, block_on

    blocks, pairs, changed = budget_rules(con, present, int(max_pairs_per_profile * max(n_profiles, 1)))
    if not blocks and changed:
        raise ValueError(
            f"identity: every blocking rule is over the budget of {max_pairs_per_profile:g} pairs a profile "
            f"({'; '.join(changed)}): raise identity.max_pairs_per_profile"
        )
    settings, em_blocks, deterministic = _splink_settings(present, blocks)
    # EM learns nothing from a block of a few pairs (and Splink's SQL breaks on one pair: a 4-record file)
    learnable = [b for b in em_blocks if rule_pairs(con, b) >= MIN_EM_PAIRS]
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW splink_input AS SELECT profile_id, {', '.join(present)} FROM profiles"
    )
    splink_t0 = time.perf_counter()
    if backend == "spark":
        from splink.backends.spark import SparkAPI

        from p13n.session import spark

        session = spark()
        db_api = SparkAPI(spark_session=session, break_lineage_method="persist")
        table = db_api.register(session.createDataFrame(con.sql("FROM splink_input").fetch_arrow_table()))
    elif backend == "duckdb":
        from splink import DuckDBAPI

        db_api = DuckDBAPI(connection=con)
        table = db_api.register("splink_input")
    else:
        raise ValueError(f"identity backend {backend!r}: expected 'duckdb' or 'spark'")
    linker = Linker(table, settings, log_level=logging.WARNING)
    # EM's sampling probe warns whenever a small block finds no pair in its 1% probe: not news to a user
    logging.getLogger("splink.internals.em_sampling").setLevel(logging.ERROR)
    try:
        linker.training.estimate_probability_two_random_records_match(
            [block_on(*r) for r in deterministic], recall=0.8
        )
        # Identical records are one profile, so a rule on every attribute the file has finds no pair
        # (names and a birth date only): then about one duplicate per profile is the prior.
        if not linker._settings_obj._probability_two_random_records_match > 1e-9:
            linker._settings_obj._probability_two_random_records_match = 1.0 / max(n_profiles, 2)
        linker.training.estimate_u_using_random_sampling(
            max_pairs=u_sample_pairs(u_max_pairs, n_profiles),
            seed=seed,
            min_count_per_level=100,  # in chunks, stopping once every level is seen 100 times
            num_chunks=10,
        )
        from splink.internals.exceptions import EMTrainingException

        trained, skipped = [], ["+".join(b) for b in em_blocks if b not in learnable]
        for block in learnable:
            try:
                linker.training.estimate_parameters_using_expectation_maximisation(
                    block_on(*block), max_pairs=em_max_pairs
                )
                trained.append("+".join(block))
            except EMTrainingException:
                # no pairs agree on this block (a small file, say): the other blocks estimate the m values
                continue
            except ValueError as exc:
                # EM drove an m probability below 1e-300, which Splink refuses (seen at 1M customers: a
                # level that one block's pairs never reach). The session's estimates are dropped, not
                # the model's; the other blocks estimate the m values.
                if "probability value" not in str(exc) and "math domain" not in str(exc):
                    raise  # (math domain: EM drove the block's match share to 0, seen on FEBRL names + dates)
                skipped.append("+".join(block))
                log.warning("identity: EM on block %s skipped: %s", "+".join(block), str(exc).split(". ")[0])
        if not trained:
            raise NotEnoughToMatch(
                f"too little to learn from: fewer than {MIN_EM_PAIRS} pairs of different records agree on "
                + " or ".join("+".join(b) for b in em_blocks)
            )
    except BaseException:  # a failed (or retried) run leaves no DuckDB spill files behind
        release(linker)
        raise
    model = MatchModel(linker.misc.save_model_to_json(), threshold, compared_attributes(present))
    model.block_pairs = pairs
    model.blocking_changes = changed
    model.metrics["splink_train_s"] = time.perf_counter() - splink_t0
    model.metrics["em_blocks"] = len(trained)
    model.metrics["em_blocks_skipped"] = len(skipped)
    return linker, model


def u_sample_pairs(u_max_pairs: int, n_profiles: int) -> int:
    """Random pairs to estimate u from: 100 a profile, at least two million, at most `u_max_pairs`
    (sampled in chunks until every comparison level is seen 100 times: a 5,000-record file needs a
    fraction of them, where the full 5M took 12 of its 15 seconds)."""
    return int(min(u_max_pairs, max(2_000_000, 100 * n_profiles)))


def duckdb_connection(memory_gb: float | None):
    """An in-memory DuckDB that spills past `memory_gb` GiB (default: 35% of this machine's memory)
    into a temp directory of its own (`release` removes it)."""
    import tempfile

    import duckdb
    import psutil

    limit = memory_gb or psutil.virtual_memory().total * 0.35 / 2**30
    con = duckdb.connect(":memory:")
    con.execute(f"SET memory_limit = '{limit:.1f}GiB'")
    con.execute(f"SET temp_directory = '{tempfile.mkdtemp(prefix='p13n-duckdb-')}'")
    return con


def release(linker) -> None:
    """Drop the tables and views Splink made in its DuckDB (their memory and spill space go with them);
    a no-op on Spark and on a closed connection."""
    con = getattr(linker._db_api, "_con", None)
    if con is None or not hasattr(con, "close"):
        return
    try:
        made = con.execute(
            "SELECT 'TABLE', table_name FROM duckdb_tables() WHERE starts_with(table_name, '__splink__') "
            "UNION ALL SELECT 'VIEW', view_name FROM duckdb_views() "
            "WHERE NOT internal AND starts_with(view_name, '__splink__')"
        ).fetchall()
    except Exception:  # already closed
        return
    for kind, name in made:
        con.execute(f'DROP {kind} IF EXISTS "{name}"')


def close(con) -> None:
    """Close a DuckDB of `duckdb_connection` and remove its spill directory (a no-op when closed)."""
    import shutil

    if con is None or not hasattr(con, "close"):
        return
    try:
        con.execute("SELECT 1")
    except Exception:  # already closed
        return
    spill = con.execute("SELECT current_setting('temp_directory')").fetchone()[0]
    con.close()
    if spill and "p13n-duckdb-" in spill:
        shutil.rmtree(spill, ignore_errors=True)


def probabilistic_edges(linker, threshold: float, gamma_columns: list[str]):
    """Scored pairs at or above `threshold` as pandas (a few per profile): profile_l, profile_r,
    match_probability, match_weight and the comparison levels `gamma_columns` (int8).

    Only these columns leave the backend: Splink's predictions also hold both sides' attributes,
    which at 1M customers is gigabytes the clustering never reads.
    """
    scored = linker.inference.predict(threshold_match_probability=threshold)
    gammas = "".join(f", CAST({c} AS TINYINT) AS {c}" for c in gamma_columns)
    out = linker.misc.query_sql(
        "SELECT profile_id_l AS profile_l, profile_id_r AS profile_r, match_probability, match_weight"
        f"{gammas} FROM {scored.physical_name}",
        output_type="pandas",
    )
    scored.drop_table_from_database_and_remove_from_cache()
    return out
