"""poolwatch's SQL URL parser against SQLAlchemy's: on every URL below, hand-written and generated,
both accept or both refuse, and what they accept has the same host, port, database and query. And
``check_url`` answers as it did with SQLAlchemy's parser: the same error line, or none."""

from __future__ import annotations

import random

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from poolwatch import urls as urls_module
from poolwatch.urls import check_url, parse_sql_url

WRITTEN = [
    "postgresql://app@db:5432/orders",
    "postgresql+psycopg2://app:pw@db.example:5432/orders?sslmode=require",
    "postgresql+psycopg://app@[::1]:5432/orders",
    "postgresql://app@[fe80::1%25eth0]/orders",
    "postgresql://[::1]:/orders",
    "postgresql://db:/orders",
    "postgresql://db:abc/orders",
    "postgresql://db:99999/orders",
    "postgresql://db:0/orders",
    "postgresql://db: 5432/orders",
    "postgresql://db:5_432/orders",
    "postgresql://db:+5432/orders",
    "postgresql://db:-1/orders",
    "postgresql://db:\u0665\u0664/orders",
    "postgresql://db:" + "9" * 5000 + "/orders",
    "postgresql:///orders",
    "postgresql:///orders?host=/var/run/postgresql",
    "postgresql://",
    "postgresql://db",
    "postgresql://db/",
    "postgresql://@db/orders",
    "postgresql://a:b:c@db/orders",
    "postgresql://a@b@db/orders",
    "postgresql://a%40b:p%2Fw@db/or%2Fders",
    "postgresql://db/orders?a=1&a=2&a=3&b=&c",
    "postgresql://db/orders?a=%20x&b=y+z",
    "postgresql://db/orders?",
    "postgresql://db/orders?#frag",
    "postgresql://db/orders#frag",
    "postgresql://db/orders\nx",
    "postgresql://db/orders?x=1\ny=2",
    "postgresql://db/pgbouncer",
    "postgresql://db:6432/pgbouncer?x=1",
    "postgres://app@db/orders",
    "mysql+pymysql://app@db:3306/orders?charset=utf8mb4",
    "mysql://app@db/orders",
    "mysql+mysqldb://app@/orders?unix_socket=/run/mysqld/mysqld.sock",
    "sqlite:///app.db",
    "sqlite:////var/lib/app/app.db",
    "sqlite://",
    "sqlite:///",
    "sqlite:///:memory:",
    "sqlite:///file::memory:?cache=shared",
    "sqlite:///file:app.db?mode=memory&uri=true",
    "sqlite:///file:app.db?mode=ro&mode=memory&uri=true",
    "sqlite:///app.db?mode=memory",
    "sqlite+pysqlite:///a%20b.db",
    "sqlite:///C:/app/app.db",
    "sqlite://host/app.db",
    "not a url",
    "://db/orders",
    "postgre-sql://db/orders",
    "post gresql://db/orders",
    "postgresql:/db/orders",
    "",
]
ALPHABET = "postgresqlmyb+_:/@?&=#%[]. \n\t-9012:65435x\u00e9\u0665"


def generated(count: int, seed: int) -> list[str]:
    """URLs made of the characters that matter to the parser, after a valid scheme or not."""
    rng = random.Random(seed)
    urls = []
    for _ in range(count):
        scheme = rng.choice(["postgresql", "postgresql+psycopg2", "mysql+pymysql", "sqlite", "pg sql", ""])
        body = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 30)))
        urls.append(f"{scheme}://{body}" if rng.random() < 0.9 else scheme + body)
    return urls


ALL = WRITTEN + generated(5000, seed=20261130)


def sqlalchemys(url: str) -> tuple[object, ...] | None:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return None
    return parsed.host, parsed.port, parsed.database, dict(parsed.query)


def ours(url: str) -> tuple[object, ...] | None:
    try:
        parsed = parse_sql_url(url)
    except ValueError:
        return None
    return parsed.host, parsed.port, parsed.database, parsed.query


def test_the_parsers_accept_refuse_and_read_alike():
    differ = [url for url in ALL if ours(url) != sqlalchemys(url)]
    assert differ == []
    accepted = sum(sqlalchemys(url) is not None for url in ALL)
    assert 1000 < accepted < len(ALL)  # both outcomes are well represented


def make_url_as_parse_sql_url(url: str) -> object:
    """SQLAlchemy's parser where ``check_url`` calls its own: ``check_url`` as it was."""
    try:
        return make_url(url)
    except ArgumentError as exc:
        raise ValueError(str(exc)) from None


def outcome(kind: str, url: str) -> str:
    try:
        check_url(kind, url)
    except ValueError as exc:
        return str(exc)
    return "accepted"


def outcomes(kind: str, urls: list[str]) -> list[str]:
    return [outcome(kind, url) for url in urls]


@pytest.mark.parametrize("kind", ["postgres", "mysql", "pgbouncer", "sqlite"])
def test_check_url_answers_as_with_sqlalchemys_parser(kind, monkeypatch):
    urls = WRITTEN + generated(1500, seed=len(kind))
    mine = outcomes(kind, urls)
    monkeypatch.setattr(urls_module, "parse_sql_url", make_url_as_parse_sql_url)
    theirs = outcomes(kind, urls)
    assert [(url, a, b) for url, a, b in zip(urls, mine, theirs, strict=True) if a != b] == []
    assert len(set(mine)) >= 4  # accepted, and refused for several reasons
