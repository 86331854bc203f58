"""Request heads parsed and refused, WSGI environs and responses, without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poolwatch import httpwire
from poolwatch.httpwire import BAD_REQUEST, BAD_VERSION, TOO_LARGE, HeadError


def parse(head: bytes) -> httpwire.Request:
    return httpwire.parse(head)


def test_a_plain_get_is_parsed_with_its_headers() -> None:
    request = parse(b"GET /metrics?name[]=x HTTP/1.1\r\nHost: a\r\nAccept:  text/plain \r\n\r\n")
    assert (request.method, request.target, request.version) == ("GET", "/metrics?name[]=x", (1, 1))
    assert request.headers == [("Host", "a"), ("Accept", "text/plain")]
    assert request.keep_alive


@pytest.mark.parametrize(
    ("head", "keep_alive"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nConnection: TE, Close\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
        (b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n", False),  # a body this server never reads
        (b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", True),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", False),
        (b"GET / HTTP/1.7\n\n", True),  # bare newlines; a later 1.x minor is served as 1.1
    ],
)
def test_keep_alive_follows_version_and_connection_header(head: bytes, keep_alive: bool) -> None:
    assert parse(head).keep_alive is keep_alive


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /metrics\r\n\r\n", BAD_REQUEST),  # HTTP/0.9
        (b"GET\r\n\r\n", BAD_REQUEST),
        (b"GET /metrics HTTP/one\r\n\r\n", BAD_REQUEST),
        (b"GET /metrics HTTP/2.0\r\n\r\n", BAD_VERSION),
        (b"GET /metrics HTTP/0.9\r\n\r\n", BAD_VERSION),
        (b"GET  /metrics HTTP/1.1\r\n\r\n", BAD_REQUEST),
        (b"GET /metrics HTTP/1.1\r\nHost\r\n\r\n", BAD_REQUEST),
        (b"GET /metrics HTTP/1.1\r\nHost : x\r\n\r\n", BAD_REQUEST),
        (b"GET /metrics HTTP/1.1\r\nA: 1\r\n folded\r\n\r\n", BAD_REQUEST),
        (b"GET /metrics HTTP/1.1\r\nA: x\x00y\r\n\r\n", BAD_REQUEST),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: -5\r\n\r\n", BAD_REQUEST),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % n for n in range(101)) + b"\r\n", TOO_LARGE),
    ],
)
def test_heads_that_cannot_be_served_are_refused_with_a_status(head: bytes, status: str) -> None:
    with pytest.raises(HeadError) as raised:
        parse(head)
    assert raised.value.status == status


@pytest.mark.parametrize(
    ("arrived", "expected"),
    [
        (b"GET /met", (None, False)),
        (b"GET /metrics HTTP/1.1\r\nHo", (None, True)),
        (b"GET /metrics\r\n", (BAD_REQUEST, True)),  # HTTP/0.9: answered now, not at the deadline
        (b"\x16\x03\x01\x00\x2a", (BAD_REQUEST, True)),  # a TLS hello on the plain port
        (b"GET /\xff", (BAD_REQUEST, True)),
        (b"GET /metrics HTTP/3.0\r\n", (BAD_VERSION, True)),
    ],
)
def test_an_incomplete_head_is_refused_as_soon_as_it_cannot_be_served(
    arrived: bytes, expected: tuple[str | None, bool]
) -> None:
    assert httpwire.early_error(bytearray(arrived)) == expected


def test_the_end_of_the_head_is_found_across_reads() -> None:
    buffer = bytearray(b"GET / HTTP/1.1\r\nA: b\r\n\r")
    assert httpwire.head_end(buffer) == -1
    scanned = len(buffer)
    buffer += b"\nGET /next"
    assert httpwire.head_end(buffer, scanned) == buffer.index(b"GET /next")


def test_empty_lines_before_the_request_line_are_skipped() -> None:
    buffer = bytearray(b"\r\n\nGET / HTTP/1.1\r\n\r\n")
    assert httpwire.skip_empty_lines(buffer)
    assert buffer.startswith(b"GET ")
    assert not httpwire.skip_empty_lines(buffer)


def test_the_environ_decodes_the_path_and_drops_headers_with_underscores() -> None:
    request = parse(
        b"GET http://h:1/a%20b?x=1 HTTP/1.1\r\nX-Forwarded-For: a\r\nX_Forwarded_For: evil\r\n"
        b"Accept: a\r\nAccept: b\r\nContent-Type: t\r\n\r\n"
    )
    env = httpwire.environ(request, server=("127.0.0.1", 80), client=("10.0.0.1", 5), scheme="https")
    assert env["PATH_INFO"] == "/a b"
    assert env["QUERY_STRING"] == "x=1"
    assert env["HTTP_X_FORWARDED_FOR"] == "a"
    assert env["HTTP_ACCEPT"] == "a,b"
    assert env["CONTENT_TYPE"] == "t"
    assert env["REMOTE_ADDR"] == "10.0.0.1"
    assert env["wsgi.url_scheme"] == "https"


def test_a_response_gets_a_length_and_the_connection_header_and_head_drops_the_body() -> None:
    full = httpwire.response("200 OK", [("Connection", "x")], b"body", head_only=False, keep_alive=True)
    assert full == b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: keep-alive\r\n\r\nbody"
    head = httpwire.response("200 OK", [("Content-Length", "99")], b"", head_only=True, keep_alive=False)
    assert head == b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nConnection: close\r\n\r\n"


@given(st.binary(max_size=300))
def test_any_bytes_are_parsed_or_refused_with_a_status(data: bytes) -> None:
    refused = None
    try:
        request = parse(data + b"\r\n\r\n")
    except HeadError as exc:
        refused = exc.status
    else:
        env = httpwire.environ(request, server=("h", 1), client=("c", 2), scheme="http")
        assert env["REQUEST_METHOD"] == request.method
    assert refused in {None, BAD_REQUEST, BAD_VERSION, TOO_LARGE}
    status, _ = httpwire.early_error(bytearray(data))
    assert status in {None, BAD_REQUEST, BAD_VERSION}
