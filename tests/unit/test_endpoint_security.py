"""TLS (with and without client certificates) and HTTP basic auth against bcrypt hashes, exercised
with a real HTTPS client (the stdlib's ``ssl``/``urllib``); certificates are made by the openssl CLI
in the test's directory. And the default bind address is loopback."""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

import bcrypt
import pytest

from poolwatch.config import load_settings, validate
from tests.daemonkit import get, running_daemon

if TYPE_CHECKING:
    from pathlib import Path

    from poolwatch.daemon import Daemon

USER, PASSWORD = "prometheus", "scrape-Pa55word"
# Cost 4: the cheapest bcrypt allows, so the suite stays fast; production hashes use 10-12.
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    tmp = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=poolwatch test CA",
        cwd=tmp,
    )
    for name, extension in (
        ("server", "subjectAltName=IP:127.0.0.1"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN=poolwatch test {name}",
            cwd=tmp,
        )
        (tmp / f"{name}.ext").write_text(extension + "\n")
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.crt",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            cwd=tmp,
        )
    return tmp


def _config(tmp: Path, http: dict[str, Any]) -> dict[str, Any]:
    return {
        "http": http,
        "targets": [
            {
                "name": "embedded",
                "kind": "sqlite",
                "url": f"sqlite:///{tmp}/e.db",
                "probe": {"interval": 1, "timeout": 1},
            }
        ],
    }


def _client_context(pki: Path, *, client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if client_cert:
        context.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
    return context


def _auth(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _request(
    daemon: Daemon, path: str, headers: dict[str, str] | None = None, context: ssl.SSLContext | None = None
) -> tuple[int, str, Any]:
    request = urllib.request.Request(f"{daemon.base_url}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, response.read().decode(), response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), exc.headers


def test_tls_serves_metrics_to_a_verifying_https_client(pki: Path, tmp_path: Path) -> None:
    tls = {"cert_file": str(pki / "server.crt"), "key_file": str(pki / "server.key")}
    with running_daemon(_config(tmp_path, {"tls": tls})) as daemon:
        assert daemon.base_url.startswith("https://127.0.0.1:")
        status, body, _ = _request(daemon, "/metrics", context=_client_context(pki))
        assert status == 200
        assert "poolwatch_up" in body
        # Without the CA the server's certificate is not trusted: verification is real.
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            _request(daemon, "/metrics", context=ssl.create_default_context())
        # Plain HTTP to the TLS port gets no metrics, and the endpoint goes on serving.
        with pytest.raises((OSError, urllib.error.URLError)):
            get(daemon.base_url.replace("https://", "http://") + "/metrics", timeout=3)
        assert _request(daemon, "/healthz", context=_client_context(pki))[0] == 200


def test_client_certificates_are_required_when_a_client_ca_is_set(pki: Path, tmp_path: Path) -> None:
    tls = {
        "cert_file": str(pki / "server.crt"),
        "key_file": str(pki / "server.key"),
        "client_ca_file": str(pki / "ca.crt"),
    }
    with running_daemon(_config(tmp_path, {"tls": tls})) as daemon:
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            _request(daemon, "/metrics", context=_client_context(pki))
        status, body, _ = _request(daemon, "/metrics", context=_client_context(pki, client_cert=True))
        assert status == 200
        assert "poolwatch_up" in body


@pytest.fixture(scope="module")
def authed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("auth")
    with running_daemon(_config(tmp, {"basic_auth_users": {USER: HASH}})) as daemon:
        yield daemon


@pytest.mark.parametrize("path", ["/metrics", "/status", "/", "/healthz", "/readyz"])
def test_basic_auth_lets_the_right_password_in(authed: Daemon, path: str) -> None:
    status, _, _ = _request(authed, path, _auth(USER, PASSWORD))
    assert status == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        _auth(USER, "wrong"),
        _auth("someone", PASSWORD),
        _auth(USER, PASSWORD + "x"),
        _auth(USER, ""),
        _auth(USER, "p" * 200),  # bcrypt refuses secrets over 72 bytes: still a plain 401
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": "Bearer " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()},
        {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode()},
        {"Authorization": "Basic " + base64.b64encode(PASSWORD.encode()).decode()},
    ],
    ids=[
        "none",
        "wrong-password",
        "unknown-user",
        "longer-password",
        "empty-password",
        "over-72-bytes",
        "not-base64",
        "bearer",
        "not-utf8",
        "no-colon",
    ],
)
def test_basic_auth_refuses_everything_else(
    authed: Daemon, headers: dict[str, str], request: pytest.FixtureRequest
) -> None:
    # Each case from its own loopback address: repeated failures from one address are throttled.
    source = f"127.0.0.{10 + request.node.callspec.indices['headers']}"
    status, body, response_headers = _request_from(authed, source, headers)
    assert status == 401
    assert "poolwatch_up" not in body
    assert response_headers["WWW-Authenticate"].startswith("Basic realm=")
    assert _request(authed, "/metrics", _auth(USER, PASSWORD))[0] == 200


def _request_from(daemon: Daemon, source: str, headers: dict[str, str]) -> tuple[int, str, Any]:
    connection = http.client.HTTPConnection(*daemon.address, timeout=10, source_address=(source, 0))
    try:
        connection.request("GET", "/metrics", headers=headers)
        response = connection.getresponse()
        return response.status, response.read().decode(), response.headers
    finally:
        connection.close()


def test_tls_and_basic_auth_together_with_curl(pki: Path, tmp_path: Path) -> None:
    tls = {"cert_file": str(pki / "server.crt"), "key_file": str(pki / "server.key")}
    with running_daemon(_config(tmp_path, {"tls": tls, "basic_auth_users": {USER: HASH}})) as daemon:

        def curl(*args: str) -> str:
            result = subprocess.run(
                [
                    "curl",
                    "-sS",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--cacert",
                    str(pki / "ca.crt"),
                    *args,
                    f"{daemon.base_url}/metrics",
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            return result.stdout

        assert curl() == "401"
        assert curl("-u", f"{USER}:wrong") == "401"
        assert curl("-u", f"{USER}:{PASSWORD}") == "200"


def test_default_bind_address_is_loopback() -> None:
    assert validate({}).http.address == ("127.0.0.1", 18187)
    assert load_settings(environ={}).http.address[0] == "127.0.0.1"
    # Only an explicit ":port" (or a host) widens it.
    assert load_settings(environ={"POOLWATCH_LISTEN": ":18187"}).http.address[0] == "0.0.0.0"


def test_a_default_daemon_is_not_reachable_on_other_interfaces(tmp_path: Path) -> None:
    with running_daemon(_config(tmp_path, {})) as daemon:
        host, port = daemon.address
        assert host == "127.0.0.1"
        addresses = {
            str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
        }
        for address in addresses - {"127.0.0.1", "127.0.1.1"}:
            with pytest.raises(OSError), socket.create_connection((address, port), timeout=2):
                pass
