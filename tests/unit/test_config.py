"""Configuration: precedence, every validation path, and secret masking. No servers."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from poolwatch.config import DEFAULT_LISTEN, load_settings, validate
from poolwatch.errors import ConfigError
from poolwatch.masking import mask_url, split_password
from poolwatch.urls import parse_listen, sqlalchemy_url

if TYPE_CHECKING:
    from pathlib import Path

PG = "postgresql+psycopg2://app@db.example:5432/orders"


def write(tmp_path: Path, data: Any, name: str = "poolwatch.yaml") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


def target(**overrides: Any) -> dict[str, Any]:
    return {"name": "orders", "kind": "postgres", "url": PG, **overrides}


# --- precedence -------------------------------------------------------------------------------


def test_nothing_configured_gives_the_embedded_sqlite_target(tmp_path: Path) -> None:
    settings = load_settings(environ={"POOLWATCH_STATE_DIR": str(tmp_path)})
    (only,) = settings.targets
    assert (only.name, only.kind) == ("embedded", "sqlite")
    assert only.url == f"sqlite:///{tmp_path / 'embedded.db'}"
    assert settings.source == "embedded SQLite default"
    assert settings.http.listen == DEFAULT_LISTEN


def test_file_listen_is_overridden_by_environment_then_by_flag(tmp_path: Path) -> None:
    path = write(tmp_path, {"http": {"listen": "127.0.0.1:1000"}, "targets": [target()]})
    assert load_settings(path, environ={}).http.listen == "127.0.0.1:1000"
    env = {"POOLWATCH_LISTEN": "127.0.0.1:2000"}
    assert load_settings(path, environ=env).http.listen == "127.0.0.1:2000"
    assert load_settings(path, environ=env, listen="127.0.0.1:3000").http.listen == "127.0.0.1:3000"


def test_config_file_comes_from_poolwatch_config_unless_a_flag_names_one(tmp_path: Path) -> None:
    from_env = write(tmp_path, {"targets": [target(name="from_env")]}, "env.yaml")
    from_flag = write(tmp_path, {"targets": [target(name="from_flag")]}, "flag.yaml")
    env = {"POOLWATCH_CONFIG": from_env}
    assert load_settings(environ=env).targets[0].name == "from_env"
    assert load_settings(from_flag, environ=env).targets[0].name == "from_flag"


def test_environment_urls_define_targets_when_the_file_has_none(tmp_path: Path) -> None:
    env = {"DATABASE_URL": "postgresql://u:p@db:5432/x", "REDIS_URL": "redis://cache:6379/1"}
    settings = load_settings(environ=env)
    assert [(t.name, t.kind) for t in settings.targets] == [("postgres", "postgres"), ("redis", "redis")]
    assert settings.source == "environment (postgres, redis)"
    path = write(tmp_path, {"targets": [target()]})
    assert [t.name for t in load_settings(path, environ=env).targets] == ["orders"]


def test_postgres_variables_build_a_url_with_the_password_quoted() -> None:
    env = {
        "POSTGRES_USER": "app",
        "POSTGRES_PASSWORD": "p@ss:w/rd?#%",
        "POSTGRES_HOST": "db",
        "POSTGRES_PORT": "6543",
        "POSTGRES_DB": "orders",
    }
    (pg,) = load_settings(environ=env).targets
    assert pg.url == "postgresql+psycopg2://app@db:6543/orders"
    assert pg.password is not None
    assert pg.password.get_secret_value() == "p@ss:w/rd?#%"
    assert sqlalchemy_url(pg.url, pg.password).password == "p@ss:w/rd?#%"


def test_database_url_wins_over_postgres_variables() -> None:
    env = {"DATABASE_URL": "postgresql://a@one/x", "POSTGRES_HOST": "two"}
    (only,) = load_settings(environ=env).targets
    assert "one" in only.url


def test_sqlite_database_url_makes_a_sqlite_target(tmp_path: Path) -> None:
    (only,) = load_settings(environ={"DATABASE_URL": f"sqlite:///{tmp_path}/x.db"}).targets
    assert (only.name, only.kind) == ("sqlite", "sqlite")


def test_bad_postgres_port_variable_is_one_line_naming_it() -> None:
    # "²" and "٣" are digits to str.isdigit(); a port is ASCII digits (hypothesis found "²").
    for port in ("five", "²", "٣", "0", "65536"):
        with pytest.raises(ConfigError, match=r"^POSTGRES_PORT: expected a port number"):
            load_settings(environ={"POSTGRES_HOST": "db", "POSTGRES_PORT": port})


def test_load_settings_reads_the_real_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://env-only:6379/0")
    for name in ("POOLWATCH_CONFIG", "DATABASE_URL", "POSTGRES_HOST", "POSTGRES_DB", "POSTGRES_USER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("POSTGRES_PASSWORD", raising=False)
    assert os.environ["REDIS_URL"]
    (only,) = load_settings().targets
    assert only.url == "redis://env-only:6379/0"


def test_defaults_fill_what_the_file_leaves_out() -> None:
    settings = validate({"targets": [target()]})
    pool = settings.targets[0].pool
    assert (pool.size, pool.max_overflow, pool.timeout, pool.pre_ping) == (5, 10, 30.0, True)
    assert settings.targets[0].probe.interval == 15.0
    assert settings.targets[0].reaper.enabled is False
    assert settings.targets[0].reaper.dry_run is True
    assert settings.targets[0].application_name == "poolwatch-orders"


def test_settings_are_frozen() -> None:
    settings = validate({"targets": [target()]})
    with pytest.raises(ValueError, match="frozen"):
        settings.targets[0].pool.size = 99  # type: ignore[misc]


# --- validation: one line naming the key path ---------------------------------------------------

INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("unknown top-level key", {"targts": []}, r"^targts: unknown key"),
    (
        "unknown target key",
        {"targets": [target(colour="red")]},
        r"^targets\[0\]\(orders\)\.colour: unknown key",
    ),
    ("unknown pool key", {"targets": [target(pool={"sise": 5})]}, r"pool\.sise: unknown key"),
    (
        "string size",
        {"targets": [target(pool={"size": "5"})]},
        r"pool\.size: expected a valid integer \(got '5'\)",
    ),
    (
        "interval beyond any float",
        {"targets": [target(probe={"interval": 10**400})]},
        r"^targets\[0\]\(orders\)\.probe\.interval: expected a valid number \(got 1000+\.\.\.\)$",
    ),
    (
        "timeout beyond any float",
        {"targets": [target(census={"timeout": -(10**400)})]},
        r"^targets\[0\]\(orders\)\.census\.timeout: expected a valid number \(got -1000+\.\.\.\)$",
    ),
    (
        "zero size",
        {"targets": [target(pool={"size": 0})]},
        r"pool\.size: expected greater than or equal to 1 \(got 0\)",
    ),
    (
        "negative overflow",
        {"targets": [target(pool={"max_overflow": -1})]},
        r"pool\.max_overflow: expected greater",
    ),
    (
        "zero timeout",
        {"targets": [target(pool={"timeout": 0})]},
        r"pool\.timeout: expected greater than or equal to 0\.1",
    ),
    (
        "bool as string",
        {"targets": [target(pool={"pre_ping": "yes"})]},
        r"pool\.pre_ping: expected a valid boolean",
    ),
    (
        "min_idle above size",
        {"targets": [target(pool={"size": 2, "min_idle": 3})]},
        r"pool: min_idle \(3\) must not exceed size \(2\)",
    ),
    (
        "probe timeout above interval",
        {"targets": [target(probe={"interval": 1, "timeout": 2})]},
        r"probe: timeout \(2\) must not exceed interval \(1\)",
    ),
    ("duplicate names", {"targets": [target(), target()]}, r"^targets: duplicate target name 'orders'"),
    (
        "bad name",
        {"targets": [target(name="has space")]},
        r"\.name: expected letters, digits.* \(got 'has space'\)",
    ),
    (
        "unsupported kind",
        {"targets": [target(kind="oracle")]},
        r"\.kind: expected 'postgres', 'mysql', 'pgbouncer', 'sqlite' or 'redis' \(got 'oracle'\)",
    ),
    (
        "missing url",
        {"targets": [{"name": "x", "kind": "redis"}]},
        r"targets\[0\]\(x\)\.url: required key is missing",
    ),
    (
        "scheme of another kind",
        {"targets": [target(url="redis://h:6379/0")]},
        r"url scheme redis:// does not fit kind postgres",
    ),
    ("no scheme", {"targets": [target(url="db.example:5432")]}, r"url must look like postgresql://"),
    ("postgres without host", {"targets": [target(url="postgresql:///orders")]}, r"url needs a host"),
    ("bad port", {"targets": [target(url="postgresql://u@h:99999/db")]}, r"invalid port"),
    (
        "redis db not a number",
        {"targets": [{"name": "c", "kind": "redis", "url": "redis://h:6379/x"}]},
        r"database must be a number",
    ),
    ("targets not a list", {"targets": {"name": "x"}}, r"^targets: expected a valid tuple"),
    ("target not a mapping", {"targets": ["postgresql://h/db"]}, r"^targets\[0\]: expected a mapping"),
    ("listen without port", {"http": {"listen": "localhost"}}, r"^http\.listen: expected host:port"),
    ("listen port too big", {"http": {"listen": "127.0.0.1:70000"}}, r"^http\.listen: expected host:port"),
    ("log level", {"log": {"level": "LOUD"}}, r"^log\.level: expected 'DEBUG'"),
    ("basic auth not bcrypt", {"http": {"basic_auth_users": {"prom": "plain"}}}, r"must be a bcrypt hash"),
    (
        "reaper without timeout",
        {"targets": [target(reaper={"enabled": True})]},
        r"reaper: an enabled reaper needs",
    ),
    ("password twice", {"targets": [target(url="postgresql://u:pw@h/db", password_file="/x")]}, r"not both"),
]


@pytest.mark.parametrize(("case", "data", "pattern"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_configuration_is_one_line_naming_the_key(
    case: str, data: dict[str, Any], pattern: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        validate(data)
    message = str(caught.value)
    assert "\n" not in message, case
    assert "Traceback" not in message
    assert re.search(pattern, message), message


def test_several_errors_report_the_first_and_count_the_rest() -> None:
    with pytest.raises(ConfigError, match=r"\(and 1 more\)$"):
        validate({"targets": [target(pool={"size": 0, "timeout": 0})]})


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("", r"the configuration file is empty"),
        ("targets: [\n", r"not valid YAML at line \d+, column \d+"),
        ("- a\n- b\n", r"expected a mapping at the top level, got list"),
        ("\x00\x01", r"not valid YAML|not UTF-8"),
    ],
)
def test_unusable_files_are_one_line(tmp_path: Path, text: str, pattern: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=pattern):
        load_settings(path, environ={})


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"the configuration file does not exist"):
        load_settings(str(tmp_path / "nope.yaml"), environ={})


def test_unreadable_password_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "secret"
    with pytest.raises(ConfigError, match=r"password_file .*secret does not exist"):
        validate({"targets": [target(password_file=str(missing))]})
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match=r"password_file .*empty is empty"):
        validate({"targets": [target(password_file=str(empty))]})


def test_password_file_is_read_without_its_newline(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t\n")
    settings = validate({"targets": [target(password_file=str(secret))]})
    password = settings.targets[0].password
    assert password is not None
    assert password.get_secret_value() == "s3cr3t"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:18187", ("127.0.0.1", 18187)),
        (":9000", ("0.0.0.0", 9000)),
        ("[::1]:80", ("::1", 80)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_listen_addresses(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


# --- secrets -----------------------------------------------------------------------------------

SECRET = "hunter2-Zq9"


def test_password_in_url_is_split_out_and_masked_everywhere() -> None:
    settings = validate({"targets": [target(url=f"postgresql://app:{SECRET}@db:5432/orders")]})
    pg = settings.targets[0]
    assert SECRET not in pg.url
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings.public_dict())
    assert SECRET not in str(sqlalchemy_url(pg.url, pg.password))  # SQLAlchemy's URL masks it too
    assert pg.display_url() == "postgresql://app:***@db:5432/orders"
    assert settings.secrets() == [SECRET]


def test_redis_password_is_split_out() -> None:
    settings = validate({"targets": [{"name": "c", "kind": "redis", "url": f"redis://:{SECRET}@h:6379/0"}]})
    (cache,) = settings.targets
    assert cache.url == "redis://h:6379/0"
    assert cache.display_url() == "redis://:***@h:6379/0"
    assert SECRET not in repr(cache)


def test_a_rejected_url_is_printed_without_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        validate({"targets": [target(url=f"mysql://app:{SECRET}@db/x")]})
    assert SECRET not in str(caught.value)


def test_url_helpers_keep_percent_escapes() -> None:
    assert split_password("postgresql://u:a%40b@h/db") == ("postgresql://u@h/db", "a@b")
    assert split_password("redis://h:6379/0") == ("redis://h:6379/0", None)
    assert mask_url("postgresql://u@h/db", has_password=True) == "postgresql://u:***@h/db"


# --- values that cannot work ---------------------------------------------------------------------

TINY = [
    ("probe.interval", {"targets": [target(probe={"interval": 1e-9, "timeout": 1e-9})]}),
    ("probe.timeout", {"targets": [target(probe={"timeout": 1e-9})]}),
    ("probe.auth_backoff_max", {"targets": [target(probe={"auth_backoff_max": 1e-300})]}),
    ("census.interval", {"targets": [target(census={"interval": 0.01})]}),
    ("reaper.timeout", {"targets": [target(reaper={"timeout": 0.05})]}),
    ("pool.keepalive", {"targets": [target(pool={"keepalive": 1e-6})]}),
    ("pool.housekeeping_interval", {"targets": [target(pool={"housekeeping_interval": 0.001})]}),
    ("http.request_timeout", {"http": {"request_timeout": 1e-300}}),
]


@pytest.mark.parametrize(("key", "data"), TINY, ids=[key for key, _ in TINY])
def test_durations_below_a_tenth_of_a_second_are_refused(key: str, data: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as caught:
        validate(data)
    assert key in str(caught.value)
    assert "expected greater than or equal to 0.1" in str(caught.value)


def test_the_smallest_durations_are_accepted() -> None:
    settings = validate(
        {"targets": [target(probe={"interval": 0.1, "timeout": 0.1, "auth_backoff_max": 0.1})]}
    )
    assert settings.targets[0].probe.timeout == 0.1


# --- defaults follow the values the user wrote ---------------------------------------------------


@pytest.mark.parametrize(
    ("job", "written", "expected"),
    [
        ("probe", {"interval": 1}, (1, 1)),
        ("probe", {"interval": 2.5}, (2.5, 2.5)),
        ("probe", {"interval": 60}, (60, 5)),
        ("probe", {"timeout": 20}, (20, 20)),
        ("census", {"interval": 1}, (1, 1)),
        ("census", {"timeout": 30}, (30, 30)),
        ("reaper", {"interval": 5}, (5, 5)),
        ("reaper", {"timeout": 90}, (90, 90)),
        ("reaper", {}, (60, 10)),
    ],
)
def test_a_default_follows_the_interval_or_timeout_the_user_chose(
    job: str, written: dict[str, float], expected: tuple[float, float]
) -> None:
    settings = validate({"targets": [target(**{job: written})]})
    chosen = getattr(settings.targets[0], job)
    assert (chosen.interval, chosen.timeout) == expected


@pytest.mark.parametrize("job", ["probe", "census", "reaper"])
def test_a_conflict_is_reported_only_between_two_values_the_user_wrote(job: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate({"targets": [target(**{job: {"interval": 5, "timeout": 10}})]})
    assert str(caught.value) == f"targets[0](orders).{job}: timeout (10) must not exceed interval (5)"


# --- SQLite ----------------------------------------------------------------------------------------

IN_MEMORY = [
    "sqlite:///:memory:",
    "sqlite://",
    "sqlite:///file::memory:?uri=true",
    "sqlite:///file:x?mode=memory",
]


@pytest.mark.parametrize("url", IN_MEMORY)
def test_an_in_memory_sqlite_database_is_refused_in_one_line(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate({"targets": [{"name": "mem", "kind": "sqlite", "url": url}]})
    assert str(caught.value).startswith("targets[0](mem): url names an in-memory SQLite database")
    assert "\n" not in str(caught.value)


def test_a_sqlite_file_in_a_missing_directory_is_refused_and_nothing_is_created(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(ConfigError) as caught:
        validate({"targets": [{"name": "lite", "kind": "sqlite", "url": f"sqlite:///{missing}/app.db"}]})
    assert (
        str(caught.value)
        == f"targets[0](lite): url points into the directory '{missing}', which does not exist (create it first)"
    )
    assert not (tmp_path / "no").exists()


def test_the_state_directory_may_be_missing_until_the_daemon_creates_it(tmp_path: Path) -> None:
    state = tmp_path / "state" / "poolwatch"
    (only,) = load_settings(environ={"POOLWATCH_STATE_DIR": str(state)}).targets
    assert only.url == f"sqlite:///{state}/embedded.db"
    assert not state.exists(), "reading the configuration creates nothing"


def test_sqlite_targets_show_no_census_or_reaper(tmp_path: Path) -> None:
    shown = validate({"targets": [{"name": "lite", "kind": "sqlite", "url": f"sqlite:///{tmp_path}/a.db"}]})
    (lite,) = shown.public_dict()["targets"]
    assert "census" not in lite
    assert "reaper" not in lite
    (pg,) = validate({"targets": [target()]}).public_dict()["targets"]
    assert pg["census"]["enabled"] is True


# --- environment ---------------------------------------------------------------------------------


def test_the_seed_db_variables_are_refused_naming_the_ones_read() -> None:
    env = {"DB_HOST": "db", "DB_USER": "app", "DB_PASSWORD": "s3cr3t-Pa55", "DB_NAME": "orders"}
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=env)
    message = str(caught.value)
    assert message.startswith(
        "DB_HOST, DB_USER, DB_PASSWORD, DB_NAME: not read by poolwatch; set DATABASE_URL"
    )
    assert "POSTGRES_HOST, POSTGRES_PORT, POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB" in message
    assert "s3cr3t-Pa55" not in message


def test_db_variables_next_to_the_ones_read_are_left_alone() -> None:
    env = {"DATABASE_URL": "postgresql://app@db/orders", "DB_PASSWORD": "x"}
    assert [t.name for t in load_settings(environ=env).targets] == ["postgres"]


def test_a_user_without_a_home_directory_needs_the_state_directory_only_for_the_embedded_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A container's arbitrary uid has no passwd entry, and maybe no HOME.
    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr("pathlib.Path.home", no_home)
    assert load_settings(environ={"REDIS_URL": "redis://cache:6379/0"}).targets[0].name == "redis"
    with pytest.raises(
        ConfigError, match=r"no home directory for the embedded database: set POOLWATCH_STATE_DIR$"
    ):
        load_settings(environ={})
