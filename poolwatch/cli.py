"""The command line: ``poolwatch run | check | config | status | audit | --version``.

Every error a user can cause ends as one line on stderr and exit status 2 (configuration) or 1
(a target down, the daemon unreachable); never a traceback.

Each subcommand imports what it needs when it runs: ``--version`` and ``--help`` load argparse and
nothing else, ``config`` no scheduler, HTTP server or database driver.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import sys
import threading
from typing import TYPE_CHECKING, Any

from poolwatch._version import __version__

if TYPE_CHECKING:
    from collections.abc import Sequence

    from poolwatch.config import LogSettings, Settings, TargetSettings
    from poolwatch.status import StatusDoc

EXIT_OK, EXIT_DOWN, EXIT_USAGE = 0, 1, 2
DEFAULT_LISTEN = (
    "127.0.0.1:18187"  # config.DEFAULT_LISTEN, repeated so that --help loads no configuration module
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="poolwatch",
        description="Connection-pool health monitoring for SQLAlchemy and Redis, for Prometheus.",
    )
    parser.add_argument("--version", action="version", version=f"poolwatch {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def with_config(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("-c", "--config", metavar="FILE", help="YAML file (or POOLWATCH_CONFIG)")
        return sub

    run = with_config(commands.add_parser("run", help="run the daemon in the foreground"))
    run.add_argument("--listen", metavar="ADDR", help=f"host:port for /metrics ({DEFAULT_LISTEN})")
    with_shard(run)
    check = with_config(commands.add_parser("check", help="probe every target once; exit 1 if one is down"))
    check.add_argument("--json", action="store_true", help="print JSON instead of a table")
    config = with_config(
        commands.add_parser("config", help="print the effective configuration, secrets masked")
    )
    config.add_argument("--listen", metavar="ADDR", help="as for run")
    with_shard(config)
    status = with_config(commands.add_parser("status", help="show a running daemon's targets, worst first"))
    status.add_argument(
        "--url", help="the daemon's base URL (default: http.listen of the configuration, https with http.tls)"
    )
    status.add_argument("--user", help="basic-auth user (or POOLWATCH_HTTP_USER)")
    status.add_argument(
        "--password-file",
        metavar="FILE",
        help="file holding the basic-auth password (or POOLWATCH_HTTP_PASSWORD)",
    )
    status.add_argument("--ca-file", metavar="FILE", help="CA certificates to verify the daemon's HTTPS with")
    status.add_argument(
        "--cert", metavar="FILE", help="client certificate (when http.tls.client_ca_file is set)"
    )
    status.add_argument("--key", metavar="FILE", help="the client certificate's key, if not in --cert")
    status.add_argument("--json", action="store_true", help="print the status document as JSON")
    status.add_argument(
        "--watch", nargs="?", const=2.0, type=_seconds, metavar="SECONDS", help="refresh every SECONDS (2)"
    )
    status.add_argument("--color", choices=("auto", "always", "never"), default="auto", help="auto: on a TTY")
    status.add_argument("--timeout", type=_seconds, default=5.0, help="seconds to wait for the daemon (5)")
    audit = with_config(commands.add_parser("audit", help="list recent reaper decisions (audit table)"))
    audit.add_argument("--limit", type=_positive_int, default=20, help="how many records (20)")
    audit.add_argument("--target", help="only this target")
    audit.add_argument("--mode", choices=("enforce", "dry_run"), help="only terminations or candidates")
    audit.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def with_shard(sub: argparse.ArgumentParser) -> None:
    shard = sub.add_mutually_exclusive_group()
    shard.add_argument(
        "--shard", metavar="INDEX/COUNT", help="monitor this replica's share of targets (or POOLWATCH_SHARD)"
    )
    shard.add_argument(
        "--shard-count",
        metavar="COUNT",
        type=_positive_int,
        help="as --shard, the index being the pod ordinal ending HOSTNAME (or POOLWATCH_SHARD_COUNT)",
    )


def _positive_int(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 100_000:  # noqa: PLR2004
        raise argparse.ArgumentTypeError(f"expected a number 1-100000, got {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.1 <= value <= 3600:  # noqa: PLR2004
        raise argparse.ArgumentTypeError(f"expected seconds from 0.1 to 3600, got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from poolwatch.errors import ConfigError, PoolwatchError

    try:
        if args.command == "run":
            return _run(args)
        if args.command == "check":
            return _check(args)
        if args.command == "config":
            return _config(args)
        if args.command == "audit":
            return _audit(args)
        return _status(args)
    except ConfigError as exc:
        print(f"poolwatch: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PoolwatchError as exc:
        print(f"poolwatch: error: {exc}", file=sys.stderr)
        return EXIT_DOWN
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace) -> int:
    from poolwatch.config import load_settings
    from poolwatch.daemon import Daemon
    from poolwatch.logs import set_level_and_format, setup_logging
    from poolwatch.process import hide_sdk, pin_mmap_threshold, show_sdk

    def load() -> Settings:
        return load_settings(args.config, listen=args.listen, shard=args.shard, shard_count=args.shard_count)

    pin_mmap_threshold()
    hide_sdk()
    settings = load()
    if settings.otlp is not None:
        show_sdk()
    redactor = setup_logging(settings.log.level, settings.log.format, settings.secrets())

    def reload() -> Settings:
        return load()

    def relog(log: LogSettings) -> None:
        set_level_and_format(log.level, log.format)

    daemon = Daemon(settings, loader=reload, on_secrets=redactor.update, on_log=relog, settle_heap=True)
    daemon.run()
    return EXIT_OK


def _config(args: argparse.Namespace) -> int:
    import yaml

    from poolwatch.config import load_settings

    settings = load_settings(args.config, listen=args.listen, shard=args.shard, shard_count=args.shard_count)
    print(f"# poolwatch {__version__}; targets from {settings.source}")
    print(yaml.safe_dump(settings.public_dict(), sort_keys=False), end="")
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from poolwatch.config import load_settings
    from poolwatch.logs import setup_logging

    settings = load_settings(args.config)
    setup_logging("ERROR", "text", settings.secrets())
    with ThreadPoolExecutor(max_workers=min(32, len(settings.targets))) as pool:
        rows = list(pool.map(check_target, settings.targets))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
    return EXIT_OK if all(row["up"] for row in rows) else EXIT_DOWN


def check_target(target: TargetSettings) -> dict[str, Any]:
    """Probe one target once, within its probe timeout, and dispose what was opened."""
    from poolwatch.daemon import build_target
    from poolwatch.errors import PoolwatchError
    from poolwatch.jobs import BoundedCall, run_job
    from poolwatch.metrics import Metrics

    row: dict[str, Any] = {
        "target": target.name,
        "kind": target.kind,
        "up": False,
        "latency_ms": None,
        "error": "",
    }
    try:
        runtime = build_target(target, Metrics())
    except PoolwatchError as exc:
        row["error"] = str(exc)
        return row
    try:
        outcome = run_job(runtime.probe, BoundedCall(f"check:{target.name}"))
        runtime.probe.record(outcome)
        status = runtime.probe.status()
        row["up"] = bool(status["up"])
        row["latency_ms"] = round(outcome.duration * 1000, 2) if outcome.ok else None
        row["error"] = status["error"]
    finally:
        runtime.close()
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    header = ("TARGET", "KIND", "UP", "LATENCY", "ERROR")
    lines = [
        (
            r["target"],
            r["kind"],
            "yes" if r["up"] else "no",
            "-" if r["latency_ms"] is None else f"{r['latency_ms']:.2f} ms",
            r["error"],
        )
        for r in rows
    ]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines, strict=False)]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in (header, *lines)
    )


def _status(args: argparse.Namespace) -> int:
    from poolwatch import statusclient
    from poolwatch.client_config import client_settings

    settings = client_settings(args.config, locate=args.url is None)
    url, user = settings.base_url, settings.user
    password = settings.password.get_secret_value() if settings.password else None
    trusted = settings.cert_file
    if args.url is not None:
        url, url_user, url_password = statusclient.split_credentials(args.url)
        user, password, trusted = url_user or user, url_password or password, None
    if args.password_file is not None:
        password = _read_secret(args.password_file)
    remote = statusclient.Remote(
        url,
        user=args.user or user,
        password=password,
        ca_file=args.ca_file,
        trusted_cert=trusted,
        client_cert=args.cert,
        client_key=args.key,
    )
    color = args.color == "always" or (args.color == "auto" and settings.color and sys.stdout.isatty())
    if args.watch is None:
        return _show(statusclient.fetch(remote, args.timeout), remote.url, args.json, color)
    stop = threading.Event()
    try:
        while True:
            if color:
                print("\x1b[H\x1b[2J", end="")
            try:
                _show(statusclient.fetch(remote, args.timeout), remote.url, args.json, color)
            except statusclient.UnreachableError as exc:
                print(f"poolwatch: error: {exc}", file=sys.stderr)
            sys.stdout.flush()
            stop.wait(args.watch)
    except KeyboardInterrupt:
        return EXIT_OK


def _show(doc: StatusDoc, url: str, as_json: bool, color: bool) -> int:
    from poolwatch import statustext

    print(json.dumps(doc, indent=2) if as_json else statustext.render(doc, url=url, color=color))
    return EXIT_DOWN if doc["counts"]["critical"] else EXIT_OK


_SECRET_LIMIT = 4096


def _read_secret(path: str) -> str:
    from poolwatch.errors import ConfigError

    try:
        with open(path, encoding="utf-8") as file:  # noqa: PTH123
            line = file.readline(_SECRET_LIMIT + 1)  # bounded: a device or a huge file never hangs
    except FileNotFoundError:
        raise ConfigError(f"--password-file {path}: no such file") from None
    except PermissionError:
        raise ConfigError(f"--password-file {path}: permission denied") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--password-file {path}: cannot be read ({type(exc).__name__})") from None
    if len(line) > _SECRET_LIMIT:
        raise ConfigError(f"--password-file {path}: first line longer than {_SECRET_LIMIT} characters")
    secret = line.rstrip("\r\n")
    if not secret:
        raise ConfigError(f"--password-file {path}: empty")
    return secret


def _audit(args: argparse.Namespace) -> int:
    from poolwatch.config import load_settings
    from poolwatch.errors import ConfigError
    from poolwatch.logs import setup_logging
    from poolwatch.reaper.audit import AuditLog

    settings = load_settings(args.config)
    setup_logging("ERROR", "text", settings.secrets())
    if settings.audit.url is None:
        raise ConfigError("audit.url is not configured: reaper decisions are only logged and counted")
    log = AuditLog(settings.audit, read_only=True)
    try:
        rows = log.recent(args.limit, target=args.target, mode=args.mode)
    finally:
        log.close()
    waiting = len(log.spool) if log.spool is not None else 0
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        print(format_audit(rows))
    if waiting:
        print(
            f"poolwatch: {waiting} records wait in the local spool ({settings.audit.spool_path})",
            file=sys.stderr,
        )
    return EXIT_OK


AUDIT_COLUMNS = (
    ("decided_at", "DECIDED (UTC)"),
    ("target", "TARGET"),
    ("mode", "MODE"),
    ("reason", "REASON"),
    ("pid", "PID"),
    ("username", "USER"),
    ("database", "DATABASE"),
    ("application", "APPLICATION"),
    ("idle_seconds", "IDLE"),
    ("client_addr", "CLIENT"),
)


def format_audit(rows: list[dict[str, Any]]) -> str:
    def cell(key: str, value: Any) -> str:
        if value is None:
            return "-"
        if key == "decided_at" and isinstance(value, dt.datetime):
            return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        if key == "idle_seconds":
            return f"{float(value):.0f}s"
        return str(value)

    table = [[cell(key, row.get(key)) for key, _ in AUDIT_COLUMNS] for row in rows]
    header = [title for _, title in AUDIT_COLUMNS]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *table, strict=False)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in (header, *table)
    )


def entry() -> None:
    logging.raiseExceptions = False
    code = main()
    # Everything the command opened is closed by now. The interpreter's own teardown would then
    # collect every object SQLAlchemy and APScheduler made, one by one, for nothing: 0.3 s
    # on an idle machine, 1-2 s on a loaded one, between "poolwatch stopped" and the exit.
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: `poolwatch config | head -1`
            stream.flush()
    os._exit(code)
