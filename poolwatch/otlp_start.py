"""Starting the daemon's OTLP push when ``otlp:`` is configured; OpenTelemetry loads only then."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from poolwatch.errors import ConfigError

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from poolwatch.config_otlp import OtlpSettings
    from poolwatch.otlp import OtlpPush


def start_push(settings: OtlpSettings | None, registry: CollectorRegistry) -> OtlpPush | None:
    """The push ``settings`` ask for (None without them); a missing package is a ConfigError line."""
    if settings is None:
        return None
    try:
        from poolwatch.otlp import OtlpPush  # noqa: PLC0415 - the optional part, loaded when asked
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"otlp: needs {exc.name}, which is not installed: pip install 'poolwatch[otel]'"
        ) from None
    return OtlpPush(settings, registry)


def hide_sdk() -> None:
    """Keep the OpenTelemetry SDK out of a ``poolwatch run`` process unless ``otlp:`` asks for it.

    redis-py 8 imports the SDK's metrics package whenever it is installed, for an observability
    feature poolwatch does not use: 2.5 MB of resident memory in a daemon that never pushes. An
    import of a module that ``sys.modules`` maps to None fails with ImportError, which redis-py
    takes for "not installed". Called before the configuration is read (checking a Redis URL loads
    redis-py); ``show_sdk`` undoes it when the settings have ``otlp:`` (a changed ``otlp:`` takes
    effect after a restart, so nothing needs the SDK later). Only for ``poolwatch run``, which owns
    its process; never in an application."""
    sys.modules.setdefault("opentelemetry.sdk", None)  # type: ignore[arg-type]


def show_sdk() -> None:
    """Undo ``hide_sdk``: the SDK imports as usual again."""
    if "opentelemetry.sdk" in sys.modules and sys.modules["opentelemetry.sdk"] is None:
        del sys.modules["opentelemetry.sdk"]
