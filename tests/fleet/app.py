"""The application real gunicorn and uvicorn workers serve in the multi-process tests.

Each worker opens its own engine (no ``--preload``), named in PostgreSQL after the worker's pid
(``<FLEET_APPLICATION>-<pid>``) so a test can count every worker's server sessions; ``/work`` checks
out one connection and answers the worker's pid; ``/metrics`` is poolwatch's endpoint.
``FLEET_WARM_UP`` checks one out at import (what breaks under ``--preload``).
"""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

import poolwatch

ENGINE = sqlalchemy.create_engine(
    os.environ["FLEET_DATABASE_URL"],
    pool_size=2,
    max_overflow=1,
    connect_args={"application_name": f"{os.environ['FLEET_APPLICATION']}-{os.getpid()}"},
)
poolwatch.instrument(ENGINE, name="app")
if os.environ.get("FLEET_WARM_UP"):  # a connection opened at import: in gunicorn's master with --preload
    with ENGINE.connect():
        pass


def work() -> int:
    with ENGINE.connect() as connection:
        connection.execute(sqlalchemy.text("SELECT 1"))
    return os.getpid()


_metrics_wsgi = poolwatch.make_wsgi_app()


def wsgi(environ: dict[str, Any], start_response: Any) -> Any:
    if environ["PATH_INFO"] == "/metrics":
        return _metrics_wsgi(environ, start_response)
    pid = work()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(pid).encode()]


def _work(_request: Any) -> PlainTextResponse:  # sync: Starlette runs it in its thread pool
    return PlainTextResponse(str(work()))


asgi = Starlette(routes=[Route("/work", _work), Mount("/metrics", poolwatch.make_asgi_app())])
