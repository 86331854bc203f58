"""Starting the daemon's OTLP push when ``otlp:`` is configured; OpenTelemetry loads only then."""

from __future__ import annotations

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
