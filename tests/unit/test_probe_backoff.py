"""The probe's back-off after authentication failures, on a fake clock (no server, no sleeping)."""

from __future__ import annotations

import itertools

import pytest
from prometheus_client import CollectorRegistry

from poolwatch.errors import AuthenticationFailedError, DatabaseUnavailableError
from poolwatch.jobs import Deferred, Outcome
from poolwatch.metrics import ProbeMetrics
from poolwatch.probe import Probe


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _probe(errors: list[BaseException | None]) -> tuple[Probe, Clock, list[float], CollectorRegistry]:
    clock = Clock()
    attempts: list[float] = []

    def check() -> None:
        attempts.append(clock.now)
        error = errors[0]
        if error is not None:
            raise error

    registry = CollectorRegistry()
    metrics = ProbeMetrics(registry)
    metrics.add_target("t")
    probe = Probe("t", check, metrics, interval=1.0, timeout=1.0, auth_backoff_max=8.0, clock=clock)
    return probe, clock, attempts, registry


def _tick(probe: Probe) -> None:
    try:
        probe.run()
    except Deferred as exc:
        probe.record(Outcome(0.0, 0.0, exc))
    except Exception as exc:
        probe.record(Outcome(0.01, 0.0, exc))
    else:
        probe.record(Outcome(0.01, 0.0))


def test_auth_failures_double_the_wait_up_to_the_cap() -> None:
    errors: list[BaseException | None] = [AuthenticationFailedError("t: denied", reason="auth")]
    probe, clock, attempts, registry = _probe(errors)
    for _ in range(40):
        _tick(probe)
        clock.now += 1.0
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[:5] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert set(gaps[3:]) == {8.0}
    assert registry.get_sample_value("poolwatch_probe_backoff_seconds", {"target": "t"}) == 8.0
    assert registry.get_sample_value(
        "poolwatch_probe_failures_total", {"target": "t", "reason": "auth"}
    ) == len(attempts)


@pytest.mark.parametrize(
    "next_error",
    [None, DatabaseUnavailableError("t: refused", reason="refused")],
    ids=["success", "other-failure"],
)
def test_any_other_outcome_ends_the_backoff(next_error: BaseException | None) -> None:
    errors: list[BaseException | None] = [AuthenticationFailedError("t: denied", reason="auth")]
    probe, clock, attempts, registry = _probe(errors)
    for _ in range(10):
        _tick(probe)
        clock.now += 1.0
    assert probe.backoff_seconds == 8.0
    errors[0] = next_error
    clock.now += 8.0
    _tick(probe)
    assert probe.backoff_seconds == 0
    assert registry.get_sample_value("poolwatch_probe_backoff_seconds", {"target": "t"}) == 0
    before = len(attempts)
    for _ in range(3):
        clock.now += 1.0
        _tick(probe)
    assert len(attempts) == before + 3, "back to one attempt per interval"


def test_backing_off_from_the_second_failed_login_through_the_retry_until_a_login_works() -> None:
    """What the target's other jobs read: held back while the probe backs off, including while the
    probe's own retry is under way (that retry is the only login), released once one works."""
    clock = Clock()
    error: list[BaseException | None] = [AuthenticationFailedError("t: denied", reason="auth")]
    seen: list[bool] = []
    probes: list[Probe] = []

    def check() -> None:
        seen.append(probes[0].backing_off)
        if error[0] is not None:
            raise error[0]

    metrics = ProbeMetrics(CollectorRegistry())
    metrics.add_target("t")
    probe = Probe("t", check, metrics, interval=1.0, timeout=1.0, auth_backoff_max=8.0, clock=clock)
    probes.append(probe)
    _tick(probe)
    assert not probe.backing_off, "one failed login may be a password being rotated"
    clock.now += 1.0
    _tick(probe)
    assert probe.backing_off
    clock.now += 1.0
    _tick(probe)  # deferred: within the 2 s wait
    clock.now += 1.0
    error[0] = None
    _tick(probe)
    assert seen == [False, False, True]
    assert not probe.backing_off
