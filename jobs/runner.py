"""`p13n run`: the pipeline's DAGs run through Airflow as production runs them (its scheduler, DAG
processor, triggerer and API server, a LocalExecutor running each task in its own process, tasks as
clients of a Spark Connect server), each generated date triggered and followed down the asset chain,
with progress and a summary. `p13n run --in-process` keeps the debugging path: `airflow dags test` in
one long-lived process for the whole plan, no scheduler."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path

from p13n.config import get_settings
from p13n.lake.tables import (
    GOLD_RECOMMENDATIONS,
    GOLD_TRIGGERED_AUDIENCES,
    OPS_EXPORT_RUNS,
    OPS_MODEL_RUNS,
    OPS_WAREHOUSE_SYNCS,
    bronze_table,
)
from p13n.orchestration import PROGRESS_MARK, airflow_bin, airflow_env, dags_test_env


def ensure_airflow_db(env: dict[str, str], log: Path) -> None:
    """Create or upgrade Airflow's metadata database once per Airflow version (SQLite locally)."""
    import hashlib
    import importlib.metadata

    db = hashlib.sha1(env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "").encode()).hexdigest()[:8]
    stamp = Path(env["AIRFLOW_HOME"]) / f".p13n-db-{importlib.metadata.version('apache-airflow')}-{db}"
    if stamp.exists():
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        subprocess.run(
            [airflow_bin(), "db", "migrate"], env=env, stdout=out, stderr=subprocess.STDOUT, check=True
        )
    stamp.touch()


class DagSession:
    """Runs DAGs through `airflow dags test` in one long-lived process (`p13n.dagbatch`): Airflow's
    start-up, the DAG bag and the Spark driver are paid once, not once per DAG. Use as a context
    manager; a process that dies is replaced on the next run, and a process that has run
    `recycle_after` DAGs, or is left holding more than `max_rss_gb` after a DAG, is replaced too (a long
    backfill must not grow one process for ever; pandas and the JVM seldom give memory back)."""

    def __init__(
        self, env: dict[str, str], log: Path, recycle_after: int = 24, max_rss_gb: float | None = None
    ):
        self.env, self.log = {**dags_test_env(env), "PYTHONUNBUFFERED": "1"}, log
        self.recycle_after, self.runs_in_process, self.max_rss_gb = recycle_after, 0, max_rss_gb
        self.proc: subprocess.Popen | None = None
        self.last: dict | None = None  # the last run's result from the DAG process

    def __enter__(self) -> DagSession:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def _start(self) -> subprocess.Popen:
        if self.proc is not None and self.runs_in_process >= self.recycle_after:
            self.close()
        if self.proc is None or self.proc.poll() is not None:
            self.runs_in_process = 0
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "p13n.dagbatch"],
                env=self.env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
            )
        return self.proc

    def run(
        self, dag_id: str, logical_date: str, echo=print, env: dict[str, str] | None = None
    ) -> tuple[bool, float]:
        """Run one DAG for one date, echoing p13n progress lines; returns (succeeded, seconds).
        `env`: variables set for this run only."""
        from p13n.bench.memory import tree_rss_bytes
        from p13n.dagbatch import DONE_MARK

        start = time.monotonic()
        proc = self._start()
        self.runs_in_process += 1
        assert proc.stdin is not None and proc.stdout is not None
        failed_task, result = False, None
        with self.log.open("a") as out:
            out.write(f"\n===== airflow dags test {dag_id} {logical_date} (process {proc.pid})\n")
            proc.stdin.write(json.dumps({"dag": dag_id, "date": logical_date, "env": env or {}}) + "\n")
            proc.stdin.flush()
            for line in proc.stdout:
                if line.startswith(DONE_MARK):
                    result = json.loads(line[len(DONE_MARK) :])
                    break
                out.write(line)
                if PROGRESS_MARK in line:
                    echo("  " + line.split(PROGRESS_MARK, 1)[1].strip())
                if "new_state=failed" in line or "Marking task as FAILED" in line:
                    failed_task = True
            if result is None:
                out.write(f"===== the DAG process exited (code {proc.wait()}) before finishing {dag_id}\n")
            elif result.get("error"):
                out.write(f"===== {dag_id} {logical_date}: {result['error']}\n")
            # GiB, as the bench's peak memory and DuckDB's limit count it
            held = tree_rss_bytes(proc.pid) / 2**30 if self.max_rss_gb is not None else 0.0
            too_big = self.max_rss_gb is not None and held > self.max_rss_gb
            if too_big:
                out.write(f"===== the DAG process holds {held:.1f} GB after {dag_id}: replaced\n")
        if too_big:
            self.close()
        self.last = result
        ok = result is not None and result["ok"] and not failed_task
        return ok, time.monotonic() - start

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def run_dag(dag_id: str, logical_date: str, env: dict[str, str], log: Path, echo=print) -> tuple[bool, float]:
    """Run one DAG with `airflow dags test` in a process of its own; returns (succeeded, seconds)."""
    with DagSession(env, log) as dags:
        return dags.run(dag_id, logical_date, echo=echo)


def ensure_dataset(
    settings, customers: int, days: int, seed: int, echo=print, history_days: int = 365
) -> list[str]:
    """Generate a dataset when the landing zone is empty; return the days it holds."""
    from p13n.generate.retail import generate
    from p13n.sources.catalog import catalog
    from p13n.sources.simulate import load_warehouse

    out = settings.landing_dir.parent  # landing/ and truth/ side by side, as `p13n generate` writes them
    meta = out / "truth" / "generation.json"
    if not meta.exists():
        echo(
            f"no data yet: generating {customers:,} customers x {days} days"
            f" after {history_days} days of purchase history (seed {seed})"
        )
        generate(
            catalog(),
            out,
            customers,
            days,
            seed,
            dt.date(2024, 3, 1),
            progress=lambda m: echo("  " + m),
            history_days=history_days,
        )
        rows = load_warehouse(settings, catalog())
        echo(f"  loaded {rows:,} rows into the local warehouse (fakesnow)")
    info = json.loads(meta.read_text())
    start = dt.date.fromisoformat(info["start"])
    return [(start + dt.timedelta(days=d)).isoformat() for d in range(info["days"])]


# The nightly, in the order its Assets chain it: each night's ingestion, identity resolution and
# scoring (so the run report can show segment movements and model metrics against the previous
# night); then recommendations, the publish and the exports of the last night (a DAG run for each
# night would be the same: `make run` shows one, to stay short); the live stream, maintenance and the
# run report at the end.
NIGHTLY = (
    "ingest_sources",
    "resolve_identities",
    "score_customers",
    "recommend_products",
    "publish_serving",
    "export_audiences",
)
EVERY_NIGHT = ("ingest_sources", "resolve_identities", "score_customers")
STREAM_DAG = "stream_events"
AFTER_NIGHT = ("lake_maintenance", "run_report")
AFTER = (STREAM_DAG, *AFTER_NIGHT)  # in process, the stream follows the last night


def nightly_plan(
    dates: list[str],
    dags: tuple[str, ...] = NIGHTLY,
    every_night: tuple[str, ...] = EVERY_NIGHT,
    after: tuple[str, ...] = (),
) -> list[tuple[str, str]]:
    """(dag, date) in run order: `every_night` DAGs for each date, the others for the last date only."""
    plan = [(dag, d) for d in dates for dag in dags if dag in every_night]
    plan += [(dag, dates[-1]) for dag in dags if dag not in every_night]
    return plan + [(dag, dates[-1]) for dag in after]


@contextmanager
def local_services(settings, env: dict[str, str], say, replay: bool = True):
    """The embedded Redis and Kafka broker the DAGs use when none is configured (their addresses go
    into `env`); the broker is refilled with the landing zone's topics (`replay=False`: later, by
    `replay_landing` once the landing zone is filled). Stopped on exit."""
    from p13n.services.kafka import EmbeddedBroker
    from p13n.services.redis import RedisServer

    broker = redis_server = None
    try:
        if not settings.serving.redis_url:
            redis_server = RedisServer(settings.data_dir / "redis").start()
            env["P13N__SERVING__REDIS_URL"] = redis_server.url
            say(f"embedded Redis on {redis_server.url} (kept in {settings.data_dir / 'redis'})")
        if not settings.sources.kafka_bootstrap:
            broker = EmbeddedBroker(log_path=settings.logs_dir / "kafka-broker.log").start()
            env["P13N_KAFKA_BOOTSTRAP"] = broker.bootstrap
            if replay:
                replay_landing(settings, env, say)
            else:
                say(f"embedded Kafka broker on {broker.bootstrap}")
        yield env
    finally:
        if broker:
            broker.stop()
        if redis_server:
            redis_server.stop()


def _in_background(fn, name: str) -> Future:
    """`fn()` in a daemon thread, so Ctrl-C stops the run without waiting for it; its result (or
    exception) comes through the returned Future."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:  # handed to whoever waits on it
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def replay_landing(settings, env: dict[str, str], say) -> None:
    """Refill the embedded broker (none when `sources.kafka_bootstrap` names one) with the landing
    zone's topics."""
    from p13n.sources.catalog import catalog
    from p13n.sources.simulate import replay_topics

    if settings.sources.kafka_bootstrap or "P13N_KAFKA_BOOTSTRAP" not in env:
        return
    sent = replay_topics(settings, catalog(), env["P13N_KAFKA_BOOTSTRAP"])
    say(f"embedded Kafka broker on {env['P13N_KAFKA_BOOTSTRAP']}: replayed {sent:,} events")


def _console():
    from rich.console import Console

    # Piped into a log or CI, rich would assume 80 columns and fold the summary tables.
    console = Console(width=None if sys.stdout.isatty() else 160)

    def echo(line: str) -> None:  # progress lines wrap softly, whatever the terminal's width
        console.print(line, soft_wrap=True, highlight=False)

    return console, echo


def run_plan(
    plan: list[tuple[str, str]],
    env: dict[str, str],
    log: Path,
    console,
    echo,
    before=None,
    timings: list | None = None,
) -> tuple[str, str] | None:
    """Run each (dag, date) through Airflow in order; stop at the first failure and return it.
    Each run's (dag, date, seconds, succeeded) is appended to `timings` when given."""
    with console.status("preparing Airflow (metadata database)…"):
        ensure_airflow_db(env, log)
    with DagSession(env, log, max_rss_gb=get_settings().airflow.dag_process_max_rss_gb) as dags:
        return _run_in(dags, plan, log, console, echo, before, timings)


def _run_in(dags: DagSession, plan, log, console, echo, before, timings) -> tuple[str, str] | None:
    for i, (dag_id, day) in enumerate(plan, 1):
        if before:
            before(dag_id, day)
        console.print(f"[cyan]DAG {dag_id}[/] {day}  [dim]({i}/{len(plan)})[/]")
        ok, seconds = dags.run(dag_id, day, echo=echo)
        if timings is not None:
            timings.append({"dag": dag_id, "date": day, "seconds": round(seconds, 1), "succeeded": ok})
        if not ok:
            console.print(f"[red]DAG {dag_id} {day} failed after {seconds:.0f}s[/]; full log: {log}")
            _print_tail(console, log)
            return dag_id, day
        console.print(f"  [green]done[/] in {seconds:.0f}s")
    return None


def _run_log(settings, what: str) -> Path:
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    return settings.logs_dir / f"{what}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}.log"


@contextmanager
def scheduled_airflow(settings, env: dict[str, str], say, log_dir: Path):
    """A Spark Connect server (unless `spark.remote` names one) and Airflow's components, for the length
    of a run; yields the REST client. Everything they started is stopped on exit."""
    from p13n.scheduler import CHAIN, AirflowServices, client, services_env, wait_for_dags
    from p13n.services.spark_connect import SparkConnectServer

    connect = None
    try:
        if not settings.spark.remote:
            connect = SparkConnectServer(settings).start()
            env["P13N__SPARK__REMOTE"] = connect.url
            say(
                f"Spark Connect server on {connect.url} in front of {settings.spark.master} (tasks are its "
                "clients)"
            )
        services = AirflowServices(services_env(settings, base=env), log_dir)
        with services:
            services.start(say=say)
            api = client(env=services.env)
            wait_for_dags(api, CHAIN)
            yield api
    finally:
        if connect:
            connect.stop()


def _run_scheduled(
    api,
    dates: list[str],
    env,
    console,
    echo,
    timings: list,
    before=None,
    between=None,
    dags: tuple[str, ...] | None = None,
) -> tuple[str, str] | None:
    """Each date: trigger ingestion and follow the asset chain to the run report; the last date's
    stream (catch-up, triggers, dispatch, exposures) before its night, its maintenance and report
    (which then shows them) after. `between(day)` runs before
    each night but the first (of the whole chain only). `dags`: only these DAGs of the chain run, the
    others stay paused (their runs wait in Airflow's queue for an unpause)."""
    from p13n.scheduler import CHAIN, trigger_date, watch_chain

    log_root = Path(env["AIRFLOW__LOGGING__BASE_LOG_FOLDER"])
    chain = tuple(d for d in CHAIN if d in (dags or CHAIN))
    for dag_id in chain:
        api.unpause(dag_id)
    for i, day in enumerate(dates):
        if between and i and chain == CHAIN:
            between(day)
        if before and "ingest_sources" in chain:
            before("ingest_sources", day)
        # The last date's stream before its night: in production the stream runs through the day,
        # so the night sees the day's stream triggers (journeys enter on them, caps count them),
        # and so does a rerun of the date.
        if (
            day == dates[-1]
            and chain == CHAIN
            and (failed := _run_dated(api, STREAM_DAG, day, console, echo, timings, log_root, before))
        ):
            return failed
        since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2)
        run = trigger_date(api, "ingest_sources", day, unpause=False)
        console.print(
            f"[cyan]triggered ingest_sources for {day}[/] (run {run['dag_run_id']}); following the assets"
        )
        runs = watch_chain(api, day, since, dags=chain, echo=echo, log_root=log_root)
        timings += [
            {"dag": r.dag_id, "date": day, "seconds": r.seconds, "succeeded": r.state == "success"}
            for r in runs
        ]
        if len(runs) < len(chain) or runs[-1].state != "success":
            return (runs[-1].dag_id if runs else "ingest_sources"), day
    for dag_id in AFTER_NIGHT if chain == CHAIN else ():
        if failed := _run_dated(api, dag_id, dates[-1], console, echo, timings, log_root, before):
            return failed
    return None


def _run_dated(api, dag_id: str, day: str, console, echo, timings: list, log_root, before=None):
    """Trigger `dag_id` for `day` and wait for it; returns (dag, day) when it did not succeed. A cron
    DAG (stream, maintenance) is unpaused only while its run lasts."""
    from p13n.scheduler import CHAIN, drop_wall_clock_runs, trigger_date, wait_for_run

    if before:
        before(dag_id, day)
    paused = api.is_paused(dag_id)  # cron DAGs (stream, maintenance) stay as they were
    unpaused_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2)
    run = trigger_date(api, dag_id, day)
    done = wait_for_run(api, dag_id, run["dag_run_id"], echo=echo, log_root=log_root)
    if paused and dag_id not in CHAIN:
        api.pause(dag_id)
        deleted, started = drop_wall_clock_runs(api, dag_id, unpaused_at)
        if deleted:
            console.print(f"  deleted {dag_id}'s wall-clock runs queued meanwhile: {', '.join(deleted)}")
        if started:
            console.print(
                f"  [yellow]{dag_id}: a wall-clock run started while it was unpaused: "
                f"{', '.join(started)}[/] (it processes today's date, not {day})"
            )
    console.print(f"DAG {dag_id} {day}: {done.state} in {done.seconds:.0f}s")
    ok = done.state == "success"
    timings.append({"dag": dag_id, "date": day, "seconds": done.seconds, "succeeded": ok})
    return None if ok else (dag_id, day)


def run_pipeline(
    customers: int = 20_000,
    days: int = 2,
    seed: int = 42,
    history_days: int = 365,
    in_process: bool = False,
    dates: list[str] | None = None,
    dags: tuple[str, ...] | None = None,
) -> int:
    """The nightly for each generated date (generating a dataset when there is none), or for `dates`;
    `dags` limits the DAGs (the chain's order is kept). Prints progress, then the summary."""
    console, echo = _console()
    settings = get_settings()
    log = _run_log(settings, "run")
    env = airflow_env(settings)
    how = "in-process (airflow dags test)" if in_process else "Airflow's scheduler"
    console.print(f"[bold]p13n run[/]  env={settings.env}  data={settings.data_dir}  through {how}")
    record = {
        "customers": customers,
        "days": days,
        "dates": dates,
        "generate_seconds": 0.0,
        "stages": [],
        "log": str(log),
    }

    def dataset() -> list[str]:
        t0 = time.monotonic()
        out = ensure_dataset(settings, customers, days, seed, echo=echo, history_days=history_days)
        record.update(dates=out, generate_seconds=round(time.monotonic() - t0, 1))
        return out

    # Through the scheduler, the dataset is generated (one core of Python) while Spark Connect and
    # Airflow start (their own processes); in-process, first.
    generating = None
    if not dates:
        if in_process:
            dates = dataset()
        else:
            generating = _in_background(dataset, "generate")
    started = dt.datetime.now(dt.UTC)

    browsed: list[str] = []

    def storefront(day: str) -> None:
        url = env.get("P13N__SERVING__REDIS_URL") or settings.serving.redis_url
        if not url:
            return
        if landed := _exposures_of(settings, day):
            console.print(f"storefront {day}: not browsed again ({landed:,} of its exposures already landed)")
            return
        shown, exposed = _storefront_requests(settings, url, dt.date.fromisoformat(day))
        browsed.append(day)
        console.print(
            f"storefront {day}: {shown:,} personalized lists read through the API's store, {exposed:,} "
            "experiment exposures logged for the stream to land"
        )

    def between(day: str) -> None:
        """Before `day`'s nightly: the storefront browses `day` on the lists published the night
        before, and its exposures land (what the stream DAG does all day), so the nightly measures
        the API experiment on `day`'s orders."""
        storefront(day)
        if env.get("P13N__SERVING__REDIS_URL") or settings.serving.redis_url:
            console.print("  " + _land_exposures(settings, env).text())

    def before(dag_id: str, day: str) -> None:
        if dag_id == "ingest_sources" and day == dates[-1]:
            # The evening of the last date, before its nightly: the night's ingestion of the Kafka
            # sources lands them in that date's batch (and a rerun of the date finds them there).
            live = _produce_live_events(env, customers, day)
            console.print(f"produced {live:,} live web events (500/s) on Kafka for the night of {day}")
        if dag_id == "stream_events" and not browsed:
            storefront(day)

    with local_services(settings, env, console.print, replay=generating is None):
        if in_process:
            plan = (
                nightly_plan(dates, after=AFTER) if not dags else nightly_plan(dates, dags, every_night=dags)
            )
            failed = run_plan(plan, env, log, console, echo, before=before, timings=record["stages"])
        else:
            with console.status(
                "starting Spark Connect and Airflow (scheduler, DAG processor, triggerer, API)…"
            ):
                ensure_airflow_db(env, log)
            with scheduled_airflow(settings, env, console.print, settings.logs_dir) as api:
                if generating is not None:
                    with console.status("generating the dataset…"):
                        dates = generating.result()
                    replay_landing(settings, env, console.print)
                failed = _run_scheduled(
                    api,
                    dates,
                    env,
                    console,
                    echo,
                    record["stages"],
                    before=before,
                    between=between,
                    dags=dags,
                )
        record["succeeded"] = failed is None
        log.with_suffix(".json").write_text(json.dumps(record, indent=2))
        if failed:
            console.print(
                f"[red]DAG {failed[0]} {failed[1]} did not succeed[/]; task logs under "
                f"{settings.logs_dir / 'airflow'}, run log: {log}"
            )
            _print_alerts(console, settings, started)
            return 1
        url = env.get("P13N__SERVING__REDIS_URL") or settings.serving.redis_url
        serving = _serving_summary(settings, url)
        streaming = _stream_summary(settings, url)
    _print_ingest_summary(console, settings, dates)
    _print_identity_summary(console, settings, dates[-1])
    _print_customer_summary(console, settings, dates[-1])
    _print_recommendation_summary(console, settings, dates[-1])
    console.print(serving, soft_wrap=True, highlight=False)
    console.print(streaming, soft_wrap=True, highlight=False)
    console.print(_activation_summary(settings, dates[-1]), soft_wrap=True, highlight=False)
    _print_summary(console, settings, dates[-1], log)
    _print_stage_times(console, record)
    _print_alerts(console, settings, started)
    return 0


def _print_stage_times(console, record: dict) -> None:
    from rich.table import Table

    table = Table(title="Stage times")
    for col in ("DAG", "date", "seconds"):
        table.add_column(col, justify="right" if col == "seconds" else "left")
    if record.get("generate_seconds", 0) >= 1:
        table.add_row("(generate the dataset)", "", f"{record['generate_seconds']:,.0f}")
    for st in record["stages"]:
        table.add_row(st["dag"], st["date"], f"{st['seconds']:,.0f}")
    total = sum(st["seconds"] for st in record["stages"])
    table.add_section()
    table.add_row("total through Airflow", "", f"{total:,.0f}")
    console.print(table)


def backfill(
    start: str, end: str, dags: tuple[str, ...] = NIGHTLY[:4], every_night: tuple[str, ...] | None = None
) -> int:
    """Run the nightly's DAGs for every date from `start` to `end` (inclusive) through Airflow, in
    order, without a scheduler; stop at the first failure and say how to resume. By default each date
    gets ingestion, identity, scoring and recommendations (each writes its date's partitions, so a
    rerun replaces them); publish and exports are left to the live nightly."""
    console, echo = _console()
    settings = get_settings()
    first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    if last < first:
        console.print(f"[red]p13n backfill: --to {end} is before --from {start}[/]")
        return 2
    dates = [(first + dt.timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
    plan = nightly_plan(dates, dags, every_night=dags if every_night is None else every_night)
    log = _run_log(settings, "backfill")
    env = airflow_env(settings)
    console.print(f"[bold]p13n backfill[/] {start} … {end}: {len(plan)} DAG runs ({', '.join(dags)})")
    started = dt.datetime.now(dt.UTC)
    with local_services(settings, env, console.print):
        failed = run_plan(plan, env, log, console, echo)
    _print_alerts(console, settings, started)
    if failed:
        console.print(
            f"resume with: p13n backfill --from {failed[1]} --to {end} --dag {' --dag '.join(dags)}"
        )
        return 1
    console.print(f"[green]backfilled {len(dates)} dates[/]; log: {log}")
    return 0


def _print_alerts(console, settings, since: dt.datetime) -> None:
    from p13n.alerts import read_alerts

    alerts = read_alerts(settings, since)
    for a in alerts:
        console.print(f"[red]alert[/] {a['text']}", soft_wrap=True, highlight=False, markup=False)


def _print_ingest_summary(console, settings, dates: list[str]) -> None:
    """Per source over the run's dates: rows read, promoted and quarantined, the top reasons, and the
    expectations (from `p13n.report.data.ingestion`, what the run report shows per date)."""
    import pandas as pd
    from rich.table import Table

    from p13n.lake.duck import duckdb_connection
    from p13n.report import data

    con = duckdb_connection(settings=settings)
    frames = [data.ingestion(con, settings.lake_root, dt.date.fromisoformat(d)) for d in dates]
    frames = [f for f in frames if f is not None and not f.empty]
    if not frames:
        return
    runs = pd.concat(frames, ignore_index=True)
    numbers = ["read", "silver", "quarantined", "expectations_passed", "expectations_failed"]
    per = runs.groupby("source")[numbers].sum()
    reasons: dict[str, dict[str, int]] = {}
    for source, found in zip(runs["source"], runs["reasons"], strict=True):
        for reason, n in found:
            reasons.setdefault(source, {})[reason] = reasons.get(source, {}).get(reason, 0) + n
    table = Table(title=f"Ingestion, {dates[0]} … {dates[-1]}")
    for col in ("source", "rows read", "silver", "quarantined", "top reasons", "expectations ok/failed"):
        numeric = col in ("rows read", "silver", "quarantined")
        table.add_column(
            col,
            justify="right" if numeric else "left",
            no_wrap=col != "top reasons",
            max_width=64 if col == "top reasons" else None,
        )
    for name, a in per.iterrows():
        top = sorted(reasons.get(name, {}).items(), key=lambda kv: -kv[1])[:2]
        table.add_row(
            name,
            f"{a['read']:,}",
            f"{a['silver']:,}",
            f"{a['quarantined']:,}",
            "; ".join(f"{k} ×{v}" for k, v in top),
            f"{a['expectations_passed']}/{a['expectations_failed']}",
        )
    table.add_section()
    total = per.sum()
    table.add_row(
        f"{len(per)} sources",
        *(f"{total[k]:,}" for k in ("read", "silver", "quarantined")),
        "",
        f"{total['expectations_passed']}/{total['expectations_failed']}",
    )
    console.print(table)


def _print_tail(console, log: Path, lines: int = 25) -> None:
    tail = log.read_text(errors="replace").splitlines()[-lines:]
    console.print("\n".join(tail), markup=False, highlight=False)


def _fmt_share(v) -> str:
    return f"{v:.4f}" if v is not None else "–"

    return f"{v:.4f}" if v is not None and v == v else "–"  # None or NaN: no truth to compare with


def _print_identity_summary(console, settings, day: str) -> None:
    """One line per identity run up to `day`: records, customers, changes and, on generated data, the
    quality against the truth (`p13n.report.data.identity`)."""
    from rich.table import Table

    from p13n.lake.duck import duckdb_connection
    from p13n.report import data

    found = data.identity(
        duckdb_connection(settings=settings), settings.lake_root, dt.date.fromisoformat(day)
    )
    if found is None:
        return
    table = Table(title="Identity resolution")
    for col in ("date", "records", "customers", "changes", "precision", "recall", "F1"):
        table.add_column(col, justify="right" if col != "changes" else "left")
    for r in found["runs"].to_dict("records"):
        changes = {k.removeprefix("changes: "): v for k, v in r.items() if k.startswith("changes: ")}
        table.add_row(
            str(r["run_date"])[:10],
            f"{int(r['records'] or 0):,}",
            f"{int(r['customers'] or 0):,}",
            ", ".join(f"{k} {int(v):,}" for k, v in sorted(changes.items()) if v == v) or "none",
            _fmt_share(r["precision"]),
            _fmt_share(r["recall"]),
            _fmt_share(r["f1"]),
        )
    console.print(table)


def _print_customer_summary(console, settings, day: str) -> None:
    """The models' gate decisions and metrics, the segment sizes and the cluster personas of `day`."""
    from rich.table import Table

    from p13n.lake.duck import duckdb_connection, scan, table_exists
    from p13n.report import data

    root = settings.lake_root
    if not table_exists(settings, OPS_MODEL_RUNS):
        return
    con = duckdb_connection(settings=settings)
    day = dt.date.fromisoformat(day)
    runs = con.execute(
        f"select model, version, promoted, reasons, metrics from {scan(root, OPS_MODEL_RUNS)} "
        "where as_of_date = ? order by model",
        [day],
    ).fetchall()
    table = Table("model", "version", "champion?", "metrics", "gate", title=f"Models as of {day}")
    shown = {
        "churn": ("roc_auc", "pr_auc", "brier", "lift_top_decile"),
        "clv": ("holdout_mae", "holdout_rmse", "holdout_aggregate_error"),
        "segments": ("k", "silhouette", "send_hour_accuracy_1h"),
        "recommend": ("ndcg_at_k", "lift_over_popularity", "coverage", "test_customers"),
    }
    for model, version, promoted, reasons, metrics in runs:
        m = json.loads(metrics)
        numbers = ", ".join(f"{k}={m[k]}" for k in shown.get(model, ()) if k in m)
        table.add_row(model, version, "promoted" if promoted else "kept old", numbers, reasons)
    console.print(table)
    found = data.segments(con, root, day)
    if found is not None:
        table = Table("lifecycle stage", "customers", "persona (cluster)", "customers", title="Segments")
        stages, personas = (
            list(found["sizes"][col].itertuples(index=False)) for col in ("lifecycle_stage", "persona")
        )
        for i in range(max(len(stages), len(personas))):
            s = stages[i] if i < len(stages) else ("", "")
            p = personas[i] if i < len(personas) else ("", "")
            table.add_row(s[0], f"{s[1]:,}" if s[1] != "" else "", p[0], f"{p[1]:,}" if p[1] != "" else "")
        console.print(table)


def _print_recommendation_summary(console, settings, day: str) -> None:
    """Lists per type and where the personalized items came from; one customer's list with reasons."""
    from rich.table import Table

    from p13n.lake.duck import duckdb_connection, scan, table_exists

    if not table_exists(settings, GOLD_RECOMMENDATIONS):
        return
    con = duckdb_connection(settings=settings)
    day = dt.date.fromisoformat(day)
    recs = f"{scan(settings.lake_root, GOLD_RECOMMENDATIONS)} where as_of_date = ?"
    table = Table(
        "list", "customers", "items per customer", "from (source: rows)", title=f"Recommendations as of {day}"
    )
    for list_type, customers, per in con.execute(
        "select list_type, count(distinct customer_id), round(count(*) / count(distinct customer_id), 1) "
        f"from {recs} group by 1 order by 1",
        [day],
    ).fetchall():
        sources = con.execute(
            f"select source, count(*) from {recs} and list_type = ? group by 1 order by 2 desc",
            [day, list_type],
        ).fetchall()
        table.add_row(list_type, f"{customers:,}", str(per), ", ".join(f"{s}: {n:,}" for s, n in sources))
    console.print(table)
    sample = (
        con.execute(
            f"select customer_id from {recs} and list_type = 'buy_again' order by customer_id limit 1", [day]
        ).fetchall()
        or con.execute(f"select customer_id from {recs} order by customer_id limit 1", [day]).fetchall()
    )
    if sample:
        who = sample[0][0]
        rows = con.execute(
            f"select rank, sku, source, reason from {recs} and list_type = 'personalized' and "
            "customer_id = ? order by rank limit 8",
            [day, who],
        ).fetchall()
        example = Table("rank", "sku", "source", "reason", title=f"Personalized list of {who} (first 8)")
        for r in rows:
            example.add_row(*(str(v) for v in r))
        console.print(example)


def _produce_live_events(env: dict[str, str], customers: int, day: str) -> int:
    """A few seconds of live clickstream (what `p13n stream produce` sends), stamped in the evening of
    `day`, before the night of `day` is ingested: that night's ingestion of the Kafka sources lands
    them in the date's batch, and `stream_events` then finds them in bronze for its triggers. Seeded:
    the embedded broker forgets its topics between runs and the replay refills them, so a rerun of
    the date produces the same events at the same offsets, which the lake already holds: nothing lands
    twice, and the date's tables come out the same."""
    from p13n.streaming.tasks import produce

    return produce(
        rate=500,
        seconds=4,
        customers=customers,
        seed=7,
        bootstrap=env.get("P13N_KAFKA_BOOTSTRAP"),
        day=dt.date.fromisoformat(day),
    )


STOREFRONT_TIMEOUT_MS = 10_000


def _storefront_requests(settings, url: str, day: dt.date, customers: int = 2000) -> tuple[int, int]:
    """A storefront's traffic for the demo: the personalized list of up to `customers` active
    customers, read as the API reads it (`Store.recommendations`), so each request the experiment
    intercepts logs an exposure. The storefront browses `day` (from 09:00 UTC, a request every 10
    seconds), like the live events, so the exposures are measured on the generated dates' orders.

    The API answers within `serving.api.redis_timeout_ms` (100 ms) or serves its fallback; the demo
    waits up to `STOREFRONT_TIMEOUT_MS` instead, since a fallback logs no exposure: at 100k customers,
    on a machine busy with the night's tail, connecting took longer than 100 ms and the whole run
    stopped on the demo's `RedisDown`."""
    import asyncio

    import redis as redis_lib

    from p13n.serving.api import Store
    from p13n.serving.keys import Keys

    if not url:
        return 0, 0
    stream = Keys(settings.serving.namespace).exposures
    before = redis_lib.Redis.from_url(url).xlen(stream)
    api = settings.serving.api.model_copy(update={"redis_timeout_ms": STOREFRONT_TIMEOUT_MS})
    demo = settings.model_copy(update={"serving": settings.serving.model_copy(update={"api": api})})

    async def browse() -> int:
        start = dt.datetime.combine(day, dt.time(9), dt.UTC).timestamp()
        ticks = iter(range(10**9))
        store = Store(demo, url, clock=lambda: start + 10 * next(ticks))
        try:
            seg = await store.segment("lifecycle.active", 1, customers)
            ids = seg["customer_ids"] if seg else []
            for c in ids:
                await store.recommendations(c, "personalized", 10)
            return len(ids)
        finally:
            await store.r.aclose()

    shown = asyncio.run(browse())
    return shown, redis_lib.Redis.from_url(url).xlen(stream) - before


def _exposures_of(settings, day: str) -> int:
    """Exposures `silver.exposures` holds for `day`: the storefront of a date that already ran (a rerun,
    a backfill) is not browsed twice."""
    from p13n.lake.duck import duckdb_connection, scan, table_exists
    from p13n.lake.tables import SILVER_EXPOSURES

    if not table_exists(settings.lake_root, SILVER_EXPOSURES):
        return 0
    return (
        duckdb_connection()
        .execute(
            f"SELECT count(*) FROM {scan(settings.lake_root, SILVER_EXPOSURES)} WHERE exposure_date = ?",
            [dt.date.fromisoformat(day)],
        )
        .fetchone()[0]
    )


def _land_exposures(settings, env):
    """The exposures logged so far into `silver.exposures` (as `stream_events` lands them)."""
    import redis as redis_lib

    from p13n.measurement.exposures import land_exposures
    from p13n.serving.keys import Keys

    client = redis_lib.Redis.from_url(env.get("P13N__SERVING__REDIS_URL") or settings.serving.redis_url)
    try:
        return land_exposures(settings, client, Keys(settings.serving.namespace).exposures)
    finally:
        client.close()


def _stream_summary(settings, url: str) -> str:
    """What the streaming step did: events landed by the consumer, real-time profiles, triggers."""
    import redis as redis_lib

    from p13n.lake.duck import duckdb_connection, open_table, scan, table_exists

    lines = ["[bold]Streaming[/]"]
    con = duckdb_connection(settings=settings)
    bronze = bronze_table("web_clickstream")
    if table_exists(settings, bronze):
        commits = [h for h in open_table(settings, bronze).history() if h.get("p13n.writer") == "stream"]
        rows = sum(int((h.get("operationMetrics") or {}).get("num_added_rows", 0)) for h in commits)
        lines.append(f"{bronze}: {rows:,} events landed by the stream consumer in {len(commits)} commits")
    r = redis_lib.Redis.from_url(url)
    try:
        ns = settings.serving.namespace
        rt = sum(1 for _ in r.scan_iter(f"{ns}:rt:*", count=10_000) if b":" not in _.split(b":rt:")[1])
    finally:
        r.close()
    lines.append(f"real-time profiles in Redis ({ns}:rt:<customer_id>): {rt:,}")
    if table_exists(settings.lake_root, GOLD_TRIGGERED_AUDIENCES):
        rows = con.execute(
            f"SELECT trigger, status, count(*) FROM {scan(settings.lake_root, GOLD_TRIGGERED_AUDIENCES)} "
            "GROUP BY ALL ORDER BY ALL"
        ).fetchall()
        lines.append(
            "gold.triggered_audiences: " + (", ".join(f"{t} {s} {n:,}" for t, s, n in rows) or "none yet")
        )
    return "\n".join(lines)


def _activation_summary(settings, day: str) -> str:
    """What `export_audiences` did for the date: each audience's export (locally, with no platform
    keys, each platform's import file: `activation.without_key: csv`) and the Snowflake sync."""
    from p13n.lake.duck import duckdb_connection, scan, table_exists

    con, root = duckdb_connection(), settings.lake_root
    lines = ["[bold]Activation[/] (export_audiences)"]
    if table_exists(root, OPS_EXPORT_RUNS):
        rows = con.execute(
            f"""SELECT audience, destination, added, updated, removed, unchanged, eligible
                FROM {scan(root, OPS_EXPORT_RUNS)} WHERE as_of = ?
                QUALIFY row_number() OVER (PARTITION BY audience, destination ORDER BY finished_at DESC) = 1
                ORDER BY audience, destination""",
            [day],
        ).fetchall()
        for audience, dest, added, updated, removed, unchanged, eligible in rows:
            if dest.startswith("csv-"):
                path = settings.data_dir / "exports" / audience / f"{day}-{dest[4:]}.csv"
                where = path.relative_to(settings.data_dir) if path.exists() else "(file gone)"
                lines.append(f"{audience} → {dest}: {added:,} consenting customers in {where}")
            else:
                lines.append(
                    f"{audience} → {dest}: {eligible:,} eligible; {added:,} added, {updated:,} "
                    f"updated, {removed:,} removed, {unchanged:,} unchanged"
                )
    if table_exists(root, OPS_WAREHOUSE_SYNCS):
        rows = con.execute(
            f"""SELECT table_name, "rows", inserted, updated, deleted FROM {scan(root, OPS_WAREHOUSE_SYNCS)}
                WHERE as_of_date = ? QUALIFY row_number() OVER (PARTITION BY table_name
                ORDER BY synced_at DESC) = 1 ORDER BY table_name""",
            [dt.date.fromisoformat(day)],
        ).fetchall()
        sf = settings.activation.snowflake
        for t, n, ins, upd, dele in rows:
            lines.append(
                f"Snowflake {sf.database}.{sf.schema_name}.{t.split('.')[1].upper()}: {n:,} rows, "
                f"{ins:,} inserted, {upd:,} updated, {dele:,} deleted"
            )
    return "\n".join(lines)


def _serving_summary(settings, url: str) -> str:
    """The versions in the serving store, and one API call answered from the live one."""
    import asyncio

    from p13n.serving.api import Store
    from p13n.serving.publish import status
    from p13n.serving.tasks import format_status

    st = status(url, settings)
    lines = ["[bold]Serving store[/]", format_status(st)]
    if not st["live"]:
        return "\n".join(lines)

    async def sample() -> dict:
        store = Store(settings, url)
        # A look at the live version, not a storefront's view: no exposure is logged for it.
        store.api = store.api.model_copy(update={"log_exposures": False})
        from p13n.serving.experiments import assign_first

        seg = await store.segment("lifecycle.active", 1, 50)
        ids = seg["customer_ids"] if seg else []
        # Show a customer who gets the personalized list (not an experiment's popular control arm).
        personal = [
            c
            for c in ids
            if (a := assign_first(store.experiments, c, "personalized")) is None
            or a.list_type == "personalized"
        ]
        who = (personal or ids or ["unknown"])[0]
        out = await store.recommendations(who, "personalized", 3)
        await store.r.aclose()
        return out

    body = asyncio.run(sample())
    lines.append(
        f"GET /v1/customers/{body['customer_id']}/recommendations?k=3 → version {body['version']}, "
        f"arm {body['experiment']['arm'] if body['experiment'] else '-'}: "
        + "; ".join(f"{i['sku']} ({i['reason'] or i['source']})" for i in body["items"])
    )
    lines.append(
        "`p13n serve` starts the API on these data (embedded Redis, docs at http://127.0.0.1:8000/docs)"
    )
    return "\n".join(lines)


def _print_summary(console, settings, logical_date: str, log: Path) -> None:
    """Every table in the lake: version, files, rows, and who last wrote it."""
    from p13n.cli.lake import tables_view

    console.print(tables_view(settings, title=f"What the run wrote ({logical_date})"))
    root = settings.lake_root
    docs = settings.data_dir / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    report = settings.data_dir / "reports" / logical_date / "index.html"
    console.print(
        f"[bold]Where to look[/]\n  Run report:  {report}"
        + ("" if report.exists() else " (not written: run_report did not run)")
        + "\n"
        f"  Data Docs:   {docs}\n"
        "  Airflow UI:  make airflow → http://localhost:8080 (DAG runs, task logs, 'p13n run reports' in the "
        f"menu)\n  MLflow UI:   {sys.executable.rsplit('/', 1)[0]}/mlflow ui --backend-store-uri "
        f"{settings.mlflow_uri}\n"
        f"  SQL:         p13n sql customer_360 --limit 10  (sql/ holds the analysts' views)\n"
        f"  Lake:        {root}\n  Run log:     {log}",
        soft_wrap=True,
        highlight=False,
    )
