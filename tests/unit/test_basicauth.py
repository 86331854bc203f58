"""Basic auth: the work an unknown user costs, the caches, the hash-check bound and the per-address
throttle (with a clock the test moves), then the whole endpoint hammered by real concurrent clients."""

from __future__ import annotations

import base64
import contextlib
import http.client
import itertools
import threading
from typing import TYPE_CHECKING

import bcrypt
import pytest
from prometheus_client import CollectorRegistry, Counter

from poolwatch.basicauth import BasicAuth, FailureThrottle, dummy_hash
from poolwatch.http import Endpoint
from poolwatch.httpserver import HttpServer, Limits
from tests.daemonkit import wait_for
from tests.statusdocs import document

if TYPE_CHECKING:
    from collections.abc import Iterator

USER = "prometheus"


def basic(user: str, password: str | bytes) -> str:
    raw = password if isinstance(password, bytes) else password.encode()
    return "Basic " + base64.b64encode(user.encode() + b":" + raw).decode()


class Checks:
    """A bcrypt check that records the cost of every hash it is asked to compute."""

    def __init__(self) -> None:
        self.costs: list[int] = []
        self.lengths: list[int] = []

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        self.costs.append(int(hashed.split(b"$")[2]))
        self.lengths.append(len(password))
        return bcrypt.checkpw(password, hashed)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def hashes() -> dict[str, bytes]:
    # Cost 5 for this user, 4 for the other: the dummy must take the higher.
    return {
        USER: bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=5)),
        "other": bcrypt.hashpw(b"other", bcrypt.gensalt(rounds=4)),
    }


def test_the_dummy_hash_has_the_cost_of_the_costliest_user_and_matches_nothing(
    hashes: dict[str, bytes],
) -> None:
    dummy = dummy_hash(hashes)
    assert dummy.split(b"$")[2] == b"05"
    assert len(dummy) == 60
    assert not bcrypt.checkpw(b"right", dummy)
    assert not bcrypt.checkpw(b"", dummy)


@pytest.mark.parametrize(
    "password", ["wrong", "p" * 72, "p" * 73, "é" * 100], ids=["short", "72-bytes", "73-bytes", "200-bytes"]
)
def test_an_unknown_user_costs_exactly_what_a_wrong_password_costs(
    hashes: dict[str, bytes], password: str
) -> None:
    work = {}
    for user in (USER, "nobody"):
        checks = Checks()
        auth = BasicAuth(hashes, check=checks)
        assert not auth.verdict(basic(user, password), "192.0.2.1").allowed
        work[user] = (checks.costs, checks.lengths)
    assert work[USER] == work["nobody"]
    # Up to bcrypt's 72 bytes, one hash at the costliest configured cost; beyond, none on either path.
    length = len(password.encode())
    assert work[USER] == (([5], [length]) if length <= 72 else ([], []))


def test_a_password_over_72_bytes_is_refused_even_when_its_first_72_match() -> None:
    long_password = b"x" * 72
    hashed = bcrypt.hashpw(long_password, bcrypt.gensalt(rounds=4))
    auth = BasicAuth({USER: hashed})
    assert auth.verdict(basic(USER, long_password), "192.0.2.1").allowed
    assert not auth.verdict(basic(USER, long_password + b"beyond"), "192.0.2.2").allowed


def test_a_verified_header_is_hashed_once(hashes: dict[str, bytes]) -> None:
    checks = Checks()
    auth = BasicAuth(hashes, check=checks)
    for _ in range(20):
        assert auth.verdict(basic(USER, "right"), "192.0.2.1").allowed
    assert len(checks.costs) == 1


def test_a_repeated_wrong_header_is_hashed_once(hashes: dict[str, bytes]) -> None:
    checks = Checks()
    auth = BasicAuth(hashes, check=checks, throttle=FailureThrottle(free_failures=1000))
    for _ in range(20):
        assert not auth.verdict(basic(USER, "wrong"), "192.0.2.1").allowed
    assert len(checks.costs) == 1


def test_wrong_guesses_cannot_push_a_verified_scraper_out_of_the_cache(hashes: dict[str, bytes]) -> None:
    checks = Checks()
    auth = BasicAuth(hashes, check=checks, cache_size=8, throttle=FailureThrottle(free_failures=1000))
    assert auth.verdict(basic(USER, "right"), "192.0.2.1").allowed
    for n in range(50):
        auth.verdict(basic(USER, f"guess-{n}"), "192.0.2.66")
    checks.costs.clear()
    assert auth.verdict(basic(USER, "right"), "192.0.2.1").allowed
    assert checks.costs == []


def test_malformed_headers_are_refused_without_hashing(hashes: dict[str, bytes]) -> None:
    checks = Checks()
    auth = BasicAuth(hashes, check=checks, throttle=FailureThrottle(free_failures=1000))
    for header in ["", "Bearer x", "Basic", "Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode()]:
        assert not auth.verdict(header, "192.0.2.1").allowed
    assert checks.costs == []


def test_no_more_than_the_allowed_hash_checks_run_at_once_and_the_rest_are_refused_at_once(
    hashes: dict[str, bytes],
) -> None:
    entered = threading.Semaphore(0)
    release = threading.Event()

    def slow_check(password: bytes, hashed: bytes) -> bool:
        entered.release()
        release.wait(30)
        return bcrypt.checkpw(password, hashed)

    auth = BasicAuth(hashes, check=slow_check, max_concurrent_checks=2)
    verdicts = []
    busy = [
        threading.Thread(
            target=lambda n=n: verdicts.append(auth.verdict(basic(USER, f"w{n}"), f"192.0.2.{n}"))
        )
        for n in range(2)
    ]
    for thread in busy:
        thread.start()
    for _ in busy:
        assert entered.acquire(timeout=10)
    # Both slots taken: a third attempt is refused now, without waiting and without hashing.
    third = auth.verdict(basic(USER, "right"), "192.0.2.99")
    assert not third.allowed
    assert third.throttled
    release.set()
    for thread in busy:
        thread.join(10)
    assert [v.allowed for v in verdicts] == [False, False]
    assert auth.verdict(basic(USER, "right"), "192.0.2.99").allowed  # a slot is free again


def test_a_verified_scraper_passes_while_its_address_is_throttled(hashes: dict[str, bytes]) -> None:
    clock = Clock()
    auth = BasicAuth(hashes, throttle=FailureThrottle(clock=clock, free_failures=2))
    address = "192.0.2.1"  # a NAT: the scraper and an attacker share it
    assert auth.verdict(basic(USER, "right"), address).allowed
    for n in range(5):
        auth.verdict(basic(USER, f"guess-{n}"), address)
    assert auth.verdict(basic(USER, "guess-x"), address).throttled
    assert auth.verdict(basic(USER, "right"), address).allowed


# ------------------------------------------------------------------------------ the throttle alone


def test_the_throttle_lets_the_first_failures_through_then_doubles_the_wait() -> None:
    clock = Clock()
    throttle = FailureThrottle(clock=clock, free_failures=3, base_delay=1, max_delay=8)
    for _ in range(3):
        throttle.failed("a")
        assert throttle.retry_after("a") == 0
    waits = []
    for _ in range(6):
        throttle.failed("a")
        waits.append(throttle.retry_after("a"))
        clock.now += waits[-1]
        assert throttle.retry_after("a") == 0
    assert waits == [1, 2, 4, 8, 8, 8]
    assert throttle.retry_after("b") == 0  # per address


def test_the_throttle_forgets_an_address_that_stays_quiet_or_succeeds() -> None:
    clock = Clock()
    throttle = FailureThrottle(clock=clock, free_failures=1, base_delay=1, max_delay=4)
    for _ in range(4):
        throttle.failed("a")
    assert throttle.retry_after("a") == 4
    clock.now += 4 + 4  # blocked 4 s, then quiet for max_delay
    throttle.failed("a")
    assert throttle.retry_after("a") == 0, "counting starts again"
    throttle.failed("a")
    assert throttle.retry_after("a") == 1
    throttle.succeeded("a")
    assert throttle.retry_after("a") == 0
    assert len(throttle) == 0


def test_the_throttle_remembers_a_bounded_number_of_addresses() -> None:
    clock = Clock()
    throttle = FailureThrottle(clock=clock, free_failures=0, max_addresses=100)
    for n in range(10_000):
        throttle.failed(f"2001:db8::{n:x}")
    assert len(throttle) == 100
    assert throttle.retry_after("2001:db8::270f") > 0  # the most recent is kept
    assert throttle.retry_after("2001:db8::0") == 0  # the oldest went


# ------------------------------------------------------------------ real clients, real bcrypt


@contextlib.contextmanager
def authed_server(hashed: bytes) -> Iterator[HttpServer]:
    registry = CollectorRegistry()
    Counter("things", "Things.", registry=registry).inc()
    app = Endpoint(
        registry,
        healthy=lambda: True,
        ready=lambda: True,
        status=document,
        basic_auth_users={USER: hashed},
    )
    server = HttpServer(app, "127.0.0.1", 0, limits=Limits(max_connections=200))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _get(
    server: HttpServer, header: str, source: str, connection: http.client.HTTPConnection | None = None
) -> int:
    own = connection is None
    connection = connection or http.client.HTTPConnection(
        *server.server_address, timeout=30, source_address=(source, 0)
    )
    try:
        connection.request("GET", "/metrics", headers={"Authorization": header})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        if own:
            connection.close()


def test_a_verified_scraper_gets_every_scrape_while_attackers_hammer() -> None:
    # Cost 10: ~60 ms of CPU a guess, so unthrottled attackers would saturate the machine.
    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=10))
    good = basic(USER, "right")
    with authed_server(hashed) as server:
        scraper = http.client.HTTPConnection(*server.server_address, timeout=30)
        assert _get(server, good, "127.0.0.1", scraper) == 200
        stop = threading.Event()
        answers: list[int] = []
        guesses = itertools.count()

        def attack(source: str) -> None:
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    answers.append(_get(server, basic(USER, f"guess-{next(guesses)}"), source))

        # From the scraper's own address and from others (a NAT and a botnet in miniature).
        sources = ["127.0.0.1"] * 8 + [f"127.0.0.{n}" for n in range(2, 10)] * 2
        attackers = [threading.Thread(target=attack, args=(s,), daemon=True) for s in sources]
        for thread in attackers:
            thread.start()
        try:
            wait_for(lambda: answers.count(429) >= 20, 60, "attackers throttled")
            statuses = [_get(server, good, "127.0.0.1", scraper) for _ in range(50)]
            fresh = [_get(server, good, "127.0.0.1") for _ in range(20)]  # new connections too
        finally:
            stop.set()
            for thread in attackers:
                thread.join(30)
            scraper.close()
        assert statuses == [200] * 50
        assert fresh == [200] * 20
        assert set(answers) <= {401, 429}
        assert 200 not in answers
