"""The configuration reference: every key of ``poolwatch.config.Settings``, read from the models.

Names, types, defaults and bounds come from the models (``poolwatch.schema``), so they cannot drift from what
``poolwatch run`` accepts. A key's description is its ``Field(description=...)`` when the model has
one, else the entry for its path in ``DESCRIPTIONS``; tests/ops/test_docs.py fails when a key has
neither, both, or when an entry names a key the models no longer have.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from poolwatch.config import Settings
from poolwatch.schema import MISSING, FieldInfo, FieldSpec, Model, SecretStr

# Fields of the models that are not configuration keys: ``source`` records where the targets came
# from (set by load_settings; a file that names it is rejected).
INTERNAL = frozenset({"source"})

TOP_LEVEL = "The file is a mapping with these keys; each is optional."

DESCRIPTIONS: dict[str, str] = {
    "http": "The HTTP endpoint that serves `/metrics`, the health checks and the status page.",
    "http.listen": "`host:port` to listen on; `:18187` or `0.0.0.0:18187` for every interface. "
    "`POOLWATCH_LISTEN` and `--listen` override it.",
    "http.tls": "Serve HTTPS (TLS 1.2 or later) instead of HTTP.",
    "http.basic_auth_users": "User name to bcrypt hash (`$2b$...`), as in the Prometheus exporters' "
    "web configuration. When set, every path needs a password.",
    "http.max_request_bytes": "Largest request line plus headers; a bigger request is answered 431.",
    "http.request_timeout": "Seconds a connection has, from accept (or from the first byte of a "
    "keep-alive request), to send a complete request head, TLS handshake included; and again to "
    "take its answer. Counted per connection, not per read.",
    "http.max_connections": "Connections open at once. At the cap a new connection closes the one "
    "that has waited longest without a request in progress (never-answered ones first).",
    "http.backlog": "Connections the kernel queues before they are accepted (capped by "
    "`net.core.somaxconn`).",
    "http.tls.cert_file": "PEM certificate (chain) file.",
    "http.tls.key_file": "PEM private key file.",
    "http.tls.client_ca_file": "PEM CA bundle; when set, clients must present a certificate it signed.",
    "log": "Logging to stderr.",
    "log.level": "Least severe level logged. `POOLWATCH_LOG_LEVEL` overrides it.",
    "log.format": "`text` lines, or one JSON object per line.",
    "targets": "The monitored databases and Redis servers. Empty: taken from the environment "
    "(`DATABASE_URL`, `POSTGRES_*`, `REDIS_URL`), else the embedded SQLite database.",
    "targets[].name": "Unique name; the `target` and `pool` label of the target's series.",
    "targets[].kind": "What the target is (`postgres`, `mysql`, `pgbouncer`, `sqlite`, `redis`; see "
    "[Targets](targets.md)); the URL's scheme must match it.",
    "targets[].url": "SQLAlchemy URL (`postgresql+psycopg2://user@host:5432/db`, "
    "`mysql+pymysql://user@host:3306/`, `sqlite:///path` in an existing directory, not in memory; "
    "PgBouncer: its admin console, `postgresql://user@host:6432/pgbouncer`) or redis-py URL "
    "(`redis://host:6379/0`). A password in it is moved to `password` on load.",
    "targets[].password": "The password, when not in `url` or `password_file`. Never printed.",
    "targets[].password_file": "File holding the password (one trailing newline is dropped, at most "
    "64 KiB); not together with a password in `url`.",
    "targets[].pool": "The connection pool poolwatch keeps for the target, and its housekeeping.",
    "targets[].pool.size": "Persistent connections. For Redis, `size + max_overflow` is the client's "
    "`max_connections`.",
    "targets[].pool.max_overflow": "Extra connections opened under load and closed when returned to a "
    "full pool.",
    "targets[].pool.timeout": "Seconds a checkout waits for a free connection before it fails.",
    "targets[].pool.pre_ping": "Test each connection before handing it out; replace the ones that fail.",
    "targets[].pool.recycle": "Close a connection older than this many seconds at checkout; `null`: never.",
    "targets[].pool.connect_timeout": "Seconds to open a connection (PostgreSQL rounds down, minimum 2).",
    "targets[].pool.application_name": "What the server sees: PostgreSQL `application_name`, Redis "
    "`CLIENT SETNAME`. Default `poolwatch-<name>`.",
    "targets[].pool.min_idle": "Housekeeping keeps at least this many idle connections open; at most `size`.",
    "targets[].pool.idle_timeout": "Close connections idle this many seconds, down to `min_idle`; "
    "`null`: never.",
    "targets[].pool.max_lifetime": "Retire idle connections this many seconds old, less up to 2.5 % "
    "jitter per connection; `null`: never.",
    "targets[].pool.keepalive": "Ping connections unused this many seconds and drop the broken ones "
    "(Redis: the client's `health_check_interval`); `null`: never.",
    "targets[].pool.leak_threshold": "Seconds a checkout may last before it counts as a leak; `null`: "
    "leak detection off.",
    "targets[].pool.housekeeping_interval": "Seconds between housekeeping passes.",
    "targets[].probe": "The probe: a pooled checkout plus `SELECT 1` (Redis: `PING`).",
    "targets[].probe.interval": "Seconds between probes.",
    "targets[].probe.timeout": "Seconds one probe may take; at most `interval`. Left out, "
    "`min(5, interval)`; with only `timeout` given, the interval is `max(15, timeout)`.",
    "targets[].probe.auth_backoff_max": "After repeated authentication failures the probe waits 2x, "
    "4x, ... its interval between attempts, up to this many seconds.",
    "targets[].census": "Server-side session counts (PostgreSQL, MySQL and Redis targets); for a "
    "PgBouncer target, how often its admin console is read.",
    "targets[].census.enabled": "Run the census job.",
    "targets[].census.interval": "Seconds between censuses.",
    "targets[].census.timeout": "Seconds one census may take; at most `interval`. Left out, "
    "`min(5, interval)`.",
    "targets[].census.databases": "Database names used as label values; other databases are counted as "
    "`other` (the target's own database is added).",
    "targets[].census.users": "User names used as label values; others are `other` (the target's own "
    "user is added).",
    "targets[].census.applications": "`application_name` / Redis client names used as label values, "
    "and counted as pools in `server_pool_connections`.",
    "targets[].census.idle_thresholds": "Seconds; one `server_idle_connections{idle_over=...}` series "
    "per threshold.",
    "targets[].reaper": "Terminating idle server sessions; see [Census and reaper]"
    "(census-and-reaper.md#idle-session-reaper).",
    "targets[].reaper.enabled": "Run the reaper job (PostgreSQL, MySQL and Redis targets). Needs "
    "`idle_timeout` or `idle_in_transaction_timeout`, and `databases`, `users`, `applications` or "
    "`hosts`.",
    "targets[].reaper.dry_run": "Decide and record, never terminate. `false` needs `audit.url`.",
    "targets[].reaper.interval": "Seconds between reaper runs.",
    "targets[].reaper.timeout": "Seconds one reaper run may take; at most `interval`. Left out, "
    "`min(10, interval)`.",
    "targets[].reaper.idle_timeout": "Terminate sessions in state `idle` for longer than this many "
    "seconds (measured from `state_change`); `null`: never.",
    "targets[].reaper.idle_in_transaction_timeout": "Terminate sessions idle in a transaction (or "
    "aborted transaction; Redis: inside `MULTI`) for longer than this; `null`: never.",
    "targets[].reaper.databases": "Only sessions on these databases (empty: any).",
    "targets[].reaper.exclude_databases": "Never sessions on these databases; excludes always win.",
    "targets[].reaper.users": "Only sessions of these users (empty: any).",
    "targets[].reaper.exclude_users": "Never sessions of these users.",
    "targets[].reaper.applications": "Only sessions whose `application_name` / client name matches "
    "one of these `fnmatch` globs (empty: any; `['*']`: every application).",
    "targets[].reaper.exclude_applications": "Never sessions matching these globs.",
    "targets[].reaper.hosts": "Only sessions whose client host (without the port) matches one of "
    "these globs, case-insensitively (empty: any). With `hosts` or `exclude_hosts` set, a session "
    "without a known host (a unix-socket client on PostgreSQL or Redis) is never reaped.",
    "targets[].reaper.exclude_hosts": "Never sessions whose client host matches one of these globs.",
    "targets[].reaper.allow_superusers": "Allow terminating superuser sessions (PostgreSQL superusers; "
    "MySQL accounts with `SUPER`).",
    "targets[].reaper.allow_pubsub": "Allow terminating Redis subscribers.",
    "targets[].reaper.allow_monitors": "Allow terminating Redis `MONITOR` clients.",
    "targets[].reaper.allow_replicas": "Allow terminating Redis replica links.",
    "targets[].reaper.max_per_run": "Most sessions terminated (or recorded, in dry run) per run, "
    "longest idle first.",
    "targets[].reaper.kill_procedure": "MySQL only: kill through this stored procedure, called with the "
    "connection id (`mysql.rds_kill` on Amazon RDS), instead of `KILL CONNECTION`.",
    "shard": "This replica's share of the targets, when several replicas split them (see "
    "[Deploy](deploy.md#many-targets-several-replicas)). `--shard INDEX/COUNT` or `POOLWATCH_SHARD` "
    "override it; `--shard-count` or `POOLWATCH_SHARD_COUNT` take the index from the pod ordinal "
    "ending `HOSTNAME` (a StatefulSet's `poolwatch-2`).",
    "shard.index": "This replica's index, from 0.",
    "shard.count": "How many replicas split the targets; each target goes to exactly one of them.",
    "target_files": "A directory of target files, reloaded when they change (no SIGHUP needed).",
    "target_files.directory": "Directory whose `*.yaml`, `*.yml` and `*.json` files each hold a target, "
    "a list of targets, or a mapping with a `targets` list; they join `targets`. A file that does not "
    "parse or validate refuses the reload with one error line, and the running targets stay.",
    "target_files.interval": "Seconds between two looks at the directory's file names, sizes and "
    "modification times.",
    "audit": "Where reaper decisions are recorded: a PostgreSQL table, with a local spool while it is down.",
    "audit.url": "PostgreSQL URL of the audit database; required by a reaper with `dry_run: false`.",
    "audit.password": "The password, when not in `url` or `password_file`. Never printed.",
    "audit.password_file": "File holding the audit database's password.",
    "audit.table": "Table of audit records; its schema version is kept in `<table>_schema`.",
    "audit.spool_path": "File where records wait while the audit database is down (kept across "
    "restarts); `null`: in memory. Its directory must exist, unless it is inside the state directory.",
    "audit.spool_max": "Records the spool holds; beyond it the oldest are dropped and counted.",
    "audit.connect_timeout": "Seconds to connect to the audit database.",
}


@dataclass(frozen=True)
class Key:
    """One configuration key as the reference shows it."""

    path: str
    type: str
    default: str
    bounds: str
    description: str


@dataclass(frozen=True)
class Section:
    """The keys of one model, under the path where it appears in the file."""

    path: str
    anchor: str
    summary: str
    keys: tuple[Key, ...]


def sections(model: type[Model] = Settings, path: str = "") -> list[Section]:
    """Every model reachable from ``model``, depth first, each with its keys."""
    keys: list[Key] = []
    nested: list[Section] = []
    for name, field in model.model_fields.items():
        if not path and name in INTERNAL:
            continue
        key_path = f"{path}.{name}" if path else name
        child = _model_of(field.annotation)
        if child is not None:
            child_path = f"{key_path}[]" if _is_sequence(field.annotation) else key_path
            nested.extend(sections(child, child_path))
        keys.append(
            Key(
                path=key_path,
                type=_type_name(field.annotation, child_path if child is not None else ""),
                default=_default(field),
                bounds=", ".join(_bounds(field.metadata, field.annotation)),
                description=description(key_path, field),
            )
        )
    summary = DESCRIPTIONS.get(path.removesuffix("[]"), "") if path else TOP_LEVEL
    own = Section(path or "top level", anchor(path), summary, tuple(keys))
    return [own, *nested]


def keys() -> list[str]:
    """Every documented key path, as ``DESCRIPTIONS`` spells them."""
    return [key.path for section in sections() for key in section.keys]


def description(path: str, field: FieldInfo) -> str:
    return field.description or DESCRIPTIONS.get(path, "")


def anchor(path: str) -> str:
    """The HTML id of a section: ``targets[].pool`` -> ``config-targets-pool``."""
    words = path.replace("[]", "").replace(".", "-")
    return f"config-{words}" if words else "config-top-level"


def render() -> str:
    """The reference as Markdown: one table per section."""
    lines: list[str] = []
    for section in sections():
        title = "Top level" if section.path == "top level" else f"`{section.path}`"
        lines += [f"### {title} {{#{section.anchor}}}", ""]
        if section.summary:
            lines += [section.summary, ""]
        lines += ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]
        for key in section.keys:
            name = key.path.rsplit(".", 1)[-1]
            cells = (f"`{name}`", key.type, key.default, key.bounds, key.description)
            lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") or " "


def _model_of(annotation: Any) -> type[Model] | None:
    """The model a field holds (directly, optionally, or as a list of them), if any."""
    for candidate in (annotation, *_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, Model):
            return candidate
    return None


def _is_sequence(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (tuple, list)


def _args(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) is Annotated:
        return _args(typing.get_args(annotation)[0])
    return tuple(arg for arg in typing.get_args(annotation) if arg is not Ellipsis)


def _strip(annotation: Any) -> Any:
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated else annotation


def _type_name(annotation: Any, section: str = "") -> str:
    annotation = _strip(annotation)
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        shown = " or ".join(_type_name(arg, section) for arg in members)
        return f"{shown} or null" if len(members) < len(typing.get_args(annotation)) else shown
    if origin is Literal:
        return "one of " + ", ".join(f"`{value}`" for value in typing.get_args(annotation))
    if origin in (tuple, list):
        item = _strip(_args(annotation)[0])
        if isinstance(item, type) and issubclass(item, Model):
            return f"list of [mappings](#{anchor(section)})"
        return f"list of {_type_name(item, section)}s"
    if origin is dict:
        key, value = typing.get_args(annotation)
        return f"mapping of {_type_name(key)} to {_type_name(value)}"
    if isinstance(annotation, type) and issubclass(annotation, Model):
        return f"[mapping](#{anchor(section)})"
    names = {bool: "boolean", int: "integer", float: "number", str: "string", SecretStr: "secret string"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value: Any = field.default_factory()
    elif field.default is MISSING:
        return "required"
    else:
        value = field.default
    if isinstance(value, Model):
        return "see its table"
    return f"`{_yaml(value)}`"


def _yaml(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_yaml(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _bounds(metadata: list[Any], annotation: Any) -> list[str]:
    """Readable constraints from the field's metadata and the metadata nested in its type."""
    found = [text for item in metadata for text in _constraint(item)]
    for inner in _annotated_parts(annotation):
        item_bounds = [text for item in inner for text in _constraint(item)]
        if _is_sequence(_strip(annotation)) and item_bounds:
            found.append("each " + " ".join(item_bounds))
        else:
            found.extend(item_bounds)
    return found


def _annotated_parts(annotation: Any) -> list[list[Any]]:
    """The metadata of every ``Annotated`` inside ``annotation`` (in a union or as list items)."""
    parts: list[list[Any]] = []
    for arg in _args(annotation):
        if typing.get_origin(arg) is Annotated:
            metadata: list[Any] = []
            for extra in typing.get_args(arg)[1:]:
                metadata.extend([extra] if isinstance(extra, FieldSpec) else [])
            parts.append(metadata)
    return parts


def _constraint(item: Any) -> list[str]:
    texts = []
    for attribute, symbol in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
        value = getattr(item, attribute, None)
        if value is not None:
            texts.append(f"{symbol} {_number(value)}")
    if getattr(item, "min_length", None) is not None:
        texts.append(f"length ≥ {item.min_length}")
    if getattr(item, "max_length", None) is not None:
        texts.append(f"length ≤ {item.max_length}")
    if getattr(item, "pattern", None) is not None:
        texts.append(f"matching `{item.pattern}`")
    return texts
