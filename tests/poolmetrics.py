"""Reading poolwatch_pool_* samples from a registry in tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


def sample(registry: CollectorRegistry, name: str, pool: str, **labels: str) -> float:
    """The value of one sample (0 when the series does not exist, to keep assertions short)."""
    value = registry.get_sample_value(f"poolwatch_{name}", {"pool": pool, **labels})
    return 0.0 if value is None else value


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
