"""The status page and /status as served: escaping, self-containment, size, security headers."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
from html.parser import HTMLParser
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from poolwatch.assess import assess
from poolwatch.config import validate
from poolwatch.http import Endpoint
from poolwatch.statuspage import SCRIPT, STYLE, refresh_seconds, render, to_json
from tests.statusdocs import NOW, document, target

ORDERS = validate({"targets": [{"name": "o", "kind": "postgres", "url": "postgresql://u@db/o"}]}).targets[0]


def _call(
    app: Endpoint, path: str, method: str = "GET", query: str = ""
) -> tuple[str, dict[str, str], bytes]:
    environ = {"PATH_INFO": path, "REQUEST_METHOD": method, "QUERY_STRING": query}
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = status, dict(headers)

    body = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], body


def _busy_target(name: str) -> Any:
    """A target with everything the page can show: problems, a full trend, reaper decisions."""
    decision = {
        "decided_at": "2025-06-15T15:00:00+00:00",
        "mode": "dry_run",
        "reason": "idle_in_transaction",
        "pid": 4242,
        "user": "web",
        "database": "orders",
        "application": "report-job",
        "client_addr": "10.0.0.7",
        "idle_seconds": 421.5,
    }
    at = [NOW - 900 + 10 * i for i in range(91)]
    doc = target(
        name,
        pool={"used": 14, "pending": 2, "timeouts_recent": 3, "leaked": 1},
        census={
            "used_ratio": 0.83,
            "oldest_seconds": {"idle in transaction": 421.5},
            "oldest_idle_in_transaction": {
                "pid": 4242,
                "user": "web",
                "application": "report-job",
                "database": "orders",
                "idle_seconds": 421.5,
                "transaction_seconds": 430.0,
            },
        },
        reaper={"latest": [decision] * 10, "candidates": [decision] * 10, "candidates_total": 12},
        trend={
            "at": at,
            "used": [float(i % 15) for i in range(91)],
            "pending": [float(i % 3) for i in range(91)],
            "timeouts": [float(i // 10) for i in range(91)],
            "leaks": [0.0] * 91,
            "sessions_at": at,
            "sessions": [float(80 + i % 7) for i in range(91)],
        },
    )
    doc["problems"] = assess(doc, ORDERS, NOW)
    return doc


def test_every_value_is_escaped() -> None:
    hostile = target('<script>alert("name")</script>', error="<img src=x onerror=alert(1)>")
    hostile["up"] = False
    hostile["reason"] = "refused"
    hostile["problems"] = assess(hostile, ORDERS, NOW)
    assert hostile["census"] is not None
    hostile["census"]["by_state"] = {"<b>state</b>": 1}
    page = render(document(hostile))
    assert "<script>alert" not in page
    assert "<img" not in page
    assert "<b>state" not in page
    assert "&lt;script&gt;alert(&quot;name&quot;)" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


def test_the_page_is_self_contained_and_valid_enough_to_parse() -> None:
    page = render(document(_busy_target("orders"), target("cache")))
    # Links only to the daemon's own paths; no script, style, font or image from elsewhere.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "@import" not in page
    assert "url(" not in page

    class Tags(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.open: list[str] = []
            self.scripts = 0

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self.scripts += tag == "script"
            if tag not in {"meta", "link", "br", "line", "polyline", "circle"}:
                self.open.append(tag)

        def handle_endtag(self, tag: str) -> None:
            if tag in {"line", "polyline", "circle"}:
                return
            assert self.open.pop() == tag, f"</{tag}> closes something else"

    parser = Tags()
    parser.feed(page)
    assert parser.open == []
    assert parser.scripts == 1
    assert page.count("<article") == 2


def _healthy_target(name: str) -> Any:
    """Fifteen minutes of an ordinary day: usage moving, nobody waiting, sessions steady."""
    at = [NOW - 900 + 10 * i for i in range(91)]
    trend = {
        "at": at,
        "used": [float(2 + (i * 7) % 5) for i in range(91)],
        "pending": [0.0] * 91,
        "timeouts": [0.0] * 91,
        "leaks": [0.0] * 91,
        "sessions_at": at,
        "sessions": [float(40 + (i // 9) % 3) for i in range(91)],
    }
    return target(name, trend=trend)


def test_a_realistic_page_stays_under_30_kb() -> None:
    """Ten targets with fifteen minutes of history, two of them in trouble with every section full."""
    targets = [_busy_target("orders"), _busy_target("billing")]
    targets += [_healthy_target(f"service-{i}") for i in range(8)]
    page = render(document(*targets))
    assert len(page.encode()) < 30_000, len(page.encode())
    one = render(document(_busy_target("orders"))).encode()
    assert len(one) - len(render(document()).encode()) < 4_500, "a target in trouble, all sections full"


def test_the_content_security_policy_allows_exactly_the_page_s_own_style_and_script() -> None:
    status, headers, body = _call(_endpoint(), "/")
    assert status == "200 OK"
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    page = body.decode()
    policy = headers["Content-Security-Policy"]
    for source, tag in ((STYLE, "style"), (SCRIPT, "script")):
        assert f"<{tag}>{source}</{tag}>" in page
        digest = base64.b64encode(hashlib.sha256(source.encode()).digest()).decode()
        assert f"{tag}-src 'sha256-{digest}'" in policy
    assert "default-src 'none'" in policy
    assert headers["Cache-Control"] == "no-store"


def test_status_json_is_the_document_and_head_has_no_body() -> None:
    status, headers, body = _call(_endpoint(), "/status")
    assert status == "200 OK"
    assert headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    assert doc["schema_version"] == 1
    assert [t["name"] for t in doc["targets"]] == ["orders"]
    for path in ("/", "/status"):
        status, headers, body = _call(_endpoint(), path, method="HEAD")
        assert status == "200 OK"
        assert body == b""
        assert int(headers["Content-Length"]) > 0


@pytest.mark.parametrize(
    ("query", "seconds"), [("", 10), ("refresh=3", 3), ("refresh=0", 0), ("refresh=-1", 10)]
)
def test_refresh_comes_from_the_query_within_bounds(query: str, seconds: int) -> None:
    assert refresh_seconds(query) == seconds
    page = render(document(target()), refresh=seconds)
    assert f'data-refresh="{seconds}"' in page
    assert ('http-equiv="refresh"' in page) == (seconds > 0)


def _endpoint() -> Endpoint:
    return Endpoint(
        CollectorRegistry(), healthy=lambda: True, ready=lambda: True, status=lambda: document(target())
    )


def test_a_kept_card_says_how_long_ago_as_of_each_page() -> None:
    """The same target's part in two documents ten seconds apart (as the daemon keeps it between two
    job outcomes): the ages, the down time and the sparklines' window follow the page's time."""
    trend = _healthy_target("billing")["trend"]  # fifteen minutes: the window is full
    down = target(
        "billing", up=False, reason="refused", error="connection refused", since=NOW - 30, trend=trend
    )
    down["problems"] = assess(down, ORDERS, NOW)
    first = document(down)
    later = copy.copy(first)  # the same target parts
    later["generated_at"] = NOW + 10
    assert later["targets"][0] is first["targets"][0]
    pages = [render(first), render(later)]
    for page, down_for, checked in zip(pages, ("30s", "40s"), ("2s", "12s"), strict=True):
        assert f'data-kind="down">down for {down_for}: connection refused</li>' in page
        assert f"({down_for}) · checked {checked} ago" in page
    lefts = [re.findall(r'<svg viewBox="(-?\d+) ', page) for page in pages]
    assert len(lefts[0]) == 3
    # One step later, the window starts one step later (one unit of the drawing).
    assert [int(b) - int(a) for a, b in zip(lefts[0], lefts[1], strict=True)] == [1, 1, 1]
    assert all("<p>last 15m</p>" in page for page in pages)


def test_the_sparklines_window_grows_with_a_young_history() -> None:
    doc = document(target())  # samples from 30 s ago
    later = copy.copy(doc)
    later["generated_at"] = NOW + 10
    spans = [re.search(r"<p>last (\S+)</p>", render(page)) for page in (doc, later)]
    assert [span[1] if span else None for span in spans] == ["50s", "1m"]


def test_the_json_is_the_documents_own_serialisation_with_kept_parts_reused() -> None:
    first = document(target("cache"), _busy_target("orders"))
    changed = copy.deepcopy(first["targets"][1])
    changed["up"] = False
    later = copy.copy(first)
    later["generated_at"] = NOW + 5
    later["targets"] = [first["targets"][0], changed]  # one part kept, one made again
    for doc in (first, later, document()):
        assert to_json(doc) == json.dumps(doc, separators=(",", ":"))
