"""Task bodies of the publish DAG and the `p13n serving` / `p13n serve` commands: a few lines each."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys

from p13n.config import Settings, get_settings
from p13n.lake.tables import OPS_PUBLISH_RUNS
from p13n.orchestration import progress


def publish_task(ds: str) -> dict:
    """The DAG's publish: a refusal on the data fails the task without retries (rerunning cannot help)."""
    from p13n.serving.publish import PublishError

    try:
        return publish_date(ds)
    except PublishError as exc:
        if exc.retryable:
            raise
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(str(exc)) from None


def publish_date(ds: str, force: bool = False) -> dict:
    """Publish the date's gold tables to the serving store and make them live (see `publish.publish`)."""
    from p13n.services.redis import redis_for
    from p13n.serving.publish import publish

    settings = get_settings()
    with redis_for(settings) as url:
        out = publish(settings, url, dt.date.fromisoformat(ds), force=force, progress=progress)
    progress(out.summary())
    record_publish(settings, out)
    return {
        "version": out.version,
        "previous": out.previous,
        "keys": out.total_keys,
        "bytes": out.bytes,
        "seconds": {k: round(v, 2) for k, v in out.seconds.items()},
    }


def record_publish(settings: Settings, out) -> None:
    """One row per publish in `ops.publish_runs` (the run report's publish section reads it)."""
    import pyarrow as pa

    from p13n.lake.duck import append_rows

    schema = pa.schema(
        [
            ("as_of_date", pa.date32()),
            ("version", pa.string()),
            ("previous", pa.string()),
            ("keys", pa.int64()),
            ("keys_by_kind", pa.string()),
            ("bytes", pa.int64()),
            ("seconds", pa.float64()),
            ("forced", pa.bool_()),
            ("published_at", pa.timestamp("us")),
        ]
    )
    append_rows(
        settings,
        OPS_PUBLISH_RUNS,
        [
            {
                "as_of_date": out.as_of,
                "version": out.version,
                "previous": out.previous,
                "keys": out.total_keys,
                "keys_by_kind": json.dumps(out.keys, sort_keys=True),
                "bytes": out.bytes,
                "seconds": round(sum(out.seconds.values()), 2),
                "forced": out.forced,
                "published_at": dt.datetime.now(dt.UTC).replace(tzinfo=None),
            }
        ],
        schema,
    )


def serving_command(
    action: str, *, date: str | None = None, force: bool = False, to: str | None = None, as_json: bool = False
) -> int:
    from p13n.services.redis import redis_for
    from p13n.serving.publish import PublishError, rollback, status

    settings = get_settings()
    try:
        if action == "publish":
            publish_date(date, force=force)
            return 0
        with redis_for(settings) as url:
            if action == "rollback":
                previous, now = rollback(url, settings, to)
                print(f"rolled back: {now} is live (was {previous})")
            else:
                st = status(url, settings)
                print(json.dumps(st, indent=2) if as_json else format_status(st))
        return 0
    except PublishError as exc:
        print(f"p13n serving {action}: {exc}", file=sys.stderr)
        return 1


def format_status(st: dict) -> str:
    lines = [f"live version: {st['live'] or 'none'}   Redis memory: {st['used_memory']}"]
    if st["lock"]:
        lines.append(f"a publish is running: {st['lock']}")
    lines.append(f"{'version':<14}{'status':<11}{'as of':<12}{'created':<27}{'keys':>10}{'MB':>8}  seconds")
    for v in st["versions"]:
        keys = sum(json.loads(v.get("keys", "{}")).values())
        mb = int(v.get("bytes", 0)) / 1e6
        secs = json.loads(v.get("seconds", "{}")).get("total", "")
        mark = " ◀ live" if v["version"] == st["live"] else ""
        lines.append(
            f"{v['version']:<14}{v.get('status', '?'):<11}{v.get('as_of_date', ''):<12}"
            f"{v.get('created_at', ''):<27}{keys:>10,}{mb:>8.1f}  {secs}{mark}"
        )
    return "\n".join(lines)


def serve(
    settings: Settings | None = None,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
) -> int:
    """Start the API with uvicorn (and the embedded Redis when no `serving.redis_url` is set)."""
    import uvicorn

    from p13n.services.redis import redis_for

    settings = settings or get_settings()
    api = settings.serving.api
    with redis_for(settings) as url:
        # Workers are separate processes: they read the URL from the environment.
        os.environ["P13N__SERVING__REDIS_URL"] = url
        print(
            f"p13n API on http://{host or api.host}:{port or api.port} (docs at /docs), Redis at "
            f"{_masked(url)}",
            flush=True,
        )
        if api.auth:
            from p13n.serving.auth import client_keys

            for name in client_keys(settings):
                c = api.clients[name]
                where = (
                    "from $" + c.key_env
                    if os.environ.get(c.key_env)
                    else f"in {settings.data_dir / 'secrets'}/api-{name}.key"
                )
                print(
                    f"  client {name} ({', '.join(c.scopes)}): key {where}; send it as X-API-Key", flush=True
                )
        uvicorn.run(
            "p13n.serving.api:create_app",
            factory=True,
            host=host or api.host,
            port=port or api.port,
            workers=workers or api.workers,
            log_level="warning",
            access_log=False,
        )
    return 0


def _masked(url: str) -> str:
    """A Redis URL without its password, for logs."""
    from p13n.config import mask

    return mask(url)
