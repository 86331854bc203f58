"""Helpers for tests that run the daemon: in-process on a thread, or as a real subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from typing import TYPE_CHECKING, Any

from prometheus_client.parser import text_string_to_metric_families

from poolwatch.config import validate
from poolwatch.daemon import Daemon

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


def fetch(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(base_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by (name, sorted labels)."""
    status, body = fetch(base_url + "/metrics")
    assert status == 200, body
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def value(base_url: str, name: str, **labels: str) -> float | None:
    return samples(base_url).get((name, tuple(sorted(labels.items()))))


def wait_for(condition: Callable[[], Any], timeout: float = 20, interval: float = 0.05) -> Any:
    """Poll until ``condition()`` is truthy; return it, or fail with the last value."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {result!r})")
        time.sleep(interval)


class RunningDaemon:
    """A Daemon on a background thread, listening on a free port."""

    def __init__(self, config: dict[str, Any]) -> None:
        config = {**config, "http": {"listen": "127.0.0.1:0", **config.get("http", {})}}
        self.daemon = Daemon(validate(config))
        self.thread = threading.Thread(target=self.daemon.run, name="test-daemon", daemon=True)

    def __enter__(self) -> RunningDaemon:
        self.daemon.start()
        self.thread.start()
        wait_for(self.daemon.healthy)
        return self

    def __exit__(self, *exc: object) -> None:
        self.daemon.stop()
        self.thread.join(15)
        assert not self.thread.is_alive(), "daemon did not stop"

    @property
    def url(self) -> str:
        return self.daemon.base_url

    def value(self, name: str, **labels: str) -> float | None:
        return value(self.url, name, **labels)


def poolwatch_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "poolwatch", *args]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a poolwatch subprocess: no inherited poolwatch/database variables."""
    names = ("POOLWATCH_", "DATABASE_URL", "REDIS_URL", "POSTGRES_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(names)}
    return {**env, **extra}


class DaemonProcess:
    """``poolwatch run`` as a real subprocess; the port is read from its first log line."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
        self.process = subprocess.Popen(
            poolwatch_command("run", "--listen", "127.0.0.1:0", *args),
            env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        first = wait_for(lambda: self.lines[:1], timeout=30)[0]
        match = re.search(r"/metrics on (https?://[^/\s]+)/metrics", first)
        assert match, first
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

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def wait(self, condition: Callable[[], Any], timeout: float = 30) -> Any:
        """``wait_for``, with the daemon's output in the failure message."""
        try:
            return wait_for(condition, timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- poolwatch output ---\n{self.output()}") from None

    def up(self) -> dict[str, float]:
        """``poolwatch_up`` by target, from a live scrape."""
        return {labels["target"]: v for n, labels, v in self.samples() if n == "poolwatch_up"}

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        _, body = fetch(self.url + "/metrics")
        for family in text_string_to_metric_families(body):
            for s in family.samples:
                yield s.name, s.labels, s.value
