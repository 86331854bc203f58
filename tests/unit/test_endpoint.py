"""poolwatch.make_wsgi_app() / make_asgi_app(): the process's registry in one process, every worker's
files with PROMETHEUS_MULTIPROC_DIR set."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import sqlalchemy
from prometheus_client import CollectorRegistry

import poolwatch
from poolwatch.endpoint import metrics_registry
from poolwatch.instrument.multiprocess import file_values
from poolwatch.instrument.slots import Slot
from poolwatch.metrics import POOL_METRICS, Rows

if TYPE_CHECKING:
    from pathlib import Path

    import pytest


def serve(app: Any) -> tuple[str, str]:
    statuses: list[str] = []
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": "", "HTTP_ACCEPT": ""}
    body = b"".join(app(environ, lambda status, _headers: statuses.append(status)))
    return statuses[0], body.decode()


def test_one_process_serves_its_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    registry = CollectorRegistry()
    engine = sqlalchemy.create_engine("sqlite://", poolclass=sqlalchemy.pool.QueuePool)
    poolwatch.instrument(engine, name="single", registry=registry)
    with engine.connect():
        pass
    assert metrics_registry(registry) is registry
    status, body = serve(poolwatch.make_wsgi_app(registry))
    assert status.startswith("200")
    assert re.search(r'^poolwatch_pool_checkouts_total\{pool="single",[^}]*\} 1\.0$', body, re.MULTILINE), (
        body
    )


def test_several_processes_serve_every_workers_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    checkouts = next(spec for spec in POOL_METRICS if spec.name == "pool_checkouts")
    for count in (4, 5):
        slot = Slot.take(tmp_path)
        slot.write("counter", file_values([Rows(checkouts, [(("fleet", "db"), count)])])["counter"])
    registry = CollectorRegistry()  # not served in this mode, as in prometheus_client's recipe
    assert metrics_registry(registry) is not registry
    status, body = serve(poolwatch.make_wsgi_app(registry))
    assert status.startswith("200")
    assert re.search(r'^poolwatch_pool_checkouts_total\{pool="fleet",[^}]*\} 9\.0$', body, re.MULTILINE), body
    assert callable(poolwatch.make_asgi_app())
