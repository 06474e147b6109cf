"""Airflow plugin `p13n`: serves the run reports at /p13n/reports and links them from the UI.

Registered through the `airflow.plugins` entry point (setup.cfg), so any Airflow that has p13n
installed shows a "p13n run reports" link in its navigation and a "Run report" tab on DAG runs.
"""

from __future__ import annotations

from pathlib import Path

from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, RedirectResponse

PREFIX = "/p13n"


def reports_dir() -> Path:
    from p13n.config import get_settings

    return get_settings().data_dir / "reports"


def create_app(folder: Path | None = None) -> FastAPI:
    app = FastAPI(title="p13n run reports")

    def root() -> Path:
        return folder or reports_dir()

    @app.get("/reports/")
    def index():
        path = root() / "index.html"
        if not path.exists():
            raise HTTPException(
                404, "no run report yet: the run_report DAG writes one at the end of each nightly"
            )
        return FileResponse(path, media_type="text/html")

    @app.get("/reports/latest")
    def latest():
        days = sorted(p.parent.name for p in root().glob("*/index.html"))
        if not days:
            raise HTTPException(404, "no run report yet")
        return RedirectResponse(f"{PREFIX}/reports/{days[-1]}/index.html")

    @app.get("/reports/{day}/index.html")
    def report(day: str):
        import datetime as dt

        try:
            dt.date.fromisoformat(day)  # also keeps the path inside the folder
        except ValueError:
            raise HTTPException(404, f"{day!r} is not a date") from None
        path = root() / day / "index.html"
        if not path.exists():
            raise HTTPException(404, f"no run report for {day}")
        return FileResponse(path, media_type="text/html")

    return app


class P13nPlugin(AirflowPlugin):
    name = "p13n"
    fastapi_apps = [{"app": create_app(), "url_prefix": PREFIX, "name": "p13n run reports"}]
    external_views = [
        {
            "name": "p13n run reports",
            "href": f"{PREFIX}/reports/",
            "destination": "nav",
            "url_route": "p13n-reports",
        },
        {"name": "Run report", "href": f"{PREFIX}/reports/latest", "destination": "dag"},
    ]
