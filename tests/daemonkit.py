"""Helpers for tests that run a real Daemon in-process and read what it serves.

``running_daemon(config)`` validates a configuration mapping (listening on a free loopback port),
starts the daemon and runs its scheduler on a thread; ``Scraper`` scrapes /metrics in the background
for the whole test and remembers every failure and the slowest answer, so a fault test can assert
that the daemon kept serving throughout. ``DaemonProcess`` runs ``poolwatch run`` as a real
subprocess, for what only a process shows: signals, exit codes, log lines.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

from prometheus_client.parser import text_string_to_metric_families

from poolwatch.config import validate
from poolwatch.daemon import Daemon

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from typing_extensions import Self

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@contextlib.contextmanager
def running_daemon(config: dict[str, Any], **options: Any) -> Iterator[Daemon]:
    """A started daemon running on a thread (``options`` go to ``Daemon``), stopped afterwards."""
    config = {**config, "http": {"listen": "127.0.0.1:0", **config.get("http", {})}}
    daemon = Daemon(validate(config), **options)
    daemon.start()
    thread = threading.Thread(target=daemon.run, name="test-daemon", daemon=True)
    thread.start()
    try:
        yield daemon
    finally:
        daemon.stop()
        thread.join(15)
        assert not thread.is_alive(), "the daemon did not stop within 15 s"


def get(url: str, timeout: float = 5.0, context: ssl.SSLContext | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(daemon: Daemon) -> Samples:
    status, text = get(f"{daemon.base_url}/metrics")
    assert status == 200, text
    return parse(text)


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample ``name`` whose labels include ``labels`` (exactly one must match)."""
    wanted = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and wanted <= ls]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples match"
    return found[0]


def found(samples: Samples, name: str, **labels: str) -> float | None:
    """``value``, or None while no sample matches (a series not published yet): for polling."""
    wanted = set(labels.items())
    matches = [v for (n, ls), v in samples.items() if n == name and wanted <= ls]
    assert len(matches) <= 1, f"{name}{labels}: {len(matches)} samples match"
    return matches[0] if matches else None


def metric(daemon: Daemon, name: str, **labels: str) -> float:
    return value(scrape(daemon), name, **labels)


def wait_for(
    predicate: Callable[[], bool], timeout: float = 20, what: str = "condition", step: float = 0.05
) -> float:
    """Poll until ``predicate()``; return the seconds it took, fail the test after ``timeout``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(step)
    return time.monotonic() - started


class Scraper:
    """Scrapes ``url`` every ``every`` seconds on a thread; records failures and the slowest answer."""

    def __init__(self, url: str, every: float = 0.1, timeout: float = 5.0) -> None:
        self.url = url
        self.every = every
        self.timeout = timeout
        self.count = 0
        self.failures: list[str] = []
        self.slowest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="test-scraper", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 1)

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                status, _ = get(self.url, self.timeout)
                if status != 200:
                    self.failures.append(f"status {status}")
            except OSError as exc:
                self.failures.append(repr(exc))
            self.slowest = max(self.slowest, time.monotonic() - started)
            self.count += 1
            self._stop.wait(self.every)

    def assert_served(self, max_seconds: float = 2.0) -> None:
        """Every scrape answered 200, none slower than ``max_seconds`` (generous: the machine is shared)."""
        assert self.count > 0, "no scrape happened"
        assert not self.failures, f"{len(self.failures)} of {self.count} scrapes failed: {self.failures[:3]}"
        assert self.slowest < max_seconds, f"slowest scrape took {self.slowest:.2f}s"


def poolwatch_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "poolwatch", *args]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a poolwatch subprocess: no inherited poolwatch/database variables."""
    names = ("POOLWATCH_", "DATABASE_URL", "REDIS_URL", "POSTGRES_", "DB_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(names)}
    return {**env, **extra}


class DaemonProcess:
    """``poolwatch run`` as a real subprocess; the port is read from its first log line."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
        self.process = subprocess.Popen(
            poolwatch_command("run", "--listen", "127.0.0.1:0", *args),
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait(lambda: bool(self.lines), "the first log line")
        match = re.search(r"/metrics on (https?://[^/\s]+)/metrics", self.lines[0])
        assert match, self.lines[0]
        self.url = match.group(1)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def stop(self, timeout: float = 10) -> int:
        self.process.terminate()
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def wait(self, predicate: Callable[[], bool], what: str = "condition", timeout: float = 30) -> None:
        """``wait_for``, with the daemon's output in the failure message."""
        try:
            wait_for(predicate, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- poolwatch output ---\n{self.output()}") from None

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        _, body = get(self.url + "/metrics")
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                yield sample.name, sample.labels, sample.value

    def up(self) -> dict[str, float]:
        """``poolwatch_up`` by target, from a live scrape."""
        return {labels["target"]: v for n, labels, v in self.samples() if n == "poolwatch_up"}
