"""The /metrics endpoint an application serves: its own registry, or every worker's files.

``make_asgi_app()`` / ``make_wsgi_app()`` follow prometheus_client's multiprocess recipe when
``PROMETHEUS_MULTIPROC_DIR`` is set (a fresh registry with a ``MultiProcessCollector``: every worker's
metrics, whichever worker answers) and serve the process's registry otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import prometheus_client
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from poolwatch.instrument.multiprocess import settings_from_environment

if TYPE_CHECKING:
    from collections.abc import Callable


def metrics_registry(registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """What the endpoint serves: every worker's files in multiprocess mode (``registry`` is then not
    used, as in prometheus_client's recipe), else ``registry`` (the default one when None)."""
    settings = settings_from_environment()
    if settings is None:
        return prometheus_client.REGISTRY if registry is None else registry
    merged = CollectorRegistry()
    cast("Any", MultiProcessCollector)(merged, path=str(settings.directory))  # untyped
    return merged


def make_wsgi_app(registry: CollectorRegistry | None = None) -> Callable[..., Any]:
    """A WSGI application serving /metrics (mount it, or run it next to the application)."""
    return prometheus_client.make_wsgi_app(metrics_registry(registry))


def make_asgi_app(registry: CollectorRegistry | None = None) -> Callable[..., Any]:
    """An ASGI application serving /metrics (``app.mount("/metrics", poolwatch.make_asgi_app())``)."""
    return prometheus_client.make_asgi_app(metrics_registry(registry))
