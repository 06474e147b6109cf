"""Airflow as production runs it: its components (API server, scheduler, DAG processor, triggerer) with
a process-per-task executor, driven through Airflow's REST API.

* `AirflowServices` starts the components in one process group and stops every process they started
  (the LocalExecutor's workers and their task processes included) on `stop()`, Ctrl-C or SIGTERM.
* `AirflowClient` is the few calls of Airflow's REST API p13n needs: unpause, trigger a date, list runs.
* `trigger_date` starts a DAG for a date as a *partition*: a new run every time, whether or not the
  date ran before (no logical date, so no "UNIQUE constraint failed" on a second run of a date); the
  partition key then flows down the asset chain (`p13n.orchestration.resolve_run_date`).
* `watch_chain` follows the nightly's DAG runs for a date to the run report, printing each run's state
  and time and the tasks' progress lines from their logs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from p13n.config import Settings, get_settings
from p13n.orchestration import PROGRESS_MARK, airflow_bin, airflow_env, source_slots, task_slots
from p13n.secrets import local_secret

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
# The nightly's DAGs in the order the assets chain them, from a date's ingestion to its run report.
CHAIN = (
    "ingest_sources",
    "resolve_identities",
    "score_customers",
    "recommend_products",
    "publish_serving",
    "export_audiences",
    "run_report",
)
ADMIN = "admin"


class AirflowError(RuntimeError):
    """Airflow is not reachable, or refused a request (the message says which and why)."""


def services_env(settings: Settings | None = None, port: int | None = None, base: dict | None = None) -> dict:
    """The environment of every Airflow component: the project's Airflow environment, a LocalExecutor
    (each task in its own process, as production runs them) sized to the machine, the API server's
    port, and one JWT secret the components share."""
    settings = settings or get_settings()
    a = settings.airflow
    env = airflow_env(settings, base)
    port = port or a.api_port
    per_dag = task_slots(settings)
    parallelism = max(per_dag, source_slots(settings))  # ingest_sources' own limit is its DAG's
    env.update(
        {
            "AIRFLOW__CORE__EXECUTOR": a.executor,
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(per_dag),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",  # user:role
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            # A task's supervisor waits on its sockets up to this long between looks at the process:
            # when a task closes them just before it exits (every task does), one supervisor in five
            # found it still alive and slept the whole interval with nothing left to wait on, holding
            # the executor's slot (Airflow 3.3.2; 23 of make run's 127 tasks took 5 s longer). The
            # heartbeat, sent at most this often, is a small PUT to the API server.
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        }
    )
    env.setdefault("AIRFLOW__API_AUTH__JWT_SECRET", local_secret(settings, "airflow-jwt.key"))
    env.setdefault("AIRFLOW__API__SECRET_KEY", local_secret(settings, "airflow-api.key"))
    return env


@dataclass
class AirflowServices:
    """The Airflow components in one process group, their output in `<logs>/airflow-<component>.log`."""

    env: dict
    log_dir: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    pgid: int | None = None

    @property
    def url(self) -> str:
        return self.env["AIRFLOW__API__BASE_URL"]

    def start(self, timeout: float = 180.0, say=print) -> AirflowServices:
        from p13n.runner import ensure_airflow_db

        self.log_dir.mkdir(parents=True, exist_ok=True)
        ensure_airflow_db(self.env, self.log_dir / "airflow-db.log")
        for name in COMPONENTS:
            out = open(self.log_dir / f"airflow-{name}.log", "ab")  # noqa: SIM115 (the child keeps it)
            proc = subprocess.Popen(
                [airflow_bin(), name],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # The first component leads a new process group; the others join it, so one signal
                # reaches all of them and everything they fork.
                process_group=0 if self.pgid is None else self.pgid,
            )
            out.close()
            self.pgid = self.pgid or proc.pid
            self.procs[name] = proc
        try:
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        if passwords_file(self.env).exists():  # Airflow writes it world-readable
            os.chmod(passwords_file(self.env), 0o600)
        say(
            f"Airflow on {self.url}: {', '.join(COMPONENTS)}; {self.env['AIRFLOW__CORE__EXECUTOR']} "
            f"({self.env['AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG']} tasks of a DAG at once, "
            f"{self.env['AIRFLOW__CORE__PARALLELISM']} in all); logs in {self.log_dir}"
        )
        return self

    def wait_healthy(self, timeout: float) -> None:
        deadline, last = time.monotonic() + timeout, "no answer"
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    tail = (self.log_dir / f"airflow-{name}.log").read_text(errors="replace")[-1500:]
                    raise AirflowError(f"airflow {name} exited with code {proc.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=2) as resp:
                    health = json.loads(resp.read())
                states = {k: (v or {}).get("status") for k, v in health.items()}
                if all(
                    s == "healthy"
                    for k, s in states.items()
                    if k in ("metadatabase", "scheduler", "triggerer", "dag_processor")
                ):
                    return
                last = str(states)
            except (OSError, ValueError) as exc:
                last = str(exc)
            time.sleep(1)
        raise AirflowError(f"Airflow was not healthy within {timeout:.0f}s: {last}")

    def processes(self) -> list:
        """Every live process the components started (their whole trees)."""
        import psutil

        found = {}
        for proc in self.procs.values():
            try:
                parent = psutil.Process(proc.pid)
                found[parent.pid] = parent
                found.update({c.pid: c for c in parent.children(recursive=True)})
            except psutil.NoSuchProcess:
                continue
        return [p for p in found.values() if p.is_running()]

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the group and to every descendant (a task process may have left the group),
        then SIGKILL to whatever is left after `timeout`."""
        import psutil

        if self.pgid is None:
            return
        tree = self.processes()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGTERM)
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.terminate()
        _, alive = psutil.wait_procs(tree, timeout=timeout)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGKILL)
        for proc in self.procs.values():
            proc.wait()
        self.pgid = None

    def __enter__(self) -> AirflowServices:
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()


def slot_overruns(scheduler_log: Path) -> dict[str, float]:
    """Per task instance (its id): the seconds its executor slot stayed taken after the task finished,
    read from the scheduler's log (the supervisor's "Workload finished" duration less the task's own
    `run_duration`). Near 0 unless a supervisor waits on a task that is done."""
    text = scheduler_log.read_text(errors="replace") if scheduler_log.exists() else ""
    workload = {
        m[2].replace("-", ""): float(m[1])
        for m in re.finditer(r"Workload finished .*?duration=([\d.]+).*?workload_id=([0-9a-f-]+)", text)
    }
    ran = {
        m[1].replace("-", ""): float(m[2])
        for m in re.finditer(r"TaskInstance Finished: .*?ti_id=([0-9a-f-]+),.*?run_duration=([\d.]+)", text)
    }
    return {ti: round(workload[ti] - ran[ti], 3) for ti in workload.keys() & ran.keys()}


def serve_forever(settings: Settings | None = None) -> int:
    """`make airflow`: Airflow's components with the services the DAGs use locally (a Spark Connect
    server, the embedded Redis and Kafka broker, as `p13n run` starts them) until Ctrl-C or SIGTERM,
    which stop every process they started."""
    from p13n.runner import ensure_airflow_db, local_services, scheduled_airflow

    settings = settings or get_settings()
    stopping: list[int] = []

    def _stop(signum, _frame):
        stopping.append(signum)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    env = airflow_env(settings)
    ensure_airflow_db(env, settings.logs_dir / "airflow-db.log")
    with (
        local_services(settings, env, print),
        scheduled_airflow(settings, env, print, settings.logs_dir) as api,
    ):
        print(
            f"Airflow UI: {api.url} (user {api.username}, password in {passwords_file(env)}); "
            "trigger a date: p13n trigger ingest_sources --date YYYY-MM-DD; Ctrl-C stops everything",
            flush=True,
        )
        while not stopping:
            time.sleep(1)
        print("stopping Airflow and the services…", flush=True)
    print("every process stopped", flush=True)
    return 0


class AirflowClient:
    """The calls of Airflow's REST API (v2) p13n makes, with the simple auth manager's token."""

    def __init__(self, url: str, username: str = ADMIN, password: str = "admin", timeout: float = 30.0):
        self.url, self.username, self.password, self.timeout = url.rstrip("/"), username, password, timeout
        self._token: str | None = None

    def _request(self, method: str, path: str, body: dict | None = None, auth: bool = True):
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise AirflowError(f"Airflow answered {exc.code} to {method} {path}: {detail}") from None
        except OSError as exc:
            raise AirflowError(
                f"Airflow is not reachable at {self.url} ({exc}); start it with `make airflow`"
            ) from None
        return json.loads(raw) if raw else None

    def token(self) -> str:
        if self._token is None:
            answer = self._request(
                "POST", "/auth/token", {"username": self.username, "password": self.password}, auth=False
            )
            self._token = answer["access_token"]
        return self._token

    def dag_ids(self) -> set[str]:
        return {d["dag_id"] for d in self._request("GET", "/api/v2/dags?limit=1000")["dags"]}

    def unpause(self, dag_id: str) -> None:
        self._request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def pause(self, dag_id: str) -> None:
        self._request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": True})

    def is_paused(self, dag_id: str) -> bool:
        return bool(self._request("GET", f"/api/v2/dags/{dag_id}")["is_paused"])

    def trigger(
        self,
        dag_id: str,
        partition_key: str | None,
        run_id: str,
        conf: dict | None = None,
        run_after: str | None = None,
    ) -> dict:
        body = {
            "dag_run_id": run_id,
            "logical_date": None,
            "partition_key": partition_key,
            "conf": conf or {},
        }
        if run_after:
            body["run_after"] = run_after
        return self._request("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)

    def runs(self, dag_id: str, limit: int = 100) -> list[dict]:
        return self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns?order_by=-run_after&limit={limit}")[
            "dag_runs"
        ]

    def delete_run(self, dag_id: str, run_id: str) -> None:
        self._request("DELETE", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=1000")[
            "task_instances"
        ]


def passwords_file(env: dict) -> Path:
    """Where Airflow's simple auth manager keeps the generated password of each user (owner-only)."""
    return Path(
        env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
        or Path(env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"
    )


def client(settings: Settings | None = None, env: dict | None = None) -> AirflowClient:
    """A client of the local Airflow (`make airflow`, `p13n run`: the admin password Airflow generated),
    or of `P13N_AIRFLOW_URL` with `P13N_AIRFLOW_USER` / `P13N_AIRFLOW_PASSWORD` for a deployed one."""
    env = env or services_env(settings)
    url = os.environ.get("P13N_AIRFLOW_URL") or env["AIRFLOW__API__BASE_URL"]
    user = os.environ.get("P13N_AIRFLOW_USER", ADMIN)
    password = os.environ.get("P13N_AIRFLOW_PASSWORD")
    if password is None:
        try:
            password = json.loads(passwords_file(env).read_text())[user]
        except (OSError, ValueError, KeyError):
            raise AirflowError(
                f"no password for {user} in {passwords_file(env)}: is Airflow running (make airflow)?"
            ) from None
    return AirflowClient(url, user, password)


def _check_date(day: str) -> str:
    try:
        return dt.date.fromisoformat(day).isoformat()
    except ValueError:
        raise AirflowError(f"{day!r} is not a date (YYYY-MM-DD)") from None


def trigger_date(api: AirflowClient, dag_id: str, day: str, unpause: bool = True) -> dict:
    """A new run of `dag_id` for the date `day`, whatever ran before for that date: the date is the
    run's partition key for the nightly's partitioned DAGs (the chain carries it down), and
    `conf["date"]` for the others (cron DAGs such as stream_events and lake_maintenance)."""
    day = _check_date(day)
    if dag_id not in (known := api.dag_ids()):
        raise AirflowError(f"no DAG {dag_id!r} in Airflow (it has: {', '.join(sorted(known)) or 'none yet'})")
    run_id = f"manual__{day}__{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%f}"
    if dag_id in CHAIN:
        run = api.trigger(dag_id, day, run_id)
    else:
        # A cron DAG's unpause queues its latest scheduled run too; queued runs start in `run_after`
        # order, so this one, "after" the end of its date, goes first.
        run = api.trigger(dag_id, None, run_id, conf={"date": day}, run_after=f"{day}T23:59:59Z")
    if unpause:
        for dag in CHAIN if dag_id in CHAIN else (dag_id,):
            api.unpause(dag)
    return run


def drop_wall_clock_runs(api: AirflowClient, dag_id: str, since: dt.datetime) -> tuple[list[str], list[str]]:
    """After a replayed date's run of a cron DAG (paused again): the scheduled runs its unpause let the
    scheduler create since `since` (a tick passing meanwhile). Those still queued are deleted, so
    they never run on the wall clock's date against a lake of other dates; returns (deleted, the ones
    that started anyway)."""
    deleted, started = [], []
    for run in api.runs(dag_id):
        queued = run.get("queued_at")
        if run.get("run_type") != "scheduled" or not queued or dt.datetime.fromisoformat(queued) < since:
            continue
        if run.get("state") == "queued":
            api.delete_run(dag_id, run["dag_run_id"])
            deleted.append(run["dag_run_id"])
        else:
            started.append(run["dag_run_id"])
    return deleted, started


def wait_for_dags(api: AirflowClient, dag_ids, timeout: float = 180.0) -> None:
    """Wait until the DAG processor has parsed `dag_ids` into the metadata database."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not (missing := set(dag_ids) - api.dag_ids()):
            return
        time.sleep(2)
    raise AirflowError(f"DAGs not parsed within {timeout:.0f}s: {sorted(missing)}")


_TERMINAL = {"success", "failed"}


@dataclass
class ChainRun:
    dag_id: str
    run_id: str
    state: str
    seconds: float


def _progress_lines(log_root: Path, dag_id: str, run_id: str, seen: dict) -> list[str]:
    """New p13n progress lines in the task logs of one DAG run (JSON or plain lines)."""
    out = []
    folder = log_root / f"dag_id={dag_id}" / f"run_id={run_id}"
    for path in sorted(folder.glob("task_id=*/**/*.log")) if folder.exists() else []:
        with path.open(errors="replace") as handle:
            handle.seek(seen.get(path, 0))
            chunk = handle.read()
            seen[path] = handle.tell()
        for line in chunk.splitlines():
            if PROGRESS_MARK not in line:
                continue
            text = line
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    text = json.loads(line).get("event", line)
            out.append(text.split(PROGRESS_MARK, 1)[1].strip().rstrip('"'))
    return out


def wait_for_run(
    api: AirflowClient,
    dag_id: str,
    run_id: str,
    timeout: float = 1800.0,
    echo=print,
    log_root: Path | None = None,
) -> ChainRun:
    """Follow one run until it ends, echoing its tasks' progress lines."""
    seen: dict = {}
    deadline, started = time.monotonic() + timeout, time.monotonic()
    while time.monotonic() < deadline:
        run = next((r for r in api.runs(dag_id) if r["dag_run_id"] == run_id), None)
        if log_root is not None:
            for line in _progress_lines(log_root, dag_id, run_id, seen):
                echo("  " + line)
        if run is not None and run["state"] in _TERMINAL:
            seconds = _run_seconds(run) or time.monotonic() - started
            return ChainRun(dag_id, run_id, run["state"], round(seconds, 1))
        time.sleep(2)
    raise AirflowError(f"{dag_id} run {run_id} did not finish within {timeout:.0f}s")


def watch_chain(
    api: AirflowClient,
    day: str,
    since: dt.datetime,
    dags=CHAIN,
    timeout: float = 3600.0,
    echo=print,
    log_root: Path | None = None,
    stop_on_failure: bool = True,
) -> list[ChainRun]:
    """Follow the runs of `dags` for the date `day` (its partition key) created after `since`, in chain
    order, until each one ends; stop at the first that fails (unless `stop_on_failure` is False: a DAG
    whose run failed may still have announced the assets the next one waits for). Returns the runs."""
    results, seen = [], {}
    deadline = time.monotonic() + timeout
    for dag_id in dags:
        run, started, shown = None, time.monotonic(), None
        while time.monotonic() < deadline:
            if run is None:
                for r in api.runs(dag_id):
                    after = dt.datetime.fromisoformat(r["run_after"].replace("Z", "+00:00"))
                    if r.get("partition_key") == day and after >= since:
                        run = r
                        break
            else:
                run = next((r for r in api.runs(dag_id) if r["dag_run_id"] == run["dag_run_id"]), run)
            if run is not None:
                if run["state"] != shown:
                    echo(f"DAG {dag_id} {day}: {run['state']}  (run {run['dag_run_id']})")
                    shown = run["state"]
                if log_root is not None:
                    for line in _progress_lines(log_root, dag_id, run["dag_run_id"], seen):
                        echo("  " + line)
                if run["state"] in _TERMINAL:
                    break
            time.sleep(2)
        else:
            raise AirflowError(f"{dag_id} {day} did not finish within {timeout:.0f}s")
        seconds = _run_seconds(run) or time.monotonic() - started
        results.append(ChainRun(dag_id, run["dag_run_id"], run["state"], round(seconds, 1)))
        echo(f"DAG {dag_id} {day}: {run['state']} in {seconds:.0f}s")
        if run["state"] != "success" and stop_on_failure:
            break
    return results


def _run_seconds(run: dict) -> float | None:
    if not run.get("start_date") or not run.get("end_date"):
        return None
    start, end = (
        dt.datetime.fromisoformat(run[k].replace("Z", "+00:00")) for k in ("start_date", "end_date")
    )
    return (end - start).total_seconds()


def failed_tasks(api: AirflowClient, dag_id: str, run_id: str) -> list[str]:
    return sorted(
        t["task_id"] + (f"[{t['map_index']}]" if t.get("map_index", -1) >= 0 else "")
        for t in api.task_instances(dag_id, run_id)
        if t["state"] in ("failed", "upstream_failed")
    )


_DUPLICATE = re.compile(
    r"UNIQUE constraint failed: dag_run\.dag_id, dag_run\.logical_date|DagRunAlreadyExists|"
    r"duplicate key value violates unique constraint \"dag_run_dag_id_logical_date"
)


def is_duplicate_run_error(text: str) -> bool:
    """Airflow's raw error for a second run of one logical date (SQLite's or PostgreSQL's wording)."""
    return bool(_DUPLICATE.search(text))
