"""The ``otlp:`` settings: where the daemon pushes its metrics over OTLP, and the headers it sends.

Header values (tokens, API keys) are secrets like passwords: read from ``headers_file`` when the
settings are validated, kept out of every field (so out of ``repr``, ``poolwatch config`` and the
status page), and never quoted in an error: a bad line is named by its number.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from poolwatch.config_file import UnreadableFileError, read_text
from poolwatch.masking import printable
from poolwatch.schema import Field, Model, field_validator, model_validator, private

MAX_HEADERS_BYTES: Final = 64 * 1024
METRICS_PATH: Final = "/v1/metrics"
_TOKEN: Final = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")  # an HTTP header name (RFC 9110 token)


class OtlpSettings(Model):
    """Push every metric of the daemon over OTLP: its pools as ``db.client.connection.*``, and its
    probes, census, reaper and jobs as ``poolwatch.*``."""

    endpoint: str = Field(
        description="The OTLP receiver (an OpenTelemetry Collector, or a backend's OTLP endpoint): "
        "`http://collector:4318` for `http/protobuf` (`/v1/metrics` is added unless the path "
        "already ends with it), `http://collector:4317` for `grpc`; `https://` for TLS. No "
        "credentials in it: put them in `headers_file`."
    )
    protocol: Literal["http/protobuf", "grpc"] = Field(
        default="http/protobuf", description="OTLP over HTTP with protobuf bodies, or over gRPC."
    )
    interval: Annotated[float, Field(ge=1, le=3600)] = Field(
        default=15.0, description="Seconds between two pushes (one collection each)."
    )
    timeout: Annotated[float, Field(ge=1, le=300)] = Field(
        default=10.0,
        description="Seconds one push may take before it is abandoned (the next one tries again).",
    )
    headers_file: str | None = Field(
        default=None,
        description="File of headers sent with every push, one `Name: value` a line (blank lines "
        "and lines starting with `#` are skipped), at most 64 KiB: an API key or bearer token. "
        "Secrets: never logged, printed or shown on the status page.",
    )
    _headers: dict[str, str] = private(dict)

    @field_validator("endpoint")
    @classmethod
    def _valid_endpoint(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected http://host:port or https://host:port, got {printable(value)}")
        if parts.username is not None or parts.password is not None:
            raise ValueError("no credentials in the endpoint: put them in headers_file")
        if parts.query or parts.fragment:
            raise ValueError("the endpoint takes no query or fragment")
        try:
            parts.port  # noqa: B018 - raises on a port out of range
        except ValueError:
            raise ValueError(f"bad port in {printable(value)}") from None
        return value

    @model_validator(mode="after")
    def _read_headers(self) -> OtlpSettings:
        if self.headers_file is not None:
            object.__setattr__(self, "_headers", read_headers(self.headers_file))  # frozen: set once here
        return self

    @property
    def headers(self) -> dict[str, str]:
        """The headers from ``headers_file`` (secrets: never log or print them)."""
        return dict(self._headers)

    @property
    def metrics_url(self) -> str:
        """Where an ``http/protobuf`` exporter posts: the endpoint with ``/v1/metrics``."""
        if self.protocol == "grpc" or urlsplit(self.endpoint).path.endswith(METRICS_PATH):
            return self.endpoint
        return self.endpoint.rstrip("/") + METRICS_PATH

    def public_dict(self) -> dict[str, Any]:
        """As ``poolwatch config`` prints it: the header names, never their values."""
        return {**self.model_dump(), "headers": sorted(self._headers)}


def read_headers(path: str) -> dict[str, str]:
    """The headers in ``path``; a problem is a ``ValueError`` naming the file and line, not its text."""
    try:
        text = read_text(path, MAX_HEADERS_BYTES)
    except UnreadableFileError as exc:
        raise ValueError(f"headers_file {path} {exc}") from None
    headers: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, colon, value = stripped.partition(":")
        name, value = name.strip(), value.strip()
        if not colon or not _TOKEN.match(name) or not value or not value.isprintable():
            raise ValueError(f"headers_file {path} line {number}: expected 'Name: value'")
        headers[name] = value
    if not headers:
        raise ValueError(f"headers_file {path} has no header")
    return headers
