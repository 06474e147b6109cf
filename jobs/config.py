"""One typed configuration: conf/base.yaml, overlaid by conf/<P13N_ENV>.yaml, then by environment variables.

`P13N_ENV` picks the overlay (local, test, prod). `P13N__SECTION__KEY=value` overrides one key
(`P13N__SPARK__MASTER=spark://host:7077`); `P13N_DATA_DIR` and `P13N_CONF_DIR` move the data and the
configuration. Validation errors name the key, the file or variable that set it, and what was expected.
Secrets are refused in files: keys that look like credentials may only come from the environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from p13n.lake.tables import OPS_PRIVACY_REQUESTS


def _home() -> Path:
    """Where conf/, dags/, sql/ and expectations/ are: $P13N_HOME, else the checkout this code runs
    from, else the copies an installed wheel carries (`p13n/_home/`)."""
    if os.environ.get("P13N_HOME"):
        return Path(os.environ["P13N_HOME"]).expanduser().resolve()
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "conf" / "base.yaml").is_file():
        return checkout
    return Path(__file__).resolve().parent / "_home"


REPO_ROOT = HOME = _home()
# A relative data_dir is under the home of a checkout (or $P13N_HOME); an installed package has no
# home of its own to write in, so it is under the working directory.
DATA_BASE = HOME if os.environ.get("P13N_HOME") or HOME.name != "_home" else Path.cwd()
ENV_PREFIX = "P13N__"
NOT_OVERLAYS = {"base", "sources", "journeys"}  # conf/ files that are not environment overlays
_SECRET_KEY = re.compile(r"(password|passwd|secret|token|api_key|apikey|private_key|access_key)", re.I)
# Values that are credentials whatever their key is called: a password inside a URL, a private key,
# and the shapes of common cloud and platform keys.
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/\s:@]*:)(?P<password>[^@\s/]+)(?=@)", re.I)
_SECRET_VALUE = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----|\bAKIA[0-9A-Z]{16}\b|\b(sk|rk)_(live|test)_[0-9A-Za-z]{10,}|"
    r"\bpk_[0-9a-f]{20,}\b|\bxox[abpr]-[0-9A-Za-z-]{10,}|\bgh[pousr]_[0-9A-Za-z]{20,}"
)


def mask(value: str) -> str:
    """A string safe to print: URL passwords and credential-shaped values replaced by `***`."""
    return _SECRET_VALUE.sub("***", _URL_PASSWORD.sub(r"\g<head>***", value))


def masked(data, key: str = ""):
    """A settings dump (nested dicts, lists, strings) with every credential masked: values under
    secret-looking keys, URL passwords, credential-shaped strings."""
    if isinstance(data, Mapping):
        return {k: masked(v, str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [masked(v, key) for v in data]
    if isinstance(data, str):
        return "***" if data and _SECRET_KEY.search(key) and not key.endswith("_env") else mask(data)
    return data


class ConfigError(ValueError):
    """The configuration cannot be loaded; the message says which key, where it was set and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LakeSettings(_Section):
    root: str = ""
    storage_options: dict[str, str] = Field(default_factory=dict)
    max_rows_per_file: int = Field(2_000_000, gt=0)
    client_write_max_rows: int = Field(200_000, ge=0)
    vacuum_retention_hours: int = Field(168, ge=0)
    max_commit_retries: int = Field(3, ge=0)
    # How Spark's executors read and write the data files: "spark" (its own Parquet reader and
    # writer, which need Hadoop's connector for object storage), "arrow" (pyarrow inside the executors'
    # Python workers, for any filesystem pyarrow reaches), "auto" (spark on a local or HDFS root, arrow
    # on s3:// and other object stores).
    spark_io: Literal["auto", "spark", "arrow"] = "auto"


class SparkSettings(_Section):
    master: str = "local[*]"
    # A Spark Connect server (sc://host:port) the jobs talk to instead of starting a driver of their
    # own: an Airflow task is then a thin client (no JVM per task). Empty: an in-process driver.
    remote: str = ""
    # Driver memory of the Spark Connect server p13n starts (one driver serves every task's session).
    server_memory: str = "8g"
    app_name: str = "p13n"
    driver_memory: str = "4g"
    shuffle_partitions: int = Field(8, gt=0)
    ui_enabled: bool = True
    conf: dict[str, str] = Field(default_factory=dict)

    @field_validator("driver_memory", "server_memory")
    @classmethod
    def _memory_size(cls, v: str) -> str:
        if not re.fullmatch(r"\d+[kmgt]?", v.lower()):
            raise ValueError(f"expected a JVM memory size such as 4g or 512m, got {v!r}")
        return v

    @field_validator("conf", mode="before")
    @classmethod
    def _stringify(cls, v: Any) -> Any:
        # YAML turns `spark.executor.cores: 2` into an int; Spark wants strings.
        return (
            {k: str(x).lower() if isinstance(x, bool) else str(x) for k, x in v.items()}
            if isinstance(v, dict)
            else v
        )


class MlflowSettings(_Section):
    tracking_uri: str = ""
    experiment_prefix: str = "p13n"


class AirflowSettings(_Section):
    home: str = ""
    owner: str = "data-platform"
    retries: int = Field(2, ge=0)
    retry_delay_minutes: int = Field(5, ge=0)
    max_retry_delay_minutes: int = Field(60, ge=0)
    # Where failure and missed-deadline alerts go (`p13n.alerts`): "log" and/or "webhook".
    alerts: list[Literal["log", "webhook"]] = Field(default_factory=lambda: ["log"])
    alert_webhook_env: str = "P13N_ALERT_WEBHOOK_URL"  # the variable holding the webhook URL (a secret)
    # DAG id -> minutes a run may take after it is queued before a deadline alert goes out.
    deadlines_minutes: dict[str, int] = Field(default_factory=dict)
    deadline_alerts: bool = True  # off: DAGs are parsed without their deadlines (`airflow dags test`)
    # `p13n run` and `p13n backfill` run their DAGs in one long-lived process (`runner.DagSession`); it is
    # replaced after a DAG that leaves it (with its Spark driver) holding more memory than this.
    dag_process_max_rss_gb: float = Field(12.0, gt=0)
    # The components `make airflow` and `p13n run` start (`p13n.scheduler`): each task in its own process.
    executor: str = "LocalExecutor"
    parallelism: int = Field(0, ge=0)  # tasks of a DAG at once; 0: one per core
    # ingest_sources' tasks at once; 0: two per core. A source's task is a thin Spark Connect client
    # waiting on the server's round trips most of its time (the server's own threads are the cores'
    # limit); the executor's slots are the larger of the two.
    source_parallelism: int = Field(0, ge=0)
    api_port: int = Field(8080, gt=0, lt=65536)
    # Modules the scheduler imports before it forks the LocalExecutor's workers, so each task (a fork of
    # a worker) starts with them (conf/airflow/airflow_local_settings.py).
    preload_modules: list[str] = Field(default_factory=list)


class SourcesSettings(_Section):
    landing_dir: str = ""
    # Kafka bootstrap servers; empty means the embedded broker that p13n starts itself.
    kafka_bootstrap: str = ""
    # Local stand-in for the Snowflake warehouse (fakesnow's database folder); prod uses a connection.
    snowflake_db_path: str = ""
    snowflake_connection_id: str = "snowflake_default"
    # Reject a batch (critical expectation) when more than this share of its rows is quarantined.
    max_quarantine_share: float = Field(0.2, ge=0, le=1)
    # ...for batches of at least this many rows (one bad row of three says little about a source).
    quarantine_share_min_rows: int = Field(50, ge=0)
    # With a Spark Connect server (which starts a Python worker pool per client session), a batch of
    # at most this many bytes is parsed by the ingesting task's own process, not by Spark's executors.
    # 0: always the executors (as with a classic session, whose workers are reused).
    parse_here_max_bytes: int = Field(64 << 20, ge=0)
    # ...and a Kafka batch of at most this many messages is consumed by that process.
    consume_here_max_messages: int = Field(200_000, ge=0)


class IdentitySource(_Section):
    record_id: str  # the column naming the record
    updated: str  # the column dating it ("most recent" survivorship)
    keys: dict[str, str] = Field(default_factory=dict)  # strong identifier type -> column


class FieldRule(_Section):
    rule: Literal["source_priority", "most_recent", "most_frequent"] = "source_priority"
    sources: list[str] = Field(default_factory=list)  # priority order; empty: identity.source_priority


class IdentityGate(_Section):
    """What stops a night's identity run before it writes anything (yesterday's ids then stand)."""

    # Merging more than this share of the previous run's customers (and more than `min_merges` of
    # them) in one night: a bad source or a model gone wrong chaining people together.
    max_merge_share: float = Field(0.02, gt=0, le=1)
    min_merges: int = Field(50, ge=0)
    # Where the ground truth is known (generated data): F1 at least, over-merged customers at most
    # (a share of the customers). 0 and 1 leave the run ungated on them.
    min_f1: float = Field(0.0, ge=0, le=1)
    max_overmerged_share: float = Field(1.0, ge=0, le=1)


class IdentitySettings(_Section):
    sources: dict[str, IdentitySource] = Field(default_factory=dict)
    # Sources of which one customer holds at most one record: two of them never merge.
    one_per_customer: list[str] = Field(default_factory=list)
    # Source priority for survivorship, most trusted first.
    source_priority: list[str] = Field(default_factory=list)
    survivorship: dict[str, FieldRule] = Field(default_factory=dict)
    match_probability: float = Field(0.95, gt=0, lt=1)
    # Where Splink scores pairs: "duckdb" (in the driver, on the compact profile table) or "spark".
    backend: Literal["duckdb", "spark"] = "duckdb"
    # DuckDB's memory for Splink; past it, it spills to disk. Empty: 35% of the machine's memory
    # (DuckDB's own default, 80%, leaves nothing for the Spark driver in the same process tree).
    duckdb_memory_gb: float | None = Field(None, gt=0)
    max_cluster_records: int = Field(5000, gt=1)
    # Clusters with different birth dates: "typo" keeps them apart unless the dates differ in one part
    # only (year, month or day) or by a day-month swap, or the linking pair was scored on its own two
    # dates (the model weighed them); "strict" whenever no date is shared; "off" leaves birth dates
    # to the model alone.
    birth_date_guard: Literal["typo", "strict", "off"] = "typo"
    # Pairs the model scores at most; EM trains on a sample of this size.
    em_max_pairs: int = Field(2_000_000, gt=0)
    u_max_pairs: int = Field(5_000_000, gt=0)
    # A blocking rule making more pairs than this many a profile is tightened with the city (else left
    # out): names alone make 53 pairs a profile at 1M customers, 5 at 100k.
    max_pairs_per_profile: float = Field(20.0, gt=0)
    seed: int = 13
    gate: IdentityGate = Field(default_factory=IdentityGate)


class GateSettings(_Section):
    """A gated metric: see `p13n.models.registry.GateRule`."""

    higher_is_better: bool = True
    tolerance: float = Field(0.0, ge=0)
    floor: float | None = None


class CustomerSettings(_Section):
    # Churn: no purchase within `churn_horizon_days` after the cutoff. The model trains on features as
    # of two horizons before the run date and is evaluated on those of one horizon before it.
    churn_horizon_days: int = Field(90, gt=0)
    churn_bands: dict[str, float] = Field(default_factory=lambda: {"medium": 0.4, "high": 0.7})
    # CLV: BG/NBD + Gamma-Gamma fitted through `clv_holdout_days` before the run date, evaluated on them.
    clv_holdout_days: int = Field(90, gt=0)
    clv_months: int = Field(12, gt=0)
    clv_monthly_discount: float = Field(0.01, ge=0)
    cluster_k: tuple[int, int] = (3, 8)
    new_customer_days: int = Field(30, gt=0)
    send_time_days: int = Field(180, gt=0)
    send_time_min_opens: int = Field(3, gt=0)
    # Where customer features are computed: duckdb (in the task's process, from the attributed activity
    # pulled as Arrow once), spark (on the Spark service: past one machine), auto: duckdb up to
    # `features_duckdb_max_customers` customer profiles, spark past them.
    features_engine: Literal["auto", "duckdb", "spark"] = "auto"
    features_duckdb_max_customers: int = Field(1_200_000, gt=0)
    # Champion/challenger gates per model: metric → rule.
    gates: dict[str, dict[str, GateSettings]] = Field(default_factory=dict)
    seed: int = 13


class RecommendSettings(_Section):
    """Recommendations (`p13n.recommend`): see the `recommend:` section of conf/base.yaml."""

    engine: Literal["implicit", "spark"] = "implicit"
    # Interaction weight per kind of event (returns count against the item) and the half-life of decay.
    weights: dict[str, float] = Field(
        default_factory=lambda: {
            "purchase": 5.0,
            "add_to_cart": 3.0,
            "wishlist": 2.0,
            "product_view": 1.0,
            "return": -5.0,
        }
    )
    half_life_days: float = Field(90.0, gt=0)
    history_days: int = Field(365, gt=0)
    # ALS grid searched on a validation split of the training data (every combination is fitted).
    als_grid: dict[str, list[float]] = Field(
        default_factory=lambda: {"factors": [32, 64], "regularization": [0.01, 0.1], "alpha": [1.0, 10.0]}
    )
    als_iterations: int = Field(15, gt=0)
    # The grid search fits and scores on a seeded sample of at most this many customers (null: all).
    tune_max_users: int | None = Field(20_000, gt=0)
    # The evaluation (and gate) scores a seeded sample of at most this many test customers (null: all).
    eval_max_users: int | None = Field(100_000, gt=0)
    # The customers' lists are drawn this many customers at a time (bounds the driver's memory).
    list_batch_customers: int = Field(200_000, gt=0)
    # Blend of the personalized list: reciprocal-rank fusion weight per component.
    blend: dict[str, float] = Field(
        default_factory=lambda: {
            "next_basket": 20.0,
            "als": 1.0,
            "item_similarity": 1.0,
            "buy_again": 3.0,
            "bought_together": 1.0,
            "popular_in_segment": 0.3,
            "trending": 0.2,
        }
    )
    # A repeating item bought less than this share of its cadence ago is not offered again yet (0: off).
    due_share: float = Field(0.0, ge=0, le=1)
    list_sizes: dict[str, int] = Field(
        default_factory=lambda: {
            "personalized": 20,
            "buy_again": 10,
            "recently_viewed": 10,
            "popular_in_segment": 10,
            "similar_items": 10,
            "bought_together": 10,
            "trending": 20,
            "popular": 50,
        }
    )
    max_per_brand: int = Field(4, gt=0)
    max_per_category: int = Field(8, gt=0)
    # Stock: an item is recommendable when this location's latest snapshot has it on hand
    # (null: any location); items the inventory feed does not track are assumed available.
    stock_location: str | None = "DC-WEB"
    recently_viewed_days: int = Field(30, gt=0)
    trending_days: int = Field(7, gt=0)
    trending_baseline_days: int = Field(28, gt=0)
    popular_days: int = Field(90, gt=0)
    bought_together_min_support: int = Field(5, gt=0)
    k: int = Field(10, gt=0)  # the cut-off of the offline metrics
    gates: dict[str, GateSettings] = Field(default_factory=dict)
    seed: int = 13


class ExperimentArm(_Section):
    weight: float = Field(gt=0)  # share of the experiment's traffic (after the holdout), normalised
    list_type: str  # the list the arm serves in place of the requested one (popular = the overall list)


class ExperimentSettings(_Section):
    """An A/B test on a list type: customers are split into arms by hashing (customer id, salt)."""

    enabled: bool = True
    applies_to: str = "personalized"  # the requested list type the experiment intercepts
    salt: str = ""  # empty: the experiment's name; change it to reshuffle everyone
    holdout: float = Field(0.0, ge=0, lt=1)  # share kept out of the experiment (served as requested)
    arms: dict[str, ExperimentArm] = Field(default_factory=dict)


class ApiClientSettings(_Section):
    """One client of the read API: its key comes from the environment variable `key_env`."""

    key_env: str = Field(pattern=r"^[A-Z][A-Z0-9_]*$")
    # shopper: lists a storefront shows (recommendations, item lists, trending/popular);
    # internal: what names customers (profiles, segment members, source-id lookup).
    scopes: list[Literal["shopper", "internal"]] = Field(min_length=1)
    rate_per_second: float = Field(200.0, gt=0)  # per worker: a token bucket
    burst: int = Field(400, gt=0)


class ApiSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, gt=0, lt=65536)
    workers: int = Field(2, gt=0)
    default_k: int = Field(10, gt=0)
    max_k: int = Field(50, gt=0)
    page_size: int = Field(100, gt=0)
    max_page_size: int = Field(1000, gt=0)
    # How long a worker trusts the live-version pointer it read (a rollback is seen within this).
    pointer_cache_seconds: float = Field(1.0, ge=0)
    # A Redis call slower than this is abandoned for the fallback: a shopper never waits on it.
    redis_timeout_ms: int = Field(100, gt=0)
    # After a failed Redis call the API serves fallbacks for this long before trying Redis again.
    redis_retry_seconds: float = Field(2.0, ge=0)
    # ...after this many Redis calls in a row failed (one slow call is that request's fallback only).
    breaker_failures: int = Field(3, ge=1)
    log_exposures: bool = True
    # The customers of `activation.global_holdout` get the popular list whatever they ask for (the
    # answer's experiment says `global_holdout`): no personalization at all, so gold.experiment_results
    # measures the whole programme against them.
    global_holdout: bool = True
    max_page: int = Field(100_000, gt=0)
    # Every /v1 endpoint needs a client's key (`X-API-Key` or `Authorization: Bearer`); off only for a
    # closed network. Locally, a client whose variable is unset gets a key made once in <data_dir>/secrets.
    auth: bool = True
    clients: dict[str, ApiClientSettings] = Field(
        default_factory=lambda: {
            "storefront": ApiClientSettings(key_env="P13N_API_KEY_STOREFRONT", scopes=["shopper"]),
            "internal": ApiClientSettings(
                key_env="P13N_API_KEY_INTERNAL", scopes=["shopper", "internal"], rate_per_second=20, burst=40
            ),
        }
    )


class ServingSettings(_Section):
    """Serving (`p13n.serving`): see the `serving:` section of conf/base.yaml."""

    # Empty: the embedded Redis p13n starts itself (data kept under <data_dir>/redis).
    redis_url: str = ""
    namespace: str = Field("p13n", pattern=r"^[A-Za-z0-9_.-]+$")
    keep_versions: int = Field(3, ge=2)
    lock_ttl_seconds: int = Field(120, gt=0)
    # duckdb: encode in the driver (DuckDB) and write with `writers` connections; spark: Spark tasks
    # encode and write a hash part of the customers and items each (`spark_parts`, 0: the default
    # parallelism);
    # auto: duckdb up to `duckdb_max_customers` customers, spark past them.
    engine: Literal["auto", "duckdb", "spark"] = "auto"
    duckdb_max_customers: int = Field(1_200_000, gt=0)
    spark_parts: int = Field(0, ge=0)
    batch_commands: int = Field(5000, gt=0)
    writers: int = Field(2, gt=0)
    # Only these identity key types are published as lookups: source-system ids, never contact data.
    lookup_key_types: list[str] = Field(
        default_factory=lambda: ["shopify_customer_id", "crm_contact_id", "loyalty_id"]
    )
    # CLV tiers by percentile of the run's 12-month CLV: tier -> lowest percentile in it.
    clv_tiers: dict[str, float] = Field(default_factory=lambda: {"top": 0.9, "high": 0.6, "medium": 0.3})
    # Models whose gate must have a champion for the date before a publish (unless forced).
    gated_models: list[str] = Field(default_factory=lambda: ["recommend", "churn", "clv", "segments"])
    api: ApiSettings = Field(default_factory=ApiSettings)
    experiments: dict[str, ExperimentSettings] = Field(default_factory=dict)

    @field_validator("lookup_key_types")
    @classmethod
    def _no_contact_data(cls, v: list[str]) -> list[str]:
        bad = [k for k in v if re.search(r"email|phone|address|name", k, re.I)]
        if bad:
            raise ValueError(f"contact data never goes to the serving store: {bad}")
        return v


class TriggerSettings(_Section):
    """Behavioural triggers computed from the stream (`p13n.streaming.triggers`)."""

    abandoned_cart_minutes: int = Field(60, gt=0)  # a cart with no purchase for this long
    browse_min_views: int = Field(3, gt=0)  # product views in a session with no cart add...
    browse_idle_minutes: int = Field(30, gt=0)  # ...and no event for this long
    post_purchase_days: int = Field(3, gt=0)  # a follow-up this long after a purchase
    winback_days: int = Field(120, gt=0)  # lapsed customers with no activity for this long
    lookback_days: int = Field(7, gt=0)  # events read per evaluation
    # Channel per trigger; the customer must have consented to it.
    channels: dict[str, str] = Field(
        default_factory=lambda: {
            "abandoned_cart": "email",
            "browse_abandonment": "email",
            "post_purchase": "email",
            "win_back": "email",
            "checkout_abandoned": "email",
            "birthday": "email",
            "back_in_stock": "push",
            "price_drop": "email",
            "replenishment": "email",
            "loyalty_anniversary": "email",
            "points_expiring": "email",
            "tier_upgrade": "email",
            "tier_downgrade": "email",
        }
    )
    # Frequency cap: triggered messages per customer (all triggers together).
    max_per_day: int = Field(1, ge=0)
    max_per_week: int = Field(3, ge=0)
    # The nightly triggers (`p13n.journeys.triggers`): a birthday this many days ahead; items viewed,
    # carted or wishlisted in this many days (back in stock, price drop); items bought on this many
    # days or more (replenishment).
    birthday_days_ahead: int = Field(7, ge=0)
    interest_days: int = Field(30, gt=0)
    min_repeat_purchases: int = Field(3, ge=2)
    # Loyalty (`loyalty_members`, `loyalty_points_ledger`): the enrolment anniversary this many days
    # ahead; the program's points expire after `points_inactive_days` without activity (an order in
    # any sales system, a ledger entry, the enrolment), announced `points_warning_days` before.
    anniversary_days_ahead: int = Field(0, ge=0)
    points_inactive_days: int = Field(365, gt=0)
    points_warning_days: int = Field(30, gt=0)


class StreamSettings(_Section):
    """Streaming (`p13n.streaming`): see the `stream:` section of conf/base.yaml."""

    max_records: int = Field(50_000, gt=0)
    max_seconds: float = Field(1.0, gt=0)
    # The field of each event source that holds a customer's source-system id, and the id's key type.
    customer_fields: dict[str, str] = Field(
        default_factory=lambda: {"web_clickstream": "customer_id", "app_events": "app_user_id"}
    )
    customer_key_type: str = "shopify_customer_id"
    recently_viewed: int = Field(20, gt=0)
    session_gap_minutes: int = Field(30, gt=0)
    profile_ttl_days: int = Field(30, gt=0)
    triggers: TriggerSettings = Field(default_factory=TriggerSettings)


class AudienceSettings(_Section):
    """One audience marketers declare (`activation.audiences.<name>`): who is in it and where it goes.

    Every filter given must hold (lists: any of the values). `where` is an extra SQL condition on the
    audience columns (see `p13n.activation.audiences.COLUMNS`)."""

    description: str = ""
    channel: Literal["email", "sms"] = "email"
    segment: list[str] = Field(default_factory=list)  # personas (k-means segments)
    rfm_segment: list[str] = Field(default_factory=list)
    lifecycle_stage: list[str] = Field(default_factory=list)
    churn_band: list[str] = Field(default_factory=list)
    clv_tier: list[str] = Field(default_factory=list)
    trigger: list[str] = Field(default_factory=list)  # members: customers with a `sent` trigger of these
    trigger_days: int = Field(1, gt=0)  # ... on the as-of date and the days before it, this many in all
    where: str = ""
    # Destinations: klaviyo: {list_id}; mailchimp: {list_id, segment} (a static segment by name).
    destinations: dict[str, dict[str, str]] = Field(default_factory=dict)
    schedule: Literal["nightly", "triggered"] = "nightly"
    # Share of the eligible customers kept out of the exports (a stable hash of the customer id), so
    # gold.experiment_results can measure what the audience's messages cause.
    holdout: float = Field(0.0, ge=0, lt=1)
    # What reaching one customer costs (the platform's price per email or SMS sent): silver.sends
    # records it per send, campaign_performance sums it and divides the incremental revenue by it.
    cost_per_send: float = Field(0.0, ge=0)


class DestinationSettings(_Section):
    """A marketing platform's connection. The key is read from the environment variable named here,
    never from a file; `host` points the SDK at another server (a test server, a proxy)."""

    credential_env: str
    host: str = ""
    server: str = ""  # Mailchimp's data center (us1...); from the key's suffix when empty
    timeout_seconds: float = Field(30.0, gt=0)
    max_retries: int = Field(6, ge=0)
    max_backoff_seconds: float = Field(60.0, gt=0)
    batch_size: int = Field(0, ge=0)  # profiles a request; 0: the platform's maximum (10,000 / 500)
    poll_seconds: float = Field(2.0, gt=0)  # Klaviyo import jobs: the wait between polls
    job_timeout_seconds: float = Field(1800.0, gt=0)


class PushTemplate(_Section):
    title: str = ""
    body: str = ""


class PushSettings(_Section):
    """Push through Firebase Cloud Messaging's HTTP v1 API (`p13n.activation.fcm`). The service
    account file's path is read from the environment variable named here, never from a file."""

    project_id: str = "p13n-demo"
    credential_env: str = "GOOGLE_APPLICATION_CREDENTIALS"
    host: str = ""  # another server than https://fcm.googleapis.com (a test server, a proxy)
    timeout_seconds: float = Field(30.0, gt=0)
    max_retries: int = Field(6, ge=0)
    max_backoff_seconds: float = Field(60.0, gt=0)
    workers: int = Field(8, gt=0, le=64)  # requests in flight (HTTP v1 takes one message a request)
    # A customer's devices: the app's device ids (its FCM registration tokens) seen in `app_events`
    # within this many days (FCM treats a token silent for 270 days as stale), the latest first.
    device_days: int = Field(270, gt=0)
    max_devices: int = Field(5, gt=0)
    # The notification each template shows; a template not listed goes as a data message (the app
    # renders it from the `template` key).
    templates: dict[str, PushTemplate] = Field(default_factory=dict)


class MailchimpStep(_Section):
    """A Mailchimp Customer Journey's API-trigger step (its URL holds both ids) on an audience."""

    list_id: str
    journey_id: int = Field(gt=0)
    step_id: int = Field(gt=0)


class MailchimpSettings(DestinationSettings):
    # The journey step that sends each template's email when `cadence.email_platform` is mailchimp.
    journey_steps: dict[str, MailchimpStep] = Field(default_factory=dict)


class SnowflakeTable(_Section):
    keys: list[str]  # the business key the MERGE matches on
    exclude: list[str] = Field(default_factory=list)  # columns never synced
    dated: bool = True  # only the as-of date's rows (tables with as_of_date)


class SnowflakeSettings(_Section):
    """Gold tables synced to Snowflake (`p13n.activation.snowflake`), over the warehouse connection of
    the sources (fakesnow locally, the Airflow connection `sources.snowflake_connection_id` in prod)."""

    database: str = "P13N"
    schema_name: str = Field("GOLD", alias="schema")
    tables: dict[str, SnowflakeTable] = Field(default_factory=dict)


class ActivationSettings(_Section):
    """Audience exports and the warehouse sync: see the `activation:` section of conf/base.yaml."""

    recommended_items: int = Field(3, ge=0, le=10)  # the top items on each exported profile
    item_url: str = "https://shop.example.com/p/{sku}"
    klaviyo: DestinationSettings = Field(
        default_factory=lambda: DestinationSettings(credential_env="KLAVIYO_API_KEY")
    )
    mailchimp: MailchimpSettings = Field(
        default_factory=lambda: MailchimpSettings(credential_env="MAILCHIMP_API_KEY")
    )
    fcm: PushSettings = Field(default_factory=PushSettings)
    audiences: dict[str, AudienceSettings] = Field(default_factory=dict)
    # Customers (a stable hash) who get no personalized message at all: the programme's baseline.
    global_holdout: float = Field(0.02, ge=0, le=0.5)
    # A platform destination whose key is not set: "fail" (the task fails, naming the variable) or
    # "csv" (the platform's import file is written instead: local runs have no accounts).
    without_key: Literal["fail", "csv"] = "fail"
    snowflake: SnowflakeSettings = Field(default_factory=SnowflakeSettings)


class MeasurementSettings(_Section):
    """Experiments and holdouts (`p13n.measurement`): see the `measurement:` section of conf/base.yaml."""

    # Outcomes are counted this many days from a customer's first send, exposure or holdout, against
    # the `pre_days` before it (CUPED's covariate).
    window_days: int = Field(14, gt=0)
    pre_days: int = Field(90, gt=0)
    alpha: float = Field(0.05, gt=0, lt=0.5)
    # Sequential testing's tuning: the number of units at which its interval is tightest.
    sequential_tuning: float = Field(5000.0, gt=0)
    # A comparison is flagged when the sample-ratio test's p-value is below this.
    srm_alpha: float = Field(0.001, gt=0, lt=1)
    # Attribution (gold.attribution): the conversions of the last `attribution_days`, each with the
    # touches of the `lookback_days` before it (at most `max_touches`, the latest); time decay halves
    # a touch's weight every `half_life_hours`.
    attribution_days: int = Field(30, gt=0)
    lookback_days: int = Field(30, gt=0)
    max_touches: int = Field(20, gt=0)
    half_life_hours: float = Field(168.0, gt=0)


class QualitySettings(_Section):
    """Great Expectations validation (`p13n.sources.expectations`): see `quality:` in conf/base.yaml."""

    # Batches of at most this many rows are validated with GX's pandas engine; larger ones on Spark.
    pandas_max_rows: int = Field(1_000_000, ge=0)


class PrivacySettings(_Section):
    """Erasure and access requests (`p13n.privacy`): see the `privacy:` section of conf/base.yaml."""

    vacuum_retention_hours: int = Field(0, ge=0)  # files an erasure replaced are deleted after this
    truncate_history: bool = True  # cut each changed table's log at a checkpoint (older versions go)
    requests_table: str = OPS_PRIVACY_REQUESTS
    # An erasure that would delete more rows than this refuses before deleting anything.
    max_rows_per_request: int = Field(200_000, gt=0)
    # `p13n sql` reads the restricted zones (restricted, bronze, quarantine) only when this is on.
    sql_restricted_zones: bool = False


class EvaluationSettings(_Section):
    """Evaluating against known answers: see the `evaluation:` section of conf/base.yaml."""

    truth_dir: str = ""


class ChannelCap(_Section):
    max_per_day: int = Field(1, ge=0)
    max_per_week: int = Field(3, ge=0)


class CadenceSettings(_Section):
    """One cadence over every channel and program (`p13n.cadence`): caps, quiet hours, send times."""

    # Messages per customer over every channel together, per local day and per 7 local days.
    max_per_day: int = Field(2, ge=0)
    max_per_week: int = Field(5, ge=0)
    # Each channel's own caps (a channel not named has only the overall ones).
    channels: dict[str, ChannelCap] = Field(
        default_factory=lambda: {
            "email": ChannelCap(max_per_day=1, max_per_week=3),
            "sms": ChannelCap(max_per_day=1, max_per_week=2),
            "push": ChannelCap(max_per_day=2, max_per_week=5),
        }
    )
    # No message goes out between these local hours: one due then waits for quiet_end.
    quiet_start: int = Field(21, ge=0, le=23)
    quiet_end: int = Field(8, ge=0, le=23)
    # A customer's time zone comes from their state; without one, this zone.
    default_time_zone: str = "America/New_York"
    # Which program wins the last slot of a day: the first entry that matches ("type:name" or "type").
    priority: list[str] = Field(default_factory=lambda: ["trigger", "journey", "audience"])
    # How each kind of program times its messages: "now" (as soon as decided, out of quiet hours),
    # "hour" (the customer's best hour, gold.send_times) or "hour_and_weekday" (their best weekday too).
    timing: dict[str, Literal["now", "hour", "hour_and_weekday"]] = Field(
        default_factory=lambda: {"trigger": "now", "journey": "hour", "audience": "hour_and_weekday"}
    )

    # No marketing message while the customer has a service case not closed (crm_cases), nor for
    # refund_quiet_days after a refund for one of these reasons (shopify_refunds: the order went wrong).
    suppress_open_cases: bool = True
    refund_reasons: list[str] = Field(default_factory=lambda: ["damaged", "wrong_item", "not_as_described"])
    refund_quiet_days: int = Field(14, ge=0)
    # Who sends the trigger and journey emails the dispatch hands over: Klaviyo (events of a metric a
    # flow sends on) or Mailchimp (Customer Journeys API steps, `activation.mailchimp.journey_steps`).
    # SMS goes through Klaviyo either way, push through FCM.
    email_platform: Literal["klaviyo", "mailchimp"] = "klaviyo"

    @field_validator("default_time_zone")
    @classmethod
    def _zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(v)
        except Exception as e:
            raise ValueError(f"unknown time zone {v!r} (an IANA name such as America/Chicago)") from e
        return v


class Settings(_Section):
    env: str = "local"
    data_dir: Path = Path("data")
    lake: LakeSettings = Field(default_factory=LakeSettings)
    spark: SparkSettings = Field(default_factory=SparkSettings)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    airflow: AirflowSettings = Field(default_factory=AirflowSettings)
    sources: SourcesSettings = Field(default_factory=SourcesSettings)
    identity: IdentitySettings = Field(default_factory=IdentitySettings)
    customers: CustomerSettings = Field(default_factory=CustomerSettings)
    recommend: RecommendSettings = Field(default_factory=RecommendSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    stream: StreamSettings = Field(default_factory=StreamSettings)
    activation: ActivationSettings = Field(default_factory=ActivationSettings)
    measurement: MeasurementSettings = Field(default_factory=MeasurementSettings)
    cadence: CadenceSettings = Field(default_factory=CadenceSettings)
    quality: QualitySettings = Field(default_factory=QualitySettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v if v.is_absolute() else (DATA_BASE / v)

    @property
    def lake_root(self) -> str:
        return self.lake.root or str(self.data_dir / "lake")

    @property
    def airflow_home(self) -> Path:
        return Path(self.airflow.home) if self.airflow.home else self.data_dir / "airflow"

    @property
    def mlflow_uri(self) -> str:
        # MLflow 3 keeps its file store in maintenance mode: locally, a SQLite database.
        return self.mlflow.tracking_uri or f"sqlite:///{self.data_dir / 'mlflow' / 'mlflow.db'}"

    @property
    def mlflow_artifacts(self) -> str:
        return (self.data_dir / "mlflow" / "artifacts").as_uri()

    @property
    def landing_dir(self) -> Path:
        return Path(self.sources.landing_dir) if self.sources.landing_dir else self.data_dir / "landing"

    @property
    def snowflake_db_path(self) -> Path:
        return (
            Path(self.sources.snowflake_db_path)
            if self.sources.snowflake_db_path
            else self.data_dir / "snowflake"
        )

    @property
    def truth_dir(self) -> Path | None:
        """The generator's ground truth, when `evaluation.truth_dir` names it (never in production)."""
        t = self.evaluation.truth_dir
        return None if not t else (Path(t) if Path(t).is_absolute() else self.data_dir / t)

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"


def _merge(base: dict, overlay: Mapping, origin: str, sources: dict[tuple, str], prefix: tuple = ()) -> dict:
    """Deep-merge `overlay` into `base`, recording which file or variable set each leaf."""
    for key, value in overlay.items():
        path = (*prefix, key)
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value, origin, sources, path)
        else:
            base[key] = dict(value) if isinstance(value, Mapping) else value
            sources[path] = origin
    return base


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of settings at the top level, got {type(data).__name__}"
        )
    _refuse_secrets(data, path)
    return data


def _refuse_secrets(data: Mapping, path: Path, prefix: str = "") -> None:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            _refuse_secrets(value, path, dotted + ".")
        elif isinstance(value, list):
            for item in value:
                _refuse_secrets({key: item}, path, prefix)
        elif (_SECRET_KEY.search(str(key)) and not str(key).endswith("_env") and value not in (None, "")) or (
            isinstance(value, str) and mask(value) != value
        ):
            raise ConfigError(
                f"{path}: {dotted!r} holds a credential (a secret-looking key, a password in a URL or a "
                f"key-shaped value); credentials may only come from the environment "
                f"(set {ENV_PREFIX}{dotted.upper().replace('.', '__')}) or an Airflow connection"
            )


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict]:
    """P13N__SPARK__MASTER=x -> {"spark": {"master": "x"}}, values parsed as YAML scalars.

    Keys are lower-cased, except the leaf of lake.storage_options, whose spelling is the backend's
    (AWS_REGION); those values stay strings, never parsed, since they are often credentials.
    """
    out: dict[str, dict] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [k for k in name[len(ENV_PREFIX) :].split("__") if k]
        keys = [k.lower() for k in parts]
        if keys[:2] == ["lake", "storage_options"] and len(parts) == 3:
            keys[2], value = parts[2], raw
        else:
            try:
                value = yaml.safe_load(raw) if raw else ""
            except yaml.YAMLError:
                value = raw
        node: dict = {}
        cursor = node
        for k in keys[:-1]:
            cursor = cursor.setdefault(k, {})
        cursor[keys[-1]] = value
        out[name] = node
    return out


def load_settings(
    env: str | None = None,
    conf_dir: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Load and validate the settings for `env` (default: $P13N_ENV, else "local")."""
    environ = os.environ if environ is None else environ
    env = env or environ.get("P13N_ENV") or "local"
    conf_dir = Path(conf_dir or environ.get("P13N_CONF_DIR") or REPO_ROOT / "conf")
    base_file, env_file = conf_dir / "base.yaml", conf_dir / f"{env}.yaml"
    if not base_file.exists():
        raise ConfigError(f"{base_file}: missing; it holds the base configuration (set P13N_CONF_DIR?)")
    if not env_file.exists() or env in NOT_OVERLAYS:
        known = sorted(p.stem for p in conf_dir.glob("*.yaml") if p.stem not in NOT_OVERLAYS)
        raise ConfigError(f"P13N_ENV={env!r}: no overlay {env_file}; known environments: {', '.join(known)}")

    sources: dict[tuple, str] = {}
    merged = _merge({}, _read_yaml(base_file), str(base_file), sources)
    _merge(merged, _read_yaml(env_file), str(env_file), sources)
    for var, override in _env_overrides(environ).items():
        _merge(merged, override, f"environment variable {var}", sources)
    if environ.get("P13N_DATA_DIR"):
        _merge(merged, {"data_dir": environ["P13N_DATA_DIR"]}, "environment variable P13N_DATA_DIR", sources)
    merged["env"] = env

    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, sources, env)) from None


def _shown(value, key: str) -> str:
    """A rejected value as an error may show it: numbers and short plain strings; else its kind."""
    if isinstance(value, bool | int | float) or value is None:
        return repr(value)
    if isinstance(value, str) and len(value) <= 60 and not _SECRET_KEY.search(key) and mask(value) == value:
        return repr(value)
    return f"a {type(value).__name__}" + (f" of {len(value)} characters" if isinstance(value, str) else "")


def _explain(exc: ValidationError, sources: dict[tuple, str], env: str) -> str:
    lines = [f"invalid configuration for P13N_ENV={env}:"]
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        origin = next((sources[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in sources), "defaults")
        key = ".".join(loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (set in {origin})")
        else:
            lines.append(f"  {key}: {err['msg']}; got {_shown(err.get('input'), key)} (set in {origin})")
    return "\n".join(lines)


@lru_cache(maxsize=8)
def _cached(env: str, conf_dir: str, overrides: tuple) -> Settings:
    return load_settings(env, conf_dir, dict(overrides))


def get_settings() -> Settings:
    """The process-wide settings, cached per environment and override set."""
    env = os.environ.get("P13N_ENV") or "local"
    conf_dir = os.environ.get("P13N_CONF_DIR") or str(REPO_ROOT / "conf")
    overrides = tuple(
        sorted((k, v) for k, v in os.environ.items() if k.startswith(("P13N__", "P13N_DATA_DIR")))
    )
    return _cached(env, conf_dir, overrides)
