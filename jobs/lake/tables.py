"""The table catalog: every lake table the platform writes, named once.

Table names are layered: `bronze.*`, `silver.*` and `quarantine.*` (one per source of
`conf/sources.yaml`), `restricted.*` (raw PII, access-controlled), `gold.*` (what the business
reads) and `ops.*` (run records). Code refers to a table through its constant here
(`GOLD_SEGMENTS`, `OPS_MODEL_RUNS` …), never through its name written out; a source's tables come
from its catalog entry (`source.bronze_table` …). `p13n lake tables --catalog` lists this catalog.

A `Table` is a `str` (its qualified name), so it goes wherever a table name goes, and carries what
the lake and a reader need to know: the partition column, the key, and the job that owns it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LAYERS = ("bronze", "silver", "gold", "quarantine", "restricted", "ops")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class TableName:
    layer: str
    name: str

    @classmethod
    def parse(cls, qualified: str) -> TableName:
        layer, dot, name = qualified.partition(".")
        if not dot or layer not in LAYERS or not _NAME.match(name):
            raise ValueError(
                f"table name {qualified!r} must be <layer>.<name> with layer one of {', '.join(LAYERS)} "
                "and a lower-case snake_case name"
            )
        return cls(layer, name)

    def uri(self, root: str) -> str:
        return f"{root.rstrip('/')}/{self.layer}/{self.name}"

    def __str__(self) -> str:
        return f"{self.layer}.{self.name}"


class Table(str):
    """A catalogued table: its qualified name, partition column, key columns, owner and purpose."""

    partition_by: str | tuple[str, ...] | None
    key: tuple[str, ...]
    owner: str
    about: str

    def __new__(
        cls, name: str, *, partition_by: str | tuple[str, ...] | None, key=(), owner: str, about: str = ""
    ):
        TableName.parse(name)
        self = super().__new__(cls, name)
        self.partition_by, self.key, self.owner, self.about = partition_by, tuple(key), owner, about
        return self

    def __getnewargs_ex__(self):  # copy and pickle (a str subclass with keyword-only fields)
        fields = {
            "partition_by": self.partition_by,
            "key": self.key,
            "owner": self.owner,
            "about": self.about,
        }
        return (str(self),), fields

    @property
    def partition_columns(self) -> list[str]:
        """The Delta table's partition columns (none, one, or several in order)."""
        p = self.partition_by
        return [] if not p else [p] if isinstance(p, str) else list(p)

    @property
    def layer(self) -> str:
        return TableName.parse(self).layer

    def uri(self, root: str) -> str:
        return TableName.parse(self).uri(root)


_DAY = "as_of_date"

# --- gold: identity ---------------------------------------------------------------------------
GOLD_IDENTITY_GRAPH = Table(
    "gold.identity_graph",
    partition_by="run_date",
    key=("record_key",),
    owner="identity",
    about="every source record and the customer it resolved to, per run",
)
GOLD_IDENTITY_CHANGES = Table(
    "gold.identity_changes",
    partition_by="change_date",
    key=("customer_id", "change_type"),
    owner="identity",
    about="merges and splits between two identity runs",
)
GOLD_CUSTOMER_ALIASES = Table(
    "gold.customer_aliases",
    partition_by=None,
    key=("alias_id",),
    owner="identity",
    about="retired customer ids and the id that replaced them",
)
GOLD_IDENTITY_KEYS = Table(
    "gold.identity_keys",
    partition_by=None,
    key=("key_type", "key_value"),
    owner="identity",
    about="pseudonymized email/phone/platform keys to customer id (the stream's lookup)",
)
GOLD_CUSTOMER_PROFILES = Table(
    "gold.customer_profiles",
    partition_by=None,
    key=("customer_id",),
    owner="identity",
    about="the customer-360 golden record without raw PII, with consent",
)
RESTRICTED_CUSTOMER_PROFILES = Table(
    "restricted.customer_profiles",
    partition_by=None,
    key=("customer_id",),
    owner="identity",
    about="the golden record's raw PII (names, email, phone, address, birth date)",
)

# --- gold: customers --------------------------------------------------------------------------
GOLD_CUSTOMER_FEATURES = Table(
    "gold.customer_features",
    partition_by=_DAY,
    key=("customer_id",),
    owner="customers",
    about="RFM, tenure, channel and category behaviour per customer and day",
)
GOLD_CUSTOMER_AFFINITIES = Table(
    "gold.customer_affinities",
    partition_by=_DAY,
    key=("customer_id", "kind", "value"),
    owner="customers",
    about="category, brand and store affinities",
)
GOLD_CHURN_SCORES = Table(
    "gold.churn_scores",
    partition_by=_DAY,
    key=("customer_id",),
    owner="customers",
    about="churn probability and risk band",
)
GOLD_CLV = Table(
    "gold.clv",
    partition_by=_DAY,
    key=("customer_id",),
    owner="customers",
    about="BG/NBD and Gamma-Gamma lifetime value",
)
GOLD_SEGMENTS = Table(
    "gold.segments",
    partition_by=_DAY,
    key=("customer_id",),
    owner="customers",
    about="RFM segment, cluster persona, lifecycle stage and value tier",
)
GOLD_SEND_TIMES = Table(
    "gold.send_times",
    partition_by=_DAY,
    key=("customer_id",),
    owner="customers",
    about="each customer's best hour and weekday to receive a message",
)

# --- gold: recommendations --------------------------------------------------------------------
GOLD_INTERACTIONS = Table(
    "gold.interactions",
    partition_by=_DAY,
    key=("customer_id", "sku"),
    owner="recommend",
    about="weighted customer-item interactions the recommenders train on",
)
GOLD_RECOMMENDATIONS = Table(
    "gold.recommendations",
    partition_by=_DAY,
    key=("customer_id", "list_type", "rank"),
    owner="recommend",
    about="every customer's lists (for_you, buy_again …) with source and reason",
)
GOLD_ITEM_SIMILARITY = Table(
    "gold.item_similarity",
    partition_by=_DAY,
    key=("sku", "rank"),
    owner="recommend",
    about="similar items per item",
)
GOLD_BOUGHT_TOGETHER = Table(
    "gold.bought_together",
    partition_by=_DAY,
    key=("sku", "rank"),
    owner="recommend",
    about="items bought in the same basket, with support, confidence and lift",
)
GOLD_TRENDING = Table(
    "gold.trending",
    partition_by=_DAY,
    key=("scope", "rank"),
    owner="recommend",
    about="items gaining buyers, overall and per category",
)
GOLD_POPULAR_ITEMS = Table(
    "gold.popular_items",
    partition_by=_DAY,
    key=("scope", "rank"),
    owner="recommend",
    about="most-bought items, overall and per category and store",
)

# --- gold: activation -------------------------------------------------------------------------
GOLD_TRIGGERED_AUDIENCES = Table(
    "gold.triggered_audiences",
    partition_by="trigger_date",
    key=("trigger_id",),
    owner="streaming",
    about="customers a behavioural trigger fired for (cart and browse abandonment …)",
)

# --- measurement -------------------------------------------------------------------------------
SILVER_SENDS = Table(
    "silver.sends",
    partition_by="send_date",
    key=("program_type", "program", "destination", "customer_id", "status"),
    owner="measurement",
    about="every customer an audience or trigger export sent (status sent) or held out (held_out), "
    "first entry per program and destination",
)
SILVER_EXPOSURES = Table(
    "silver.exposures",
    partition_by="exposure_date",
    key=("exposure_id",),
    owner="measurement",
    about="the read API's experiment exposures (experiment, arm, list, items), landed from Redis once",
)
GOLD_EXPERIMENT_RESULTS = Table(
    "gold.experiment_results",
    partition_by=_DAY,
    key=("experiment", "arm", "metric"),
    owner="measurement",
    about="per experiment, arm and metric: lift against the baseline arm with its interval, p-value, "
    "CUPED and sequential variants, sample-ratio check",
)
GOLD_ATTRIBUTION = Table(
    "gold.attribution",
    partition_by=_DAY,
    key=("model", "channel"),
    owner="measurement",
    about="the period's conversions and revenue credited to each channel by six attribution models "
    "(first, last, linear, position-based, time decay, Markov removal effect)",
)
GOLD_JOURNEY_STATE = Table(
    "gold.journey_state",
    partition_by=_DAY,
    key=("journey", "customer_id"),
    owner="journeys",
    about="each customer's place in each journey after the night: status, step, entered, left",
)
GOLD_JOURNEY_EVENTS = Table(
    "gold.journey_events",
    partition_by=_DAY,
    key=("journey", "customer_id", "step", "event"),
    owner="journeys",
    about="every step taken that night: entered, held out, sent or suppressed (why), waited, "
    "branched, converted, completed",
)

# --- ops: run records -------------------------------------------------------------------------
OPS_INGEST_RUNS = Table(
    "ops.ingest_runs",
    partition_by="batch_date",
    key=("source",),
    owner="sources",
    about="per source and batch: files, rows, quarantined rows and their reasons",
)
OPS_VALIDATIONS = Table(
    "ops.validations",
    partition_by="run_date",
    key=("table_name",),
    owner="orchestration",
    about="Great Expectations results per table and run",
)
OPS_IDENTITY_RUNS = Table(
    "ops.identity_runs",
    partition_by="run_date",
    key=("run_date",),
    owner="identity",
    about="counts, changes, timings and quality of each identity run",
)
OPS_MODEL_RUNS = Table(
    "ops.model_runs",
    partition_by=(_DAY, "model"),
    key=("model", _DAY),
    owner="models",
    about="each model's version, metrics, gate reasons and whether it was promoted",
)
OPS_PUBLISH_RUNS = Table(
    "ops.publish_runs",
    partition_by=None,
    key=(_DAY, "version"),
    owner="serving",
    about="each publication to Redis: version, keys, bytes, seconds",
)
OPS_EXPORT_RUNS = Table(
    "ops.export_runs",
    partition_by=None,
    key=("run_id",),
    owner="activation",
    about="each audience export: eligible, added, updated, removed",
)
OPS_EXPORT_STATE = Table(
    "ops.export_state",
    partition_by="destination",
    key=("destination", "audience", "customer_id"),
    owner="activation",
    about="what each destination's audience holds, for incremental exports",
)
OPS_WAREHOUSE_SYNCS = Table(
    "ops.warehouse_syncs",
    partition_by=None,
    key=(_DAY, "table_name"),
    owner="activation",
    about="each gold table's sync to Snowflake",
)
OPS_CONTACT_LEDGER = Table(
    "ops.contact_ledger",
    partition_by="ledger_date",
    key=("message_id",),
    owner="cadence",
    about="every message to every customer on every channel (audiences, triggers, journeys): when it "
    "goes out (best hour, quiet hours, time zone) or why not (cap, consent)",
)
OPS_DISPATCHES = Table(
    "ops.dispatches",
    partition_by="dispatch_date",
    key=("message_id",),
    owner="cadence",
    about="each due message of the contact ledger handed to its platform (or the outbox file) once, "
    "or why it could not be",
)
OPS_TABLE_HEALTH = Table(
    "ops.table_health",
    partition_by="run_date",
    key=("table_name",),
    owner="maintenance",
    about="files, bytes, rows, compaction and vacuum per table and night",
)

# --- privacy ----------------------------------------------------------------------------------
OPS_PRIVACY_REQUESTS = Table(
    "ops.privacy_requests",
    partition_by=None,
    key=("request_id",),
    owner="privacy",
    about="the queue of forget/access requests and their status (ids only)",
)
RESTRICTED_PRIVACY_REQUESTS = Table(
    "restricted.privacy_requests",
    partition_by=None,
    key=("request_id",),
    owner="privacy",
    about="the addresses an access request's export goes to",
)
RESTRICTED_PRIVACY_PENDING = Table(
    "restricted.privacy_pending",
    partition_by=None,
    key=("customer_id",),
    owner="privacy",
    about="a running erasure's identifiers, so a retry finds them again",
)
OPS_ERASURES = Table(
    "ops.erasures",
    partition_by=None,
    key=("customer_id",),
    owner="privacy",
    about="every erased customer id and its request (the registry every read filters on)",
)
OPS_SUPPRESSIONS = Table(
    "ops.suppressions",
    partition_by=None,
    key=("hash",),
    owner="privacy",
    about="salted hashes of erased identifiers, so re-ingested records stay out",
)
OPS_PRIVACY_AUDIT = Table(
    "ops.privacy_audit",
    partition_by=None,
    key=("request_id", "table_name"),
    owner="privacy",
    about="per erasure and table: rows removed and versions vacuumed",
)

CATALOG: dict[str, Table] = {str(t): t for t in list(globals().values()) if isinstance(t, Table)}


def source_tables() -> list[Table]:
    """The bronze, silver, quarantine and restricted tables of every source of conf/sources.yaml."""
    from p13n.sources.catalog import catalog

    out: list[Table] = []
    for s in catalog():
        out += [s.bronze_table, s.silver_table, s.quarantine_table]
        if s.restricted_table:
            out.append(s.restricted_table)
    return out


def table(name: str) -> Table:
    """The catalogued table called `name` (the platform's or a source's); a ValueError names the way out."""
    if name in CATALOG:
        return CATALOG[name]
    for t in source_tables():
        if t == name:
            return t
    TableName.parse(name)
    raise ValueError(f"{name!r} is not a table of the catalog; `p13n lake tables --catalog` lists them")


def silver_table(source: str) -> Table:
    """A source's silver table (`silver_table("products")`), named by conf/sources.yaml."""
    from p13n.sources.catalog import catalog

    return catalog()[source].silver_table


def bronze_table(source: str) -> Table:
    """A source's bronze table, named by conf/sources.yaml."""
    from p13n.sources.catalog import catalog

    return catalog()[source].bronze_table
