"""Settings: defaults < YAML file < environment < CLI flags, validated once into frozen objects.

This is the only module that reads the environment. Passwords are split out of URLs on load and kept
as ``SecretStr``; everything printable (``repr``, ``poolwatch config``, errors) shows the URL without
them (``masking.py``). Every validation failure becomes one ``ConfigError`` line naming the key path
(``config_errors.py``); files are read bounded and strict (``config_file.py``).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal
from urllib.parse import quote

from poolwatch.config_errors import describe_validation_error
from poolwatch.config_file import read_yaml
from poolwatch.config_otlp import OtlpSettings  # noqa: TC001 - the models read it at runtime
from poolwatch.errors import ConfigError
from poolwatch.masking import MASK, mask_url, printable
from poolwatch.schema import (
    Field,
    Model,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from poolwatch.urls import (
    check_sqlite_directory,
    check_url,
    parse_listen,
    split_url_password,
    sqlalchemy_url,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

Kind = Literal["postgres", "mysql", "pgbouncer", "sqlite", "redis"]
DEFAULT_LISTEN = "127.0.0.1:18187"
EMBEDDED_SOURCE: Final = "embedded SQLite default"

# Every duration: below 0.1 s no probe, scrape or query round trip can finish (a probe with a 1 ns
# timeout never succeeds), above a week it is a typo.
MIN_SECONDS: Final = 0.1
MAX_SECONDS: Final = 7 * 24 * 3600
Seconds = Annotated[float, Field(ge=MIN_SECONDS, le=MAX_SECONDS)]
_MAX_PORT: Final = 65535
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
# A reaper host pattern written with a port ("10.0.0.5:3306") or in brackets ("[::1]"): never matches.
_HOST_WITH_PORT: Final = re.compile(r"^[^:]*:[0-9*?]*$|^\[[^\]]*:")


class _Model(Model):
    """Frozen and strict (``schema.py``): a YAML string "5" is not a size, and an unknown key (a typo)
    is an error, not a silent default."""


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


class _Periodic(_Model):
    """A job's ``interval`` and ``timeout``. A default follows the value the user gave: with only
    ``interval: 1`` the timeout is ``min(default, 1)``, with only ``timeout: 20`` the interval is
    ``max(default, 20)``; so ``timeout <= interval`` can only fail on two values the user wrote."""

    interval: Seconds
    timeout: Seconds

    @model_validator(mode="before")
    @classmethod
    def _defaults_follow(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        interval, timeout = data.get("interval"), data.get("timeout")
        if "timeout" not in data and _is_number(interval):
            return {**data, "timeout": min(cls.model_fields["timeout"].default, interval)}
        if "interval" not in data and _is_number(timeout):
            return {**data, "interval": max(cls.model_fields["interval"].default, timeout)}
        return data

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> _Periodic:
        if self.timeout > self.interval:
            raise ValueError(f"timeout ({self.timeout:g}) must not exceed interval ({self.interval:g})")
        return self


def _is_number(value: Any) -> bool:
    """A finite int or float, not a bool. An int is finite at any size (``math.isfinite`` would
    raise OverflowError beyond a float's range; validation then says it is not a valid number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return isinstance(value, int) or math.isfinite(value)


class ProbeSettings(_Periodic):
    """How often each target is probed, and how long one probe may take."""

    interval: Seconds = 15.0
    timeout: Seconds = 5.0
    # After consecutive authentication failures the probe waits 2x, 4x, ... its interval between
    # attempts, up to this (and never less than the interval): a wrong password is not fixed by
    # retrying, and each attempt is a failed login in the server's log (and may count towards a
    # lockout).
    auth_backoff_max: Seconds = 300.0


class CensusSettings(_Periodic):
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


class ReaperSettings(_Periodic):
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
    # Client hosts: the session's client address without the port (globs, case-insensitive).
    hosts: Names = ()
    exclude_hosts: Names = ()
    allow_superusers: bool = False
    allow_pubsub: bool = False
    allow_monitors: bool = False
    allow_replicas: bool = False
    max_per_run: Annotated[int, Field(ge=1, le=10_000)] = 20
    # MySQL only: kill through this stored procedure (``mysql.rds_kill`` on Amazon RDS) instead of
    # ``KILL CONNECTION``; it is called with the connection id.
    kill_procedure: Annotated[str, Field(pattern=PROCEDURE_PATTERN)] | None = None

    @field_validator("hosts", "exclude_hosts")
    @classmethod
    def _hosts_without_port(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for host in value:
            if _HOST_WITH_PORT.search(host):
                raise ValueError(f"{host}: a client host is matched without its port (IPv6: no brackets)")
        return value

    @model_validator(mode="after")
    def _needs_a_timeout(self) -> ReaperSettings:
        if self.enabled and self.idle_timeout is None and self.idle_in_transaction_timeout is None:
            raise ValueError("an enabled reaper needs idle_timeout or idle_in_transaction_timeout")
        if self.enabled and not (self.databases or self.users or self.applications or self.hosts):
            # An empty scope would mean "every session on the server": make the operator say so.
            raise ValueError(
                "an enabled reaper needs databases, users, applications or hosts "
                "(applications: ['*'] means every application)"
            )
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
        return split_url_password(data)

    @model_validator(mode="after")
    def _url_matches_kind(self, info: ValidationInfo) -> TargetSettings:
        check_url(self.kind, self.url)
        if self.reaper.enabled and self.kind in ("sqlite", "pgbouncer"):
            raise ValueError(f"the reaper works on postgres, mysql and redis targets, not {self.kind}")
        if self.reaper.kill_procedure is not None and self.kind != "mysql":
            raise ValueError("reaper.kill_procedure applies to mysql targets only")
        if self.kind == "sqlite":
            check_sqlite_directory(self.url, (info.context or {}).get("state_dir"))
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
    # Connections open at once; at the cap a new one closes the longest-waiting idle one.
    max_connections: Annotated[int, Field(ge=1, le=10_000)] = 64
    # The kernel's queue of connections not yet accepted (capped by net.core.somaxconn).
    backlog: Annotated[int, Field(ge=1, le=65535)] = 128

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
        return split_url_password(data)

    @model_validator(mode="after")
    def _postgres_only(self, info: ValidationInfo) -> AuditSettings:
        if self.url is not None:
            check_url("postgres", self.url)
        if self.spool_path is not None:
            from poolwatch.reaper.spool import check_spool_directory  # noqa: PLC0415 - sqlite3: with a spool only

            check_spool_directory(self.spool_path, (info.context or {}).get("state_dir"))
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


class ShardSettings(_Model):
    """This replica's share of the targets (``poolwatch.sharding``): ``index`` of ``count``."""

    index: int = Field(default=0, ge=0)
    count: int = Field(default=1, ge=1, le=1000)

    @model_validator(mode="after")
    def _index_below_count(self) -> ShardSettings:
        if self.index >= self.count:
            raise ValueError(f"index {self.index} is not below count {self.count}")
        return self


class TargetFilesSettings(_Model):
    """A directory of target files (``poolwatch.targetfiles``), polled for changes every ``interval``."""

    directory: str | None = None
    interval: float = Field(default=10.0, ge=MIN_SECONDS, le=MAX_SECONDS)


class Settings(_Model):
    """The whole validated configuration. ``source`` says where the targets came from."""

    http: HttpSettings = HttpSettings()
    log: LogSettings = LogSettings()
    targets: Annotated[tuple[TargetSettings, ...], Field(strict=False)] = ()
    audit: AuditSettings = AuditSettings()
    shard: ShardSettings = ShardSettings()
    target_files: TargetFilesSettings = TargetFilesSettings()
    otlp: OtlpSettings | None = Field(
        default=None,
        description="Push every metric over OTLP as well (needs `poolwatch[otel]`; see "
        "[OpenTelemetry](opentelemetry.md)). Off when absent.",
    )
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
        if self.otlp is not None:
            values += self.otlp.headers.values()
        return [v for v in values if v]

    def public_dict(self) -> dict[str, Any]:
        """The effective configuration as ``poolwatch config`` prints it: secrets masked."""
        data = self.model_dump(exclude={"source"})
        for shown, target in zip(data["targets"], self.targets, strict=True):
            shown["url"] = target.display_url()
            shown["password"] = MASK if target.password else None
            if target.kind == "sqlite":  # no server sessions: neither census nor reaper applies
                del shown["census"], shown["reaper"]
        data["audit"]["url"] = self.audit.display_url()
        data["audit"]["password"] = MASK if self.audit.password else None
        data["http"]["basic_auth_users"] = dict.fromkeys(self.http.basic_auth_users, MASK)
        if self.otlp is not None:
            data["otlp"] = self.otlp.public_dict()
        return data


def _variable(name: str) -> Any:
    return field(default=None, metadata={"variable": name})


@dataclass(frozen=True)
class Environment:
    """The environment variables poolwatch reads; nothing else looks at ``os.environ``. Every value
    is an optional string, checked where it is used (``POSTGRES_PORT``, the URLs, the listen address).
    """

    config: str | None = _variable("POOLWATCH_CONFIG")
    listen: str | None = _variable("POOLWATCH_LISTEN")
    log_level: str | None = _variable("POOLWATCH_LOG_LEVEL")
    state_dir: str | None = _variable("POOLWATCH_STATE_DIR")
    database_url: str | None = _variable("DATABASE_URL")
    redis_url: str | None = _variable("REDIS_URL")
    postgres_user: str | None = _variable("POSTGRES_USER")
    postgres_password: str | None = _variable("POSTGRES_PASSWORD")
    postgres_host: str | None = _variable("POSTGRES_HOST")
    postgres_port: str | None = _variable("POSTGRES_PORT")
    postgres_db: str | None = _variable("POSTGRES_DB")
    http_user: str | None = _variable("POOLWATCH_HTTP_USER")  # poolwatch status
    http_password: str | None = _variable("POOLWATCH_HTTP_PASSWORD")
    no_color: str | None = _variable("NO_COLOR")
    shard: str | None = _variable("POOLWATCH_SHARD")  # INDEX/COUNT
    shard_count: str | None = _variable("POOLWATCH_SHARD_COUNT")  # with the ordinal of HOSTNAME
    hostname: str | None = _variable("HOSTNAME")
    # Read only to say that they are not used (see _environment_targets): never part of a URL.
    db_host: str | None = _variable("DB_HOST")
    db_port: str | None = _variable("DB_PORT")
    db_user: str | None = _variable("DB_USER")
    db_password: str | None = _variable("DB_PASSWORD")
    db_name: str | None = _variable("DB_NAME")

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> Environment:
        """The variables in ``environ``, or in the process environment when None (tests pass theirs)."""
        source = os.environ if environ is None else environ
        return cls(**{f.name: source.get(f.metadata["variable"]) for f in fields(cls)})

    def unused_seed_variables(self) -> list[str]:
        """The ``DB_*`` variables that are set (poolwatch reads ``DATABASE_URL`` / ``POSTGRES_*``)."""
        return [
            f.metadata["variable"] for f in fields(self) if f.name.startswith("db_") and getattr(self, f.name)
        ]


POSTGRES_VARIABLES: Final = "POSTGRES_HOST, POSTGRES_PORT, POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB"


def load_settings(
    config_file: str | None = None,
    *,
    listen: str | None = None,
    environ: Mapping[str, str] | None = None,
    embedded: bool = True,
    shard: str | None = None,
    shard_count: int | None = None,
) -> Settings:
    """Build the effective settings. ``environ`` replaces ``os.environ`` (tests pass their own).

    With no targets in a file or the environment, ``embedded`` (``poolwatch run``, ``check``,
    ``config``) watches the embedded SQLite database; without it the settings have no targets.
    The targets of ``target_files.directory`` join the file's; ``shard`` (``INDEX/COUNT``), or
    ``shard_count`` with the pod ordinal ending ``HOSTNAME``, keeps this replica's share of them."""
    env = Environment.read(environ)
    path = config_file or env.config
    data: dict[str, Any] = _read_yaml(path) if path else {}
    source = f"file {path}" if path else "defaults"
    data = _with_target_files(data)
    replica = _shard(shard, shard_count, env)
    if replica is not None:
        data["shard"] = replica
    if env.listen:
        _override(data, "http", "listen", env.listen)
    if env.log_level:
        _override(data, "log", "level", env.log_level.upper())
    if not data.get("targets"):
        env_targets = _environment_targets(env)
        if env_targets:
            data["targets"] = env_targets
            source = "environment (" + ", ".join(t["name"] for t in env_targets) + ")"
        elif embedded and not _target_directory(data):
            data["targets"] = [embedded_target(env)]
            source = EMBEDDED_SOURCE
    if listen is not None:
        _override(data, "http", "listen", listen)
    data["source"] = source
    state_dir = state_directory(env)
    settings = validate(data, state_dir=None if state_dir is None else str(state_dir))
    return _own_share(settings)


def _target_directory(data: Mapping[str, Any]) -> str | None:
    files = data.get("target_files")
    directory = files.get("directory") if isinstance(files, dict) else None
    return directory if isinstance(directory, str) else None


def _with_target_files(data: dict[str, Any]) -> dict[str, Any]:
    """The file's targets followed by those of ``target_files.directory``."""
    directory = _target_directory(data)
    if directory is None:
        return data
    from poolwatch.targetfiles import read_targets  # noqa: PLC0415 - only with a directory

    listed = data.get("targets") or []
    if not isinstance(listed, list):
        return data  # validation says what is wrong with it
    return {**data, "targets": [*listed, *read_targets(directory)]}


def _shard(flag: str | None, count: int | None, env: Environment) -> dict[str, int] | None:
    """``INDEX/COUNT`` from the flag or POOLWATCH_SHARD; else a count (flag or POOLWATCH_SHARD_COUNT)
    with the index a StatefulSet gives its pods: the number ending HOSTNAME (``poolwatch-2``)."""
    text = flag or env.shard
    if text:
        match = re.fullmatch(r"(\d{1,4})/(\d{1,4})", text.strip())
        if match is None:
            raise ConfigError(f"shard: expected INDEX/COUNT (such as 0/4), got {printable(text)}")
        return {"index": int(match.group(1)), "count": int(match.group(2))}
    if count is None and env.shard_count:
        if not env.shard_count.strip().isdigit():
            raise ConfigError(f"POOLWATCH_SHARD_COUNT: expected a number, got {printable(env.shard_count)}")
        count = int(env.shard_count)
    if count is None:
        return None
    ordinal = re.search(r"-(\d{1,4})$", env.hostname or "")
    if ordinal is None:
        raise ConfigError(
            f"shard count {count}: the shard index comes from the pod ordinal ending HOSTNAME "
            f"(such as poolwatch-2), and HOSTNAME is {printable(env.hostname or '')}"
        )
    return {"index": int(ordinal.group(1)), "count": count}


def _own_share(settings: Settings) -> Settings:
    if settings.shard.count == 1:
        return settings
    from poolwatch.sharding import Shard  # noqa: PLC0415

    shard = Shard(settings.shard.index, settings.shard.count)
    mine = tuple(target for target in settings.targets if shard.owns(target.name))
    return settings.model_copy(update={"targets": mine})


def validate(data: Mapping[str, Any], *, state_dir: str | None = None) -> Settings:
    """Validate a configuration mapping; any failure is one ConfigError line. A SQLite target's
    directory must exist, unless it is ``state_dir`` (created when the engine is)."""
    try:
        return Settings.model_validate(dict(data), context={"state_dir": state_dir})
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, data, _PATTERN_MEANINGS)) from None
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc)) from None


def _read_yaml(path: str) -> dict[str, Any]:
    data = read_yaml(path)
    if "source" in data:
        raise ConfigError("source: unknown key")
    return data


def _override(data: dict[str, Any], section: str, key: str, value: str) -> None:
    """Set ``section.key`` over what the file says (the environment and flags win)."""
    data.setdefault(section, {})
    require_mapping(data[section], section)
    data[section] = {**data[section], key: value}


def require_mapping(value: Any, path: str) -> None:
    """A ConfigError unless ``value`` (the section at ``path``) is a mapping."""
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
    elif given := env.unused_seed_variables():
        # Not guessed: DB_* names no kind of server, and a silently ignored variable would leave a
        # service watching the embedded default instead of its database.
        raise ConfigError(
            f"{', '.join(given)}: not read by poolwatch; set DATABASE_URL, or {POSTGRES_VARIABLES}"
        )
    if env.redis_url:
        targets.append({"name": "redis", "kind": "redis", "url": env.redis_url})
    return targets


def postgres_url(env: Environment) -> str:
    """The URL the ``POSTGRES_*`` variables describe; the database defaults to the user, as in the
    official postgres image."""
    port = env.postgres_port or "5432"
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= _MAX_PORT:
        raise ConfigError(f"POSTGRES_PORT: expected a port number 1-65535 (got {printable(port)})")
    user = quote(env.postgres_user or "postgres", safe="")
    password = f":{quote(env.postgres_password, safe='')}" if env.postgres_password else ""
    host = env.postgres_host or "localhost"
    host = f"[{host}]" if ":" in host else host
    database = quote(env.postgres_db or env.postgres_user or "postgres", safe="")
    return f"postgresql+psycopg2://{user}{password}@{host}:{port}/{database}"


def state_directory(env: Environment) -> Path | None:
    """Where poolwatch keeps its own files: ``POOLWATCH_STATE_DIR``, else ~/.local/state/poolwatch;
    None for a user without a home directory (a container's arbitrary uid with no ``HOME``)."""
    if env.state_dir:
        return Path(env.state_dir)
    try:
        return Path.home() / ".local" / "state" / "poolwatch"
    except RuntimeError:
        return None


def embedded_target(env: Environment) -> dict[str, Any]:
    """The SQLite database poolwatch watches when nothing else is configured."""
    directory = state_directory(env)
    if directory is None:
        raise ConfigError(
            "no configuration, and no home directory for the embedded database: set POOLWATCH_STATE_DIR"
        )
    return {"name": "embedded", "kind": "sqlite", "url": f"sqlite:///{directory / 'embedded.db'}"}
