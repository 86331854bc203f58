"""The otlp settings: endpoints checked, headers read from their file as secrets, errors in one line
that never quote a header."""

from __future__ import annotations

import pytest

from poolwatch.config import validate
from poolwatch.errors import ConfigError


def otlp(**settings: object):
    return validate({"otlp": settings}).otlp


def test_http_endpoint_gets_the_metrics_path_once_and_grpc_keeps_its_own() -> None:
    assert otlp(endpoint="http://c:4318").metrics_url == "http://c:4318/v1/metrics"
    assert otlp(endpoint="https://c/otlp/").metrics_url == "https://c/otlp/v1/metrics"
    assert otlp(endpoint="http://c:4318/v1/metrics").metrics_url == "http://c:4318/v1/metrics"
    assert otlp(endpoint="http://c:4317", protocol="grpc").metrics_url == "http://c:4317"
    assert validate({}).otlp is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "otlp.endpoint: required key is missing"),
        ({"endpoint": "c:4318"}, "otlp.endpoint: expected http://host:port or https://host:port"),
        ({"endpoint": "http://u:pw@c:4318"}, "otlp.endpoint: no credentials in the endpoint"),
        ({"endpoint": "http://c:99999"}, "otlp.endpoint: bad port"),
        ({"endpoint": "http://c", "protocol": "thrift"}, "otlp.protocol: expected 'http/protobuf' or 'grpc'"),
        ({"endpoint": "http://c", "interval": 0.5}, "otlp.interval: expected greater than or equal to 1"),
        ({"endpoint": "http://c", "headers": {"a": "b"}}, "otlp.headers: unknown key"),
    ],
)
def test_bad_settings_are_one_line_naming_the_key(settings, message) -> None:
    with pytest.raises(ConfigError) as raised:
        validate({"otlp": settings})
    assert str(raised.value).startswith(message), str(raised.value)
    assert "\n" not in str(raised.value)


def test_headers_are_secrets_named_but_never_shown(tmp_path) -> None:
    path = tmp_path / "headers"
    path.write_text("# comment\n\nAuthorization: Bearer t0k3n:with:colons\nX-Scope :  team-a \n")
    settings = validate({"otlp": {"endpoint": "http://c:4318", "headers_file": str(path)}})
    assert settings.otlp is not None
    assert settings.otlp.headers == {"Authorization": "Bearer t0k3n:with:colons", "X-Scope": "team-a"}
    assert set(settings.secrets()) >= {"Bearer t0k3n:with:colons", "team-a"}
    shown = settings.public_dict()["otlp"]
    assert shown["headers"] == ["Authorization", "X-Scope"]
    assert "t0k3n" not in repr(settings) + str(shown)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("Authorization Bearer s3cr3t\n", "line 1: expected 'Name: value'"),
        ("ok: 1\nBad Name: s3cr3t\n", "line 2: expected 'Name: value'"),
        ("X-Key:\n", "line 1: expected 'Name: value'"),
        ("X-Key: s3cr3t\x07\n", "line 1: expected 'Name: value'"),
        ("# nothing\n", "has no header"),
    ],
)
def test_a_malformed_headers_file_is_named_by_line_without_its_text(tmp_path, text, problem) -> None:
    path = tmp_path / "headers"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        validate({"otlp": {"endpoint": "http://c", "headers_file": str(path)}})
    assert str(raised.value) == f"otlp: headers_file {path} {problem}"
    assert "s3cr3t" not in str(raised.value)


def test_a_missing_headers_file_is_named(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"^otlp: headers_file \S+ does not exist$"):
        validate({"otlp": {"endpoint": "http://c", "headers_file": str(tmp_path / "nope")}})
