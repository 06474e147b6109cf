"""Great Expectations suites for the silver tables: kept in `expectations/`, run before every promotion.

Each silver table has a suite `expectations/silver.<source>.json`, first generated from the catalog
(`p13n expectations generate`) and then owned by people: hand-added expectations are kept when it is
regenerated. Every expectation carries `meta.severity`: a failing **critical** one blocks the
batch's promotion (the task fails, visibly); a failing **warning** is recorded with the run.
Validation runs through a GX file context under `<data_dir>/gx`, whose checkpoints render Data Docs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from p13n.config import REPO_ROOT, Settings
from p13n.sources.catalog import Catalog, Source
from p13n.spark import to_pandas

EXPECTATIONS_DIR = REPO_ROOT / "expectations"
GENERATED = "catalog"  # meta.origin of expectations derived from the catalog


@dataclass
class Outcome:
    passed: int = 0
    failed: int = 0
    critical_failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def catalog_expectations(source: Source) -> list[dict]:
    """The expectations the catalog implies for a silver table."""
    out: list[dict] = []

    def add(kind: str, severity: str, **kwargs) -> None:
        out.append({"type": kind, "kwargs": kwargs, "meta": {"severity": severity, "origin": GENERATED}})

    keys = list(source.primary_key) + (["event_date"] if source.kind == "event" else [])
    if len(keys) == 1:
        add("expect_column_values_to_be_unique", "critical", column=keys[0])
    else:
        add("expect_compound_columns_to_be_unique", "critical", column_list=keys)
    for col in source.columns:
        if col.pii:
            continue  # silver holds <col>_hmac instead
        if col.required or col.name in source.primary_key:
            add("expect_column_values_to_not_be_null", "critical", column=col.name)
        if col.type == "enum":
            add("expect_column_values_to_be_in_set", "warning", column=col.name, value_set=list(col.values))
        if col.min is not None or col.max is not None:
            add(
                "expect_column_values_to_be_between",
                "warning",
                column=col.name,
                min_value=col.min,
                max_value=col.max,
            )
    return out


def generate_suites(catalog: Catalog, directory: Path = EXPECTATIONS_DIR) -> list[Path]:
    """Write each source's suite, keeping the expectations people added by hand."""
    written = []
    directory.mkdir(parents=True, exist_ok=True)
    for source in catalog:
        path = directory / f"{source.silver_table}.json"
        manual = []
        if path.exists():
            manual = [
                e
                for e in json.loads(path.read_text())["expectations"]
                if e.get("meta", {}).get("origin") != GENERATED
            ]
        suite = {"name": source.silver_table, "expectations": catalog_expectations(source) + manual}
        path.write_text(json.dumps(suite, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


def load_suite(source: Source | str, directory: Path = EXPECTATIONS_DIR) -> dict:
    """The suite of a source's silver table, or of any table by name (expectations/<table>.json)."""
    table = source if isinstance(source, str) else source.silver_table
    path = directory / f"{table}.json"
    if not path.exists():
        hint = "write it by hand" if isinstance(source, str) else "run `p13n expectations generate`"
        raise FileNotFoundError(f"{table}: no expectation suite at {path}; {hint}")
    return json.loads(path.read_text())


class Validator:
    """Runs a silver table's suite on a batch, through a GX checkpoint that also updates Data Docs."""

    def __init__(self, settings: Settings, suites_dir: Path = EXPECTATIONS_DIR):
        import great_expectations as gx

        from p13n.spark import use_remote

        use_remote(settings)  # GX's Spark datasource makes a session of its own: the same service's
        self.suites_dir = suites_dir
        logging.getLogger("great_expectations").setLevel(logging.WARNING)
        self.gx = gx
        self.context = gx.get_context(mode="file", project_root_dir=str(settings.data_dir))
        self.context.variables.progress_bars = {"globally": False}
        self.pandas_max_rows = settings.quality.pandas_max_rows
        self.last_engine: str | None = None  # the engine of the latest validation
        self.datasources: dict[str, object] = {}  # made on first use: the Spark one costs about 7 s

    def datasource(self, engine: str):
        """GX's data source for `engine` ("spark" or "pandas"), made the first time it is needed: a
        process that validates only pandas frames (most batches, every task's small outputs) never
        pays for GX's Spark data source."""
        if engine not in self.datasources:
            sources = self.context.data_sources
            self.datasources[engine] = (
                sources.add_or_update_spark(name="p13n_silver")
                if engine == "spark"
                else sources.add_or_update_pandas(name="p13n_silver_pandas")
            )
        return self.datasources[engine]

    @property
    def docs_index(self) -> Path:
        return Path(self.context.root_directory) / "uncommitted" / "data_docs" / "local_site" / "index.html"

    def build_docs(self) -> Path:
        """Render Data Docs from every stored validation result; returns the index page."""
        self.context.build_data_docs()
        return self.docs_index

    def engine_for(self, df, rows: int | None = None) -> tuple[object, str]:
        """(the frame to validate, "pandas" or "spark"): a Spark DataFrame of at most
        `quality.pandas_max_rows` rows (`rows`, when the caller has counted them) is collected to
        pandas; GX's Spark engine pays Spark jobs per metric, whatever the batch's size."""
        if not hasattr(df, "sparkSession"):
            return df, "pandas"
        if self.pandas_max_rows <= 0:
            return df, "spark"
        n = rows if rows is not None else df.limit(self.pandas_max_rows + 1).count()
        return (to_pandas(df), "pandas") if n <= self.pandas_max_rows else (df, "spark")

    def __call__(self, source: Source | str, df, rows: int | None = None) -> Outcome:
        """Validate `df` (Spark or pandas) against the suite of `source` (a catalog source, or a table
        name such as gold.customer_profiles); expectations on columns `df` lacks are skipped.
        `rows`: the frame's row count when the caller knows it (it picks the engine)."""
        from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

        gx = self.gx
        df, engine = self.engine_for(df, rows)
        self.last_engine = engine
        spec = load_suite(source, self.suites_dir)
        suite = gx.ExpectationSuite(name=spec["name"])
        for e in spec["expectations"]:
            if all(c in df.columns for c in _columns_of(e)):
                suite.add_expectation_configuration(
                    ExpectationConfiguration(type=e["type"], kwargs=e["kwargs"], meta=e.get("meta", {}))
                )
        suite = self.context.suites.add_or_update(suite)
        asset_name = source if isinstance(source, str) else source.silver_table
        datasource = self.datasource(engine)
        run_name = asset_name if engine == "spark" else f"{asset_name} (pandas)"
        try:
            asset = datasource.get_asset(asset_name)
        except LookupError:
            asset = datasource.add_dataframe_asset(name=asset_name)
        try:
            batch = asset.get_batch_definition("batch")
        except (KeyError, LookupError):
            batch = asset.add_batch_definition_whole_dataframe("batch")
        definition = self.context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=run_name, data=batch, suite=suite)
        )
        checkpoint = self.context.checkpoints.add_or_update(
            gx.Checkpoint(
                name=run_name,
                validation_definitions=[definition],
                actions=[],
            )
        )
        result = checkpoint.run(batch_parameters={"dataframe": df})
        outcome = Outcome()
        for run in result.run_results.values():
            for r in run.results:
                cfg = r.expectation_config
                if r.success:
                    outcome.passed += 1
                    continue
                outcome.failed += 1
                detail = (
                    f"{cfg.type}({_describe(cfg.kwargs)}): {r.result.get('unexpected_count', '?')} unexpected"
                )
                if r.exception_info and r.exception_info.get("raised_exception"):
                    detail = (
                        f"{cfg.type}({_describe(cfg.kwargs)}) could not run: "
                        f"{r.exception_info.get('exception_message')}"
                    )
                if (cfg.meta or {}).get("severity") == "critical":
                    outcome.critical_failures.append(detail)
                else:
                    outcome.warnings.append(detail)
        return outcome


def _columns_of(expectation: dict) -> list[str]:
    kw = expectation["kwargs"]
    return [kw["column"]] if "column" in kw else list(kw.get("column_list", []))


def _describe(kwargs: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in kwargs.items() if k in ("column", "column_list"))


@lru_cache(maxsize=1)
def _validator(data_dir: str, env: str) -> Validator:
    from p13n.config import get_settings

    return Validator(get_settings())


def validator(settings: Settings) -> Validator:
    """The process's validator (GX contexts are slow to make: one per process)."""
    return _validator(str(settings.data_dir), settings.env)
