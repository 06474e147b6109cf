"""`python -m p13n.dagbatch`: one long-lived process running `airflow dags test` for DAG after DAG.

`p13n run` and `p13n backfill` run a dozen DAGs a night. A new `airflow dags test` process per DAG
pays Airflow's start-up, the DAG bag's parse and a new Spark driver every time; here they are paid
once. Each run is exactly what `airflow dags test DAG DATE` does (the same CLI function, tasks
in-process, a DAG run recorded in the metadata database).

Protocol (one JSON object per line): the parent writes `{"dag": ..., "date": ..., "env": {...}}` on
stdin (`env`: variables set for this run only); the child runs it, its output going to stdout as
usual, then prints `DONE_MARK` followed by `{"dag", "date", "ok", "seconds", "pid", "error"}`.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

DONE_MARK = "@@p13n-dag-done "


def run_one(parser, request: dict) -> dict:
    overrides = request.get("env") or {}
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    start, ok, error = time.monotonic(), True, None
    try:
        args = parser.parse_args(["dags", "test", request["dag"], request["date"]])
        args.func(args)
    except SystemExit as exc:  # `dags test` exits with "DagRun failed" when the run failed
        ok = exc.code in (None, 0)
        error = None if ok else str(exc.code)
    except Exception as exc:  # a DAG that cannot be parsed or run: reported, the process carries on
        traceback.print_exc()
        ok, error = False, f"{type(exc).__name__}: {exc}"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {
        "dag": request["dag"],
        "date": request["date"],
        "ok": ok,
        "seconds": round(time.monotonic() - start, 2),
        "pid": os.getpid(),
        "error": error,
    }


def main() -> int:
    from airflow.cli import cli_parser

    parser = cli_parser.get_parser()
    for line in sys.stdin:
        if not line.strip():
            continue
        result = run_one(parser, json.loads(line))
        sys.stdout.flush()
        sys.stderr.flush()
        print(DONE_MARK + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
