"""Bounded job calls, log redaction, the HTTP endpoint and error classification. No servers."""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import threading
from typing import Any

import bcrypt
import pytest
import redis.exceptions as redis_exc
import sqlalchemy.exc as sa_exc
from prometheus_client import CollectorRegistry, Counter

from poolwatch.errors import (
    CallTimeoutError,
    PoolExhaustedError,
    QueryFailedError,
    reason_of,
    translate,
)
from poolwatch.http import Endpoint
from poolwatch.jobs import BoundedCall, Outcome, run_job
from poolwatch.logs import JsonFormatter, RedactingFilter
from tests.daemonkit import wait_for
from tests.statusdocs import document


class Job:
    task, target, interval, timeout = "probe", "t", 1.0, 0.2

    def __init__(self, body: Any) -> None:
        self.body = body

    def run(self) -> None:
        self.body()

    def record(self, outcome: Outcome) -> None:  # pragma: no cover - not called by run_job
        raise AssertionError


def test_bounded_call_returns_what_the_function_raises() -> None:
    def fail() -> None:
        raise KeyError("x")

    outcome = run_job(Job(fail), BoundedCall("t"))
    assert isinstance(outcome.error, KeyError)
    assert not outcome.skipped


def test_bounded_call_times_out_then_skips_while_the_hung_run_continues() -> None:
    release = threading.Event()
    call = BoundedCall("t")
    first = run_job(Job(release.wait), call)
    assert isinstance(first.error, CallTimeoutError)
    assert call.busy
    second = run_job(Job(lambda: None), call)  # not started: the first still hangs
    assert second.skipped
    assert isinstance(second.error, CallTimeoutError)
    release.set()
    wait_for(lambda: not call.busy, what="the released run to end")
    third = run_job(Job(lambda: None), call)
    assert third.ok
    assert not third.skipped


def test_redacting_filter_masks_secrets_where_they_stand_and_distinctive_ones_anywhere() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter(["p@ss word", "other"]))
    logger = logging.getLogger("test.redact")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)  # independent of what other tests left on the root logger
    try:
        logger.warning("url postgresql://u:%s@h/db and %s", "p%40ss%20word", "p@ss word")
        logger.warning("dsn host=h password=other; redis://:other@cache:6379/0")
        try:
            raise RuntimeError("boom other")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "p@ss word" not in text
    assert "p%40ss%20word" not in text
    assert "password=***;" in text
    assert "redis://:***@cache" in text
    # "other" is a word: outside a URL or a password= pair it is left alone.
    assert "RuntimeError: boom other" in text


def test_json_formatter_writes_one_object_per_line() -> None:
    record = logging.makeLogRecord(
        {"msg": "hello %s", "args": ("x",), "levelname": "INFO", "name": "poolwatch", "target": "orders"}
    )
    data = json.loads(JsonFormatter().format(record))
    assert data["message"] == "hello x"
    assert data["target"] == "orders"


def call(
    app: Endpoint, path: str, method: str = "GET", auth: str | None = None
) -> tuple[str, dict[str, str], bytes]:
    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": method, "QUERY_STRING": ""}
    if auth:
        environ["HTTP_AUTHORIZATION"] = auth
    result: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        result["status"], result["headers"] = status, dict(headers)

    body = b"".join(app(environ, start_response))
    return result["status"], result["headers"], body


def endpoint(**kwargs: Any) -> Endpoint:
    registry = CollectorRegistry()
    Counter("things", "Things.", registry=registry).inc()
    return Endpoint(registry, healthy=lambda: True, ready=lambda: False, status=document, **kwargs)


def test_endpoint_routes_and_refuses_unknown_paths_and_methods() -> None:
    app = endpoint()
    assert call(app, "/metrics")[0] == "200 OK"
    assert b"things_total 1.0" in call(app, "/metrics")[2]
    assert call(app, "/healthz")[0] == "200 OK"
    assert call(app, "/readyz")[0] == "503 Service Unavailable"
    assert call(app, "/nope")[0] == "404 Not Found"
    status, headers, _ = call(app, "/metrics", method="POST")
    assert status == "405 Method Not Allowed"
    assert headers["Allow"] == "GET, HEAD"


def test_basic_auth_accepts_the_bcrypt_password_only() -> None:
    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=4))
    app = endpoint(basic_auth_users={"prom": hashed})

    def basic(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    assert call(app, "/metrics")[0] == "401 Unauthorized"
    assert call(app, "/metrics", auth=basic("prom", "wrong"))[0] == "401 Unauthorized"
    assert call(app, "/metrics", auth=basic("other", "right"))[0] == "401 Unauthorized"
    assert call(app, "/metrics", auth="Basic !!!")[0] == "401 Unauthorized"
    assert call(app, "/metrics", auth=basic("prom", "right"))[0] == "200 OK"
    assert call(app, "/metrics", auth=basic("prom", "right"))[0] == "200 OK"  # cached path


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (sa_exc.TimeoutError("QueuePool limit"), "pool_timeout"),
        (redis_exc.TimeoutError("Timeout reading"), "timeout"),
        (redis_exc.AuthenticationError("invalid password"), "auth"),
        (redis_exc.ConnectionError("Error 111 connecting to h:1. Connection refused."), "refused"),
        (socket.gaierror(-2, "Name or service not known"), "dns"),
        (ConnectionResetError(), "reset"),
        (ValueError("x"), "other"),
    ],
)
def test_reason_of(exc: BaseException, reason: str) -> None:
    assert reason_of(exc) == reason


def test_translate_keeps_non_driver_errors_untouched() -> None:
    assert translate(ValueError("x")) is None
    assert isinstance(translate(sa_exc.TimeoutError("QueuePool limit")), PoolExhaustedError)
    assert isinstance(translate(redis_exc.ResponseError("ERR unknown command")), QueryFailedError)
