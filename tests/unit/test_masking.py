"""Secret masking: where secrets stand (URLs, DSNs, reprs, headers) every value is masked, whoever's;
a configured password is masked anywhere only when it is distinctive, so that short and common-word
passwords leave ordinary text intact. No servers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from poolwatch.errors import first_line
from poolwatch.masking import MASK, Redactor, distinctive, mask_text

WEAK = ["postgres", "a", "redis", "secret", "123456", "hunter"]

# Lines as poolwatch, SQLAlchemy, psycopg2 and redis-py write them, with {pw} where a password stands.
SECRET_POSITIONS = [
    "engine postgresql+psycopg2://app:{pw}@db:5432/orders created",
    "redis://:{pw}@cache:6379/0 refused",
    "rediss://default:{pw}@[::1]:6380/1",
    "invalid dsn: host=db port=5432 password={pw} dbname=orders",
    "connect_args {{'user': 'app', 'password': '{pw}', 'host': 'db'}}",
    '{{"password": "{pw}", "db": 0}}',
    "Authorization: Basic {pw}",
    "authorization: Bearer {pw}",
    "PASSWORD={pw}&sslmode=require",
    "config requirepass={pw}",
]
# What poolwatch prints where a weak password is also an ordinary word.
ORDINARY = [
    "poolwatch 0.1.0: configuration from file poolwatch.yaml; targets postgres (postgres), redis (redis)",
    (
        'connection to server at "127.0.0.1", port 5432 failed: FATAL:  password authentication failed '
        'for user "postgres"'
    ),
    "probe of cache failed (auth): cache: invalid username-password pair or user is disabled.",
    "a target is down; census of redis withdrawn; 123456 sessions",
    "password_file /run/secrets/orders does not exist",
]


@pytest.mark.parametrize("password", [*WEAK, "s3cr3t-Pa55", "p%40ss%2Fw%3Ard"])
@pytest.mark.parametrize("line", SECRET_POSITIONS)
def test_a_password_where_secrets_stand_is_masked_whatever_it_is(line: str, password: str) -> None:
    # Configured or not: a password in these places is masked even when poolwatch never saw it.
    for redact in (Redactor([password]), Redactor()):
        assert redact(line.format(pw=password)) == line.format(pw=MASK)


@pytest.mark.parametrize("password", WEAK)
def test_short_and_common_word_passwords_leave_ordinary_text_intact(password: str) -> None:
    redact = Redactor([password])
    for line in ORDINARY:
        assert redact(line) == line


def test_a_one_letter_password_is_not_given_away_by_masking_every_letter() -> None:
    line = "targets orders (postgres), cache (redis); /metrics on http://127.0.0.1:18187/metrics"
    assert Redactor(["a"])(line) == line
    assert Redactor(["a"])("redis://:a@cache:6379/0") == f"redis://:{MASK}@cache:6379/0"


def test_a_distinctive_password_is_masked_anywhere_with_its_quoted_forms() -> None:
    password = "p@ss word/:%?#"
    redact = Redactor([password])
    for form in (password, "p%40ss%20word%2F%3A%25%3F%23", "p%40ss%20word/%3A%25%3F%23"):
        assert redact(f"a driver said {form}!") == f"a driver said {MASK}!"


@pytest.mark.parametrize(
    ("secret", "expected"),
    [
        ("postgres", False),
        ("a", False),
        ("redis", False),
        ("123456", False),
        ("Secret", False),
        ("hunter2", True),
        ("s3cr3t-Pa55", True),
        ("correcthorsebatterystaple", True),
    ],
)
def test_which_secrets_are_distinctive(secret: str, expected: bool) -> None:
    assert distinctive(secret) is expected


@pytest.mark.parametrize("password", ["ab'cd", 'ab"cd', "p@ss", "a:b"])
def test_a_url_password_with_quotes_colons_or_at_signs_is_masked_whole(password: str) -> None:
    line = f"connect to {'redis://:' + password + '@cache:6379/0'!r} failed"
    masked = Redactor()(line)
    assert password not in masked
    assert ":***@cache:6379/0" in masked


def test_masking_keeps_what_is_around_a_secret() -> None:
    assert mask_text("url=postgresql://u:pw@h/db next") == f"url=postgresql://u:{MASK}@h/db next"
    assert mask_text("password_file /x, passwords: 3") == "password_file /x, passwords: 3"
    assert mask_text("postgresql://u@h/db") == "postgresql://u@h/db"


def test_driver_error_lines_are_masked_where_they_are_made() -> None:
    assert first_line("could not connect to redis://:hunter2@cache:6379/0\nmore") == (
        f"could not connect to redis://:{MASK}@cache:6379/0"
    )


def test_the_masking_module_imports_nothing_of_poolwatch() -> None:
    source = Path(__file__).parents[2] / "poolwatch" / "masking.py"
    imported = {
        alias.name if isinstance(node, ast.Import) else str(node.module)
        for node in ast.walk(ast.parse(source.read_text()))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not {name for name in imported if name.startswith("poolwatch")}
