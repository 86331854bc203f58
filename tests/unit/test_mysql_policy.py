"""Which MySQL threads the shared reaper policy may choose: never system, replication or hidden ones."""

from __future__ import annotations

import datetime as dt

import pytest

from poolwatch.census.mysql import Thread
from poolwatch.config import validate
from poolwatch.reaper.mysql import policy_for, session_of
from poolwatch.reaper.policy import choose_victims

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)


def thread(**overrides) -> Thread:
    fields = {
        "id": 42,
        "user": "web",
        "host": "10.0.0.7:51234",
        "database": "shop",
        "command": "Sleep",
        "seconds": 600.0,
        "info": None,
        "in_transaction": False,
        "transaction_seconds": None,
        "program": "",
    }
    return Thread(**{**fields, **overrides})


def policy(**reaper):
    settings = validate(
        {
            "targets": [
                {
                    "name": "shop",
                    "kind": "mysql",
                    "url": "mysql+pymysql://poolwatch@db:3306/",
                    "reaper": {"enabled": True, "idle_timeout": 60, "users": ["web", "poolwatch"], **reaper},
                }
            ]
        }
    )
    return policy_for(settings.targets[0], protected=["poolwatch-shop"])


def victims(*threads: Thread, supers=frozenset(), **reaper):
    sessions = [session_of(t, NOW, supers) for t in threads]
    return [v.session.pid for v in choose_victims(sessions, policy(**reaper), NOW)]


def test_an_idle_client_session_in_scope_is_a_victim():
    assert victims(thread()) == [42]


@pytest.mark.parametrize(
    ("what", "overrides"),
    [
        ("replication source thread", {"command": "Binlog Dump"}),
        ("GTID replication source thread", {"command": "Binlog Dump GTID"}),
        ("replica I/O thread", {"user": "system user", "command": "Connect"}),
        ("replica SQL thread", {"user": "system user", "command": "Slave_SQL"}),
        ("replica worker", {"user": "system user", "command": "Slave_worker"}),
        ("event scheduler", {"user": "event_scheduler", "command": "Daemon"}),
        ("a daemon thread", {"command": "Daemon"}),
        ("busy", {"command": "Query"}),
        ("idle, not long enough", {"seconds": 59.0}),
        ("no default database: its database is unknown", {"database": None}),
        ("age unknown", {"seconds": None}),
        ("the account poolwatch logs in as (every replica's pools)", {"user": "poolwatch"}),
        ("a poolwatch pool by program name", {"program": "poolwatch-shop"}),
        ("in a transaction, and only idle_timeout is set", {"in_transaction": True}),
    ],
)
def test_never_a_victim(what, overrides):
    assert victims(thread(**overrides)) == [], what


def test_superusers_only_when_allowed_and_nobody_when_superusers_are_unknown():
    assert victims(thread(), supers=frozenset({"web"})) == []
    assert victims(thread(), supers=frozenset({"web"}), allow_superusers=True) == [42]
    assert victims(thread(), supers=None) == []


def test_idle_in_transaction_needs_its_own_timeout():
    open_transaction = thread(in_transaction=True)
    assert victims(open_transaction, idle_in_transaction_timeout=300) == [42]
    assert victims(open_transaction, idle_in_transaction_timeout=3600) == []


def test_program_patterns_match_nothing_when_the_server_knows_no_program_names():
    assert victims(thread(program=""), applications=["web-*"]) == []
    assert victims(thread(program="web-1"), applications=["web-*"]) == [42]


def test_client_hosts_are_matched_without_the_port():
    app = thread(id=1, host="10.0.0.7:51234")
    admin = thread(id=2, host="10.0.9.1:40000")
    socket = thread(id=3, host="localhost")  # a unix-socket client, as MySQL shows it
    assert victims(app, admin, socket, hosts=["10.0.0.*"]) == [1]
    assert victims(app, admin, socket, exclude_hosts=["10.0.9.1", "localhost"]) == [1]
    assert victims(app, admin, socket, hosts=["LOCALHOST"]) == [3]
    assert victims(thread(host="::1:51234"), hosts=["::1"]) == [42]
