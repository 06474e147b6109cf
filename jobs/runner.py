"""`p13n run`: the pipeline's DAGs run through Airflow (`airflow dags test`), with progress and a summary."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

from p13n.config import get_settings
from p13n.orchestration import PROGRESS_MARK, airflow_env

# The DAGs `p13n run` executes, in order.
PIPELINE = ["lake_maintenance"]


def _airflow_bin() -> str:
    return str(Path(sys.executable).parent / "airflow")


def ensure_airflow_db(env: dict[str, str], log: Path) -> None:
    """Create or upgrade Airflow's metadata database once per Airflow version (SQLite locally)."""
    import importlib.metadata

    stamp = Path(env["AIRFLOW_HOME"]) / f".p13n-db-{importlib.metadata.version('apache-airflow')}"
    if stamp.exists():
        return
    with log.open("a") as out:
        subprocess.run(
            [_airflow_bin(), "db", "migrate"], env=env, stdout=out, stderr=subprocess.STDOUT, check=True
        )
    stamp.touch()


def run_dag(dag_id: str, logical_date: str, env: dict[str, str], log: Path, echo=print) -> tuple[bool, float]:
    """Run one DAG with `airflow dags test`, echoing p13n progress lines; returns (succeeded, seconds)."""
    start = time.monotonic()
    failed_task = False
    with log.open("a") as out:
        out.write(f"\n===== airflow dags test {dag_id} {logical_date}\n")
        proc = subprocess.Popen(
            [_airflow_bin(), "dags", "test", dag_id, logical_date],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if PROGRESS_MARK in line:
                echo("  " + line.split(PROGRESS_MARK, 1)[1].strip())
            if "new_state=failed" in line or "Marking task as FAILED" in line:
                failed_task = True
        code = proc.wait()
    return code == 0 and not failed_task, time.monotonic() - start


def run_pipeline(logical_date: str | None = None) -> int:
    from rich.console import Console

    console = Console()
    settings = get_settings()
    logical_date = logical_date or dt.datetime.now(dt.UTC).date().isoformat()
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    log = settings.logs_dir / f"run-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}.log"
    env = airflow_env(settings)
    console.print(f"[bold]p13n run[/] {logical_date}  env={settings.env}  data={settings.data_dir}")
    with console.status("preparing Airflow (metadata database)…"):
        ensure_airflow_db(env, log)
    for dag_id in PIPELINE:
        console.print(f"[cyan]DAG {dag_id}[/]")
        ok, seconds = run_dag(dag_id, logical_date, env, log, echo=console.print)
        if not ok:
            console.print(f"[red]DAG {dag_id} failed after {seconds:.0f}s[/]; full log: {log}")
            _print_tail(console, log)
            return 1
        console.print(f"  [green]done[/] in {seconds:.0f}s")
    _print_summary(console, settings, logical_date, log)
    return 0


def _print_tail(console, log: Path, lines: int = 25) -> None:
    tail = log.read_text(errors="replace").splitlines()[-lines:]
    console.print("\n".join(tail), markup=False, highlight=False)


def _print_summary(console, settings, logical_date: str, log: Path) -> None:
    import pyarrow as pa
    from deltalake import DeltaTable
    from rich.table import Table

    from p13n.lake.tables import LAYERS

    table = Table(title=f"What the run wrote ({logical_date})")
    for col in ("table", "version", "files", "rows", "last operation"):
        table.add_column(col)
    root = Path(settings.lake_root)
    for layer in LAYERS:
        for path in sorted((root / layer).glob("*/_delta_log")):
            dt_ = DeltaTable(str(path.parent))
            rows = pa.table(dt_.get_add_actions(flatten=True)).column("num_records").to_pylist()
            last = dt_.history(1)[0]
            table.add_row(
                f"{layer}.{path.parent.name}",
                str(dt_.version()),
                str(len(rows)),
                f"{sum(r or 0 for r in rows):,}",
                f"{last.get('operation')} by {last.get('p13n.dag_id', '?')}",
            )
    console.print(table)
    console.print(f"Lake: {root}\nRun log: {log}\nAirflow UI: make airflow (http://localhost:8080)")
