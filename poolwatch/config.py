"""Settings: defaults < YAML file < environment < CLI flags, validated once into frozen objects.

This is the only module that reads the environment. Passwords are split out of URLs on load and kept
as ``SecretStr``; everything printable (``repr``, ``poolwatch config``, errors) shows the URL without
them (``urls.py``). Every validation failure becomes one ``ConfigError`` line naming the key path
(``config_errors.py``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from poolwatch.config_errors import describe_validation_error
from poolwatch.errors import ConfigError
from poolwatch.urls import (
    MASK,
    check_url,
    mask_url,
    parse_listen,
    postgres_url,
    split_password,
    sqlalchemy_url,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

Kind = Literal["postgres", "mysql", "pgbouncer", "sqlite", "redis"]
DEFAULT_LISTEN = "127.0.0.1:18187"

Seconds = Annotated[float, Field(gt=0, le=7 * 24 * 3600)]
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,62}$"
PROCEDURE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_$]{0,63}(\.[A-Za-z_][A-Za-z0-9_$]{0,63})?$"
# How a pattern mismatch reads in an error line; any other pattern is shown as it is.
_PATTERN_MEANINGS = {
    NAME_PATTERN: "letters, digits, '_', '.' or '-', starting with a letter or '_', at most 63",
    PROCEDURE_PATTERN: "a stored procedure name, optionally schema-qualified (mysql.rds_kill)",
}
# YAML gives lists; the frozen models keep tuples. strict=False here admits the list container only:
# the items are still validated strictly (a name must be a string, a threshold a number).
Names = Annotated[tuple[Annotated[str, Field(strict=True, min_length=1)], ...], Field(strict=False)]


class _Model(BaseModel):
    # strict: a YAML string "5" is not a size; extra=forbid: a typo is an error, not a silent default.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class PoolSettings(_Model):
    """The SQLAlchemy pool poolwatch builds for a target, and its housekeeping."""

    size: Annotated[int, Field(ge=1, le=10_000)] = 5
    max_overflow: Annotated[int, Field(ge=0, le=10_000)] = 10
    timeout: Seconds = 30.0
    pre_ping: bool = True
    recycle: Seconds | None = 3600.0
    connect_timeout: Annotated[float, Field(ge=1, le=3600)] = 5.0
    application_name: Annotated[str, Field(min_length=1, max_length=63)] | None = None
    min_idle: Annotated[int, Field(ge=0, le=10_000)] = 0
    idle_timeout: Seconds | None = 600.0
    max_lifetime: Seconds | None = 1800.0
    keepalive: Seconds | None = 120.0
    leak_threshold: Seconds | None = None
    housekeeping_interval: Seconds = 30.0

    @model_validator(mode="after")
    def _floor_within_size(self) -> PoolSettings:
        if self.min_idle > self.size:
            raise ValueError(f"min_idle ({self.min_idle}) must not exceed size ({self.size})")
        return self


class ProbeSettings(_Model):
    """How often each target is probed, and how long one probe may take."""

    interval: Seconds = 15.0
    timeout: Seconds = 5.0
    # After consecutive authentication failures the probe waits 2x, 4x, ... its interval between
    # attempts, up to this: a wrong password is not fixed by retrying, and each attempt is a failed
    # login in the server's log (and may count towards a lockout).
    auth_backoff_max: Seconds = 300.0

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> ProbeSettings:
        if self.timeout > self.interval:
            raise ValueError(f"timeout ({self.timeout:g}) must not exceed interval ({self.interval:g})")
        return self


class CensusSettings(_Model):
    """Server-side session counts; label values limited to the names listed here."""

    enabled: bool = True
    interval: Seconds = 15.0
    timeout: Seconds = 5.0
    databases: Names = ()
    users: Names = ()
    applications: Names = ()
    idle_thresholds: Annotated[
        tuple[Annotated[float, Field(strict=True, gt=0)], ...], Field(strict=False)
    ] = (60.0, 300.0, 3600.0)


class ReaperSettings(_Model):
    """Which idle server sessions may be terminated. Off and dry-run by default."""

    enabled: bool = False
    dry_run: bool = True
    interval: Seconds = 60.0
    timeout: Seconds = 10.0
    idle_timeout: Seconds | None = None
    idle_in_transaction_timeout: Seconds | None = None
    databases: Names = ()
    exclude_databases: Names = ()
    users: Names = ()
    exclude_users: Names = ()
    applications: Names = ()
    exclude_applications: Names = ()
    allow_superusers: bool = False
    allow_pubsub: bool = False
    allow_monitors: bool = False
    allow_replicas: bool = False
    max_per_run: Annotated[int, Field(ge=1, le=10_000)] = 20
    # MySQL only: kill through this stored procedure (``mysql.rds_kill`` on Amazon RDS) instead of
    # ``KILL CONNECTION``; it is called with the connection id.
    kill_procedure: Annotated[str, Field(pattern=PROCEDURE_PATTERN)] | None = None

    @model_validator(mode="after")
    def _needs_a_timeout(self) -> ReaperSettings:
        if self.enabled and self.idle_timeout is None and self.idle_in_transaction_timeout is None:
            raise ValueError("an enabled reaper needs idle_timeout or idle_in_transaction_timeout")
        if self.enabled and not (self.databases or self.users or self.applications):
            # An empty scope would mean "every session on the server": make the operator say so.
            raise ValueError(
                "an enabled reaper needs databases, users or applications "
                "(applications: ['*'] means every application)"
            )
        if self.timeout > self.interval:
            raise ValueError(f"timeout ({self.timeout:g}) must not exceed interval ({self.interval:g})")
        return self

    @property
    def lease_ttl(self) -> float:
        """How long a leader's lease lasts without renewal: two missed runs, then another replica
        may take over."""
        return 2 * self.interval + self.timeout


class TargetSettings(_Model):
    """One monitored database or Redis server. ``url`` never holds the password."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    kind: Kind
    url: str
    password: SecretStr | None = None
    password_file: str | None = None
    pool: PoolSettings = PoolSettings()
    probe: ProbeSettings = ProbeSettings()
    census: CensusSettings = CensusSettings()
    reaper: ReaperSettings = ReaperSettings()

    @model_validator(mode="before")
    @classmethod
    def _split_password(cls, data: Any) -> Any:
        """Move a password out of the URL (and out of ``password_file``) before anything prints it."""
        if not isinstance(data, dict) or not isinstance(data.get("url"), str):
            return data
        data = dict(data)
        url, password = split_password(data["url"])
        data["url"] = url
        if password is not None:
            if data.get("password_file") is not None:
                raise ValueError("give the password in url or in password_file, not both")
            data["password"] = SecretStr(password)
        password_file = data.get("password_file")
        if isinstance(password_file, str):
            data["password"] = SecretStr(_read_password_file(password_file))
        elif isinstance(data.get("password"), str):
            data["password"] = SecretStr(data["password"])
        return data

    @model_validator(mode="after")
    def _url_matches_kind(self) -> TargetSettings:
        check_url(self.kind, self.url)
        if self.reaper.enabled and self.kind in ("sqlite", "pgbouncer"):
            raise ValueError(f"the reaper works on postgres, mysql and redis targets, not {self.kind}")
        if self.reaper.kill_procedure is not None and self.kind != "mysql":
            raise ValueError("reaper.kill_procedure applies to mysql targets only")
        return self

    @property
    def application_name(self) -> str:
        """What the server sees as this pool's application_name / CLIENT SETNAME."""
        return self.pool.application_name or f"poolwatch-{self.name}"

    def display_url(self) -> str:
        """The URL as it may be printed: with ``***`` where a password is set."""
        return mask_url(self.url, self.password is not None)


class TlsSettings(_Model):
    """TLS for the HTTP endpoint; ``client_ca_file`` turns on client-certificate verification."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None

    @field_validator("cert_file", "key_file", "client_ca_file")
    @classmethod
    def _readable_file(cls, value: str | None) -> str | None:
        # Checked here so `poolwatch config` reports it too; whether the PEM is valid is known only
        # when the endpoint loads it (http.py), which fails with a ConfigError as well.
        if value is not None and not Path(value).is_file():
            raise ValueError(f"{value} is not a file")
        if value is not None and not os.access(value, os.R_OK):
            raise ValueError(f"{value} is not readable (permission denied)")
        return value


class HttpSettings(_Model):
    """The /metrics endpoint. ``basic_auth_users`` maps user names to bcrypt hashes."""

    listen: str = DEFAULT_LISTEN
    tls: TlsSettings | None = None
    basic_auth_users: dict[str, SecretStr] = Field(default_factory=dict)
    max_request_bytes: Annotated[int, Field(ge=1024, le=1 << 20)] = 16384
    request_timeout: Seconds = 10.0
    # Connections served at once; more are closed at accept. Each holds a thread for at most
    # request_timeout, so a crowd of slow clients costs bounded threads and memory.
    max_connections: Annotated[int, Field(ge=1, le=10_000)] = 64

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("basic_auth_users", mode="before")
    @classmethod
    def _bcrypt_hashes(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        checked: dict[str, SecretStr] = {}
        for user, hashed in value.items():
            if not isinstance(hashed, str) or not re.fullmatch(r"\$2[abxy]?\$\d\d\$.{53}", hashed):
                raise ValueError(f"the password of user {user!r} must be a bcrypt hash ($2b$...)")
            checked[str(user)] = SecretStr(hashed)
        return checked

    @property
    def address(self) -> tuple[str, int]:
        return parse_listen(self.listen)


class AuditSettings(_Model):
    """Where reaper decisions are recorded: a PostgreSQL database, with a local spool."""

    url: str | None = None
    password: SecretStr | None = None
    password_file: str | None = None
    table: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,54}$")] = "poolwatch_audit"
    spool_path: str | None = None
    spool_max: Annotated[int, Field(ge=1, le=10_000_000)] = 10_000
    connect_timeout: Annotated[float, Field(ge=1, le=3600)] = 5.0

    @model_validator(mode="before")
    @classmethod
    def _split_password(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("url"), str):
            return data
        data = dict(data)
        data["url"], password = split_password(data["url"])
        if password is not None:
            data["password"] = SecretStr(password)
        if isinstance(data.get("password_file"), str):
            data["password"] = SecretStr(_read_password_file(data["password_file"]))
        return data

    @model_validator(mode="after")
    def _postgres_only(self) -> AuditSettings:
        if self.url is not None:
            check_url("postgres", self.url)
        return self

    def display_url(self) -> str | None:
        return None if self.url is None else mask_url(self.url, self.password is not None)

    def sqlalchemy_url(self) -> Any:
        """The audit database's ``sqlalchemy.engine.URL`` with its password (masked when printed)."""
        if self.url is None:
            raise ConfigError("audit.url is not configured")
        return sqlalchemy_url(self.url, self.password)


class LogSettings(_Model):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class Settings(_Model):
    """The whole validated configuration. ``source`` says where the targets came from."""

    http: HttpSettings = HttpSettings()
    log: LogSettings = LogSettings()
    targets: Annotated[tuple[TargetSettings, ...], Field(strict=False)] = ()
    audit: AuditSettings = AuditSettings()
    source: str = "defaults"

    @model_validator(mode="after")
    def _enforcing_needs_audit(self) -> Settings:
        for target in self.targets:
            if target.reaper.enabled and not target.reaper.dry_run and self.audit.url is None:
                # Every termination is recorded in a table before it is forgotten; no table, no kills.
                raise ValueError(
                    f"targets.{target.name}.reaper: dry_run false needs audit.url "
                    "(every termination is recorded in the audit table)"
                )
        return self

    @field_validator("targets")
    @classmethod
    def _unique_names(cls, targets: tuple[TargetSettings, ...]) -> tuple[TargetSettings, ...]:
        seen: set[str] = set()
        for target in targets:
            if target.name in seen:
                raise ValueError(f"duplicate target name {target.name!r}")
            seen.add(target.name)
        return targets

    def secrets(self) -> list[str]:
        """Every secret value in the configuration, for log redaction."""
        values = [t.password.get_secret_value() for t in self.targets if t.password]
        if self.audit.password:
            values.append(self.audit.password.get_secret_value())
        return [v for v in values if v]

    def public_dict(self) -> dict[str, Any]:
        """The effective configuration as ``poolwatch config`` prints it: secrets masked."""
        data = self.model_dump(mode="json", exclude={"source"})
        for shown, target in zip(data["targets"], self.targets, strict=True):
            shown["url"] = target.display_url()
            shown["password"] = MASK if target.password else None
        data["audit"]["url"] = self.audit.display_url()
        data["audit"]["password"] = MASK if self.audit.password else None
        data["http"]["basic_auth_users"] = dict.fromkeys(self.http.basic_auth_users, MASK)
        return data


class Environment(BaseSettings):
    """The environment variables poolwatch reads; nothing else looks at ``os.environ``."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", frozen=True)

    config: str | None = Field(None, validation_alias="POOLWATCH_CONFIG")
    listen: str | None = Field(None, validation_alias="POOLWATCH_LISTEN")
    log_level: str | None = Field(None, validation_alias="POOLWATCH_LOG_LEVEL")
    state_dir: str | None = Field(None, validation_alias="POOLWATCH_STATE_DIR")
    database_url: str | None = Field(None, validation_alias="DATABASE_URL")
    redis_url: str | None = Field(None, validation_alias="REDIS_URL")
    postgres_user: str | None = Field(None, validation_alias="POSTGRES_USER")
    postgres_password: str | None = Field(None, validation_alias="POSTGRES_PASSWORD")
    postgres_host: str | None = Field(None, validation_alias="POSTGRES_HOST")
    postgres_port: str | None = Field(None, validation_alias="POSTGRES_PORT")
    postgres_db: str | None = Field(None, validation_alias="POSTGRES_DB")
    http_user: str | None = Field(None, validation_alias="POOLWATCH_HTTP_USER")
    http_password: str | None = Field(None, validation_alias="POOLWATCH_HTTP_PASSWORD")
    no_color: str | None = Field(None, validation_alias="NO_COLOR")


def load_settings(
    config_file: str | None = None,
    *,
    listen: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the effective settings. ``environ`` replaces ``os.environ`` (tests pass their own)."""
    env = _read_environment(environ)
    path = config_file or env.config
    data: dict[str, Any] = _read_yaml(path) if path else {}
    source = f"file {path}" if path else "defaults"
    if env.listen:
        data.setdefault("http", {})
        _require_mapping(data["http"], "http")
        data["http"] = {**data["http"], "listen": env.listen}
    if env.log_level:
        data.setdefault("log", {})
        _require_mapping(data["log"], "log")
        data["log"] = {**data["log"], "level": env.log_level.upper()}
    if not data.get("targets"):
        env_targets = _environment_targets(env)
        if env_targets:
            data["targets"] = env_targets
            source = "environment (" + ", ".join(t["name"] for t in env_targets) + ")"
        else:
            data["targets"] = [embedded_target(env.state_dir)]
            source = "embedded SQLite default"
    if listen is not None:
        data.setdefault("http", {})
        _require_mapping(data["http"], "http")
        data["http"] = {**data["http"], "listen": listen}
    data["source"] = source
    return validate(data)


@dataclass(frozen=True)
class ClientSettings:
    """How ``poolwatch status`` reaches a running daemon, and how it prints."""

    base_url: str  # scheme://host:port, no credentials
    cert_file: str | None  # the daemon's certificate (trusted as well as the system's CAs)
    user: str | None
    password: SecretStr | None
    color: bool  # False when NO_COLOR is set


def client_settings(
    config_file: str | None = None, *, locate: bool = True, environ: Mapping[str, str] | None = None
) -> ClientSettings:
    """Where the daemon of this configuration listens: ``http.listen`` (or ``POOLWATCH_LISTEN``),
    over HTTPS when ``http.tls`` is set; with ``locate`` False (a URL was given) no file is read.
    Only the ``http`` section is read: the targets' password files may be unreadable to whoever
    asks for the status, and do not matter to it."""
    env = _read_environment(environ)
    path = (config_file or env.config) if locate else None
    http = _read_yaml(path).get("http", {}) if path else {}
    _require_mapping(http, "http")
    listen = (env.listen if locate else None) or http.get("listen", DEFAULT_LISTEN)
    tls = http.get("tls")
    if tls is not None:
        _require_mapping(tls, "http.tls")
    try:
        host, port = parse_listen(listen if isinstance(listen, str) else repr(listen))
    except ValueError as exc:
        raise ConfigError(f"http.listen: {exc}") from None
    # A daemon listening on every interface is asked on the loopback one.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104
    host = f"[{host}]" if ":" in host else host
    cert = tls.get("cert_file") if tls else None
    return ClientSettings(
        base_url=f"{'https' if tls else 'http'}://{host}:{port}",
        cert_file=cert if isinstance(cert, str) else None,
        user=env.http_user or None,
        password=SecretStr(env.http_password) if env.http_password else None,
        color=not env.no_color,
    )


def validate(data: Mapping[str, Any]) -> Settings:
    """Validate a configuration mapping; any failure is one ConfigError line."""
    try:
        return Settings.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, data, _PATTERN_MEANINGS)) from None
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc)) from None


def _read_environment(environ: Mapping[str, str] | None) -> Environment:
    """pydantic-settings reads the process environment; a mapping a caller gives is used instead.

    Every field is an optional string, so there is nothing to reject here: values are checked where
    they are used (``POSTGRES_PORT``, the URLs, the listen address)."""
    if environ is None:
        return Environment()
    values = {
        name: environ[alias]
        for name, field in Environment.model_fields.items()
        if isinstance(alias := field.validation_alias, str) and alias in environ
    }
    return Environment.model_construct(None, **values)


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a YAML file") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied reading the configuration file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid syntax"
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if data is None:
        raise ConfigError(f"{path}: the configuration file is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    if "source" in data:
        raise ConfigError("source: unknown key")
    return data


def _require_mapping(value: Any, path: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a mapping (got a {type(value).__name__})")


def _environment_targets(env: Environment) -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = []
    if env.database_url:
        url = env.database_url
        kind = "sqlite" if url.startswith("sqlite") else "mysql" if url.startswith("mysql") else "postgres"
        targets.append({"name": kind, "kind": kind, "url": env.database_url})
    elif any((env.postgres_host, env.postgres_db, env.postgres_user, env.postgres_password)):
        targets.append({"name": "postgres", "kind": "postgres", "url": postgres_url(env)})
    if env.redis_url:
        targets.append({"name": "redis", "kind": "redis", "url": env.redis_url})
    return targets


def embedded_target(state_dir: str | None = None) -> dict[str, Any]:
    """The SQLite database poolwatch watches when nothing else is configured."""
    base = Path(state_dir) if state_dir else Path.home() / ".local" / "state" / "poolwatch"
    return {"name": "embedded", "kind": "sqlite", "url": f"sqlite:///{base / 'embedded.db'}"}


def _read_password_file(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"password_file {path} does not exist") from None
    except PermissionError:
        raise ValueError(f"password_file {path} is not readable (permission denied)") from None
    except IsADirectoryError:
        raise ValueError(f"password_file {path} is a directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"password_file {path} cannot be read ({type(exc).__name__})") from None
    password = text.rstrip("\r\n")
    if not password:
        raise ValueError(f"password_file {path} is empty")
    return password
