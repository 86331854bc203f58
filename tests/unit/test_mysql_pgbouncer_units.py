"""Without servers: MySQL error classification, and PgBouncer SHOW rows becoming samples."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pymysql
import pytest
import sqlalchemy.exc as sa_exc
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine

from poolwatch.census.pgbouncer import Folder, samples
from poolwatch.errors import (
    AuthenticationFailedError,
    DatabaseUnavailableError,
    TransactionFailedError,
    reason_of,
    translate,
)
from poolwatch.metrics import PGBOUNCER_FAMILIES, Metrics


def wrapped(code: int, message: str) -> sa_exc.OperationalError:
    return sa_exc.OperationalError("SELECT 1", {}, pymysql.err.OperationalError(code, message))


@pytest.mark.parametrize(
    ("code", "message", "reason"),
    [
        (1045, "Access denied for user 'app'@'10.0.0.1' (using password: YES)", "auth"),
        (1040, "Too many connections", "too_many_connections"),
        (2003, "Can't connect to MySQL server on 'db' ([Errno 111] Connection refused)", "refused"),
        (2003, "Can't connect to MySQL server on 'db' (timed out)", "timeout"),
        (2003, "Can't connect to MySQL server on 'nowhere' ([Errno -2] Name or service not known)", "dns"),
        (2006, "MySQL server has gone away", "reset"),
        (2013, "Lost connection to MySQL server during query", "reset"),
        (4031, "The client was disconnected by the server because of inactivity.", "reset"),
    ],
)
def test_mysql_errors_have_a_reason(code: int, message: str, reason: str) -> None:
    assert reason_of(wrapped(code, message)) == reason
    assert reason_of(pymysql.err.OperationalError(code, message)) == reason


def test_mysql_errors_translate_to_what_a_caller_can_act_on() -> None:
    assert isinstance(translate(wrapped(1045, "Access denied")), AuthenticationFailedError)
    assert isinstance(translate(wrapped(2013, "Lost connection")), DatabaseUnavailableError)
    deadlock = translate(
        sa_exc.OperationalError("UPDATE t", {}, pymysql.err.OperationalError(1213, "Deadlock found"))
    )
    assert isinstance(deadlock, TransactionFailedError)
    assert deadlock.retryable


@pytest.mark.parametrize("code", [2006, 2013, 4031])
def test_sqlalchemy_invalidates_connections_on_mysql_disconnect_errors(code: int) -> None:
    engine = create_engine("mysql+pymysql://u@127.0.0.1:9/x")
    error = pymysql.err.OperationalError(code, "gone")
    assert engine.dialect.is_disconnect(error, None, None)


POOLS_1_18 = [
    {
        "database": "orders",
        "user": "web",
        "cl_active": 2,
        "cl_waiting": 3,
        "cl_active_cancel_req": 0,
        "cl_waiting_cancel_req": 0,
        "sv_active": 2,
        "sv_active_cancel": 0,
        "sv_being_canceled": 0,
        "sv_idle": 0,
        "sv_used": 1,
        "sv_tested": 0,
        "sv_login": 0,
        "maxwait": 4,
        "maxwait_us": 250000,
        "pool_mode": "transaction",
    },
    # An older PgBouncer: no cancel columns, no maxwait_us.
    {
        "database": "batch",
        "user": "etl",
        "cl_active": 1,
        "cl_waiting": 0,
        "sv_active": 1,
        "sv_idle": 1,
        "sv_used": 0,
        "sv_tested": 0,
        "sv_login": 0,
        "maxwait": 0,
        "pool_mode": "session",
    },
]


def as_dict(rows):
    return {(name, labels): value for name, labels, value in rows}


def test_pool_rows_become_client_and_server_states_and_the_longest_wait() -> None:
    got = as_dict(samples({"POOLS": POOLS_1_18}, Folder()))
    assert got["pgbouncer_client_connections", ("orders", "web", "waiting")] == 3
    assert got["pgbouncer_server_connections", ("orders", "web", "used")] == 1
    assert got["pgbouncer_client_max_wait_seconds", ("orders", "web")] == 4.25
    assert got["pgbouncer_pool_mode", ("batch", "etl", "session")] == 1
    # Columns the older version lacks are absent, not zero.
    assert ("pgbouncer_client_connections", ("batch", "etl", "active_cancel_req")) not in got


def test_stats_are_counters_in_base_units_and_lists_config_version_are_read() -> None:
    shown: dict[str, list[dict[str, Any]]] = {
        "STATS": [
            {
                "database": "orders",
                "total_query_count": Decimal(10),
                "total_query_time": Decimal(2_500_000),
                "total_wait_time": Decimal(500_000),
                "avg_query_time": Decimal(3),
            }
        ],
        "LISTS": [{"list": "free_clients", "items": 49}],
        "CONFIG": [
            {"key": "max_client_conn", "value": "100", "default": "100", "changeable": "yes"},
            {"key": "listen_addr", "value": "127.0.0.1", "default": "", "changeable": "no"},
        ],
        "VERSION": [{"version": "PgBouncer 1.18.0"}],
        "DATABASES": [{"name": "orders", "pool_size": 20, "max_connections": 0, "paused": 0, "host": "db"}],
    }
    got = as_dict(samples(shown, Folder()))
    assert got["pgbouncer_queries", ("orders",)] == 10
    assert got["pgbouncer_query_seconds", ("orders",)] == 2.5
    assert got["pgbouncer_client_wait_seconds", ("orders",)] == 0.5
    assert got["pgbouncer_list_items", ("free_clients",)] == 49
    assert got["pgbouncer_config_max_client_connections", ()] == 100
    assert got["pgbouncer_version_info", ("PgBouncer 1.18.0",)] == 1
    assert got["pgbouncer_database_pool_size", ("orders",)] == 20
    assert all(name in PGBOUNCER_FAMILIES for name, _ in got)


@pytest.mark.parametrize(
    "reserve_column",
    ["reserve_pool", "reserve_pool_size"],
    ids=["before-1.24", "1.24-and-later"],
)
def test_the_reserve_pool_is_read_under_its_old_and_its_new_column_name(reserve_column: str) -> None:
    row = {"name": "orders", "pool_size": 20, "min_pool_size": 0, reserve_column: 5, "max_connections": 40}
    got = as_dict(samples({"DATABASES": [row]}, Folder()))
    assert got["pgbouncer_database_reserve_pool_size", ("orders",)] == 5
    assert got["pgbouncer_database_pool_size", ("orders",)] == 20
    assert got["pgbouncer_database_max_connections", ("orders",)] == 40


def test_client_rows_are_counted_by_database_user_application_and_state() -> None:
    def client(database: str, user: str, application: str | None, state: str) -> dict[str, Any]:
        row = {"type": "C", "user": user, "database": database, "state": state, "addr": "10.0.0.9"}
        return row if application is None else {**row, "application_name": application}

    rows = [
        client("orders", "web", "web-1", "active"),
        client("orders", "web", "web-1", "active"),
        client("orders", "web", "web-1", "waiting"),
        client("orders", "web", "req-81f3", "active"),  # a name the client chose: folded
        client("orders", "web", "req-77aa", "active"),
        client("batch", "etl", None, "idle"),  # a PgBouncer without the column
    ]
    got = as_dict(samples({"CLIENTS": rows}, Folder(applications=["web-1"])))
    assert got == {
        ("pgbouncer_clients", ("orders", "web", "web-1", "active")): 2,
        ("pgbouncer_clients", ("orders", "web", "web-1", "waiting")): 1,
        ("pgbouncer_clients", ("orders", "web", "", "active")): 2,
        ("pgbouncer_clients", ("batch", "etl", "", "idle")): 1,
    }
    # No census.applications: every application name is folded, as in the census.
    unnamed = as_dict(samples({"CLIENTS": rows}, Folder()))
    assert unnamed["pgbouncer_clients", ("orders", "web", "", "active")] == 4


def test_unlisted_names_fold_into_the_empty_value_counts_summed_waits_maxed() -> None:
    rows = [
        {"database": "a", "user": "u", "cl_waiting": 2, "maxwait": 3},
        {"database": "b", "user": "u", "cl_waiting": 5, "maxwait": 1},
        {"database": "keep", "user": "u", "cl_waiting": 1, "maxwait": 9},
    ]
    got = as_dict(samples({"POOLS": rows}, Folder(databases=["keep"], users=["u"])))
    assert got["pgbouncer_client_connections", ("", "u", "waiting")] == 7
    assert got["pgbouncer_client_max_wait_seconds", ("", "u")] == 3
    assert got["pgbouncer_client_max_wait_seconds", ("keep", "u")] == 9


def test_pgbouncer_families_render_counters_with_total_and_drop_a_removed_target() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.pgbouncer.publish("pgb", [("pgbouncer_queries", ("orders",), 7.0)])
    value = metrics.registry.get_sample_value
    assert value("poolwatch_pgbouncer_queries_total", {"target": "pgb", "database": "orders"}) == 7
    metrics.pgbouncer.remove_target("pgb")
    assert value("poolwatch_pgbouncer_queries_total", {"target": "pgb", "database": "orders"}) is None
