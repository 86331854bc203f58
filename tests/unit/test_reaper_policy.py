"""The reaper's choice of victims: the pure policy function, case by case and by property."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from fnmatch import fnmatchcase
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poolwatch.census.redis import RedisClient
from poolwatch.reaper.policy import (
    ReaperPolicy,
    Session,
    choose_redis_victims,
    choose_victims,
    host_of,
)

NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.timezone.utc)


def session(**overrides: object) -> Session:
    fields: dict[str, Any] = {
        "pid": 100,
        "backend_type": "client backend",
        "backend_start": NOW - dt.timedelta(hours=5),
        "user": "web",
        "database": "orders",
        "application": "web-1",
        "state": "idle",
        "state_change": NOW - dt.timedelta(seconds=600),
        "superuser": False,
    }
    fields.update(overrides)
    return Session(**fields)


POLICY = ReaperPolicy(idle_timeout=300, idle_in_transaction_timeout=60, applications=("web-*",))


def test_idle_session_of_an_allowed_application_past_the_timeout_is_chosen():
    (victim,) = choose_victims([session()], POLICY, NOW)
    assert victim.reason == "idle"
    assert victim.idle_seconds == 600


def test_idleness_is_measured_from_state_change_not_backend_start():
    recent = session(state_change=NOW - dt.timedelta(seconds=10), backend_start=NOW - dt.timedelta(days=3))
    assert choose_victims([recent], POLICY, NOW) == []


def test_idle_in_transaction_has_its_own_timeout():
    iit = session(state="idle in transaction", state_change=NOW - dt.timedelta(seconds=90))
    aborted = session(
        pid=101, state="idle in transaction (aborted)", state_change=NOW - dt.timedelta(seconds=90)
    )
    idle = session(pid=102, state="idle", state_change=NOW - dt.timedelta(seconds=90))
    chosen = choose_victims([iit, aborted, idle], POLICY, NOW)
    assert [(v.session.pid, v.reason) for v in chosen] == [
        (100, "idle_in_transaction"),
        (101, "idle_in_transaction"),
    ]
    assert choose_victims([iit], ReaperPolicy(idle_timeout=1, applications=("*",)), NOW) == []


def test_active_and_other_states_are_never_chosen():
    states = ["active", "fastpath function call", "disabled", None]
    sessions = [
        session(pid=i, state=s, state_change=NOW - dt.timedelta(days=1)) for i, s in enumerate(states)
    ]
    assert choose_victims(sessions, POLICY, NOW) == []


def test_non_client_backends_are_never_chosen():
    kinds = ["autovacuum worker", "walsender", "background worker", "checkpointer", None]
    sessions = [session(pid=i, backend_type=k) for i, k in enumerate(kinds)]
    assert choose_victims(sessions, POLICY, NOW) == []


def test_own_pids_are_never_chosen():
    assert choose_victims([session(pid=7)], POLICY, NOW, own_pids={7}) == []


def test_superusers_only_when_allowed():
    root = session(superuser=True)
    assert choose_victims([root], POLICY, NOW) == []
    allowing = ReaperPolicy(idle_timeout=300, applications=("web-*",), allow_superusers=True)
    assert len(choose_victims([root], allowing, NOW)) == 1


def test_hidden_columns_are_skipped():
    hidden = [
        session(pid=1, state=None),
        session(pid=2, state_change=None),
        session(pid=3, backend_start=None),
        session(pid=4, user=None),
        session(pid=5, database=None),
        session(pid=6, application=None),
        session(pid=7, superuser=None),
    ]
    wide_open = ReaperPolicy(
        idle_timeout=1, idle_in_transaction_timeout=1, applications=("*",), allow_superusers=True
    )
    assert choose_victims(hidden, wide_open, NOW) == []


def test_excludes_win_over_includes():
    policy = ReaperPolicy(
        idle_timeout=300,
        databases=frozenset({"orders"}),
        users=frozenset({"web"}),
        applications=("web-*",),
        exclude_applications=("web-admin*",),
        exclude_users=frozenset({"web"}),
    )
    assert choose_victims([session()], policy, NOW) == []
    policy = ReaperPolicy(idle_timeout=300, applications=("*",), exclude_databases=frozenset({"orders"}))
    assert choose_victims([session()], policy, NOW) == []
    policy = ReaperPolicy(idle_timeout=300, applications=("web-*",), exclude_applications=("web-1",))
    assert choose_victims([session()], policy, NOW) == []


def test_client_hosts_scope_by_glob_and_excludes_win():
    web = session(pid=1, client_addr="10.1.0.7", client_host="10.1.0.7")
    admin = session(pid=2, client_addr="10.9.0.3", client_host="10.9.0.3")
    named = session(pid=3, client_host="Web-3.Internal")
    inside = ReaperPolicy(idle_timeout=300, applications=("*",), hosts=("10.1.*", "web-*.internal"))
    assert [v.session.pid for v in choose_victims([web, admin, named], inside, NOW)] == [1, 3]
    outside = ReaperPolicy(idle_timeout=300, applications=("*",), exclude_hosts=("10.9.0.3",))
    assert [v.session.pid for v in choose_victims([web, admin], outside, NOW)] == [1]
    both = replace(inside, exclude_hosts=("10.1.0.7",))
    assert [v.session.pid for v in choose_victims([web, admin, named], both, NOW)] == [3]


def test_a_session_without_a_known_host_is_outside_any_host_scope():
    """A PostgreSQL unix-socket client has no address, and a hidden one is unknown: with hosts or
    exclude_hosts set, neither is chosen (it may be one the operator meant to protect)."""
    local = session(client_addr=None, client_host=None)
    assert len(choose_victims([local], ReaperPolicy(idle_timeout=300, applications=("*",)), NOW)) == 1
    assert choose_victims([local], ReaperPolicy(idle_timeout=300, hosts=("*",)), NOW) == []
    excluding = ReaperPolicy(idle_timeout=300, applications=("*",), exclude_hosts=("10.9.0.3",))
    assert choose_victims([local], excluding, NOW) == []


@pytest.mark.parametrize(
    ("address", "host"),
    [
        ("10.0.0.5:51234", "10.0.0.5"),  # MySQL, Redis
        ("::1:51234", "::1"),  # MySQL over IPv6
        ("[::1]:51234", "::1"),  # Redis over IPv6
        ("app-3.internal:40000", "app-3.internal"),  # MySQL with name resolution
        ("localhost", "localhost"),  # MySQL over its socket
        ("10.0.0.5", "10.0.0.5"),
        ("", None),
        (None, None),
    ],
)
def test_host_of_an_address(address, host):
    assert host_of(address) == host


def test_redis_clients_are_scoped_by_host_and_a_socket_client_has_none():
    def client(id_: int, addr: str) -> RedisClient:
        return RedisClient(
            id=id_, addr=addr, name="web-1", user="default", db=0, idle=900.0, kind="normal", in_multi=False
        )

    clients = [client(1, "10.1.0.7:5000"), client(2, "[fd00::9]:5000"), client(3, "/run/redis.sock:0")]
    policy = ReaperPolicy(idle_timeout=300, applications=("*",), exclude_hosts=("fd00::*",))
    assert [v.client.id for v in choose_redis_victims(clients, policy)] == [1]
    policy = ReaperPolicy(idle_timeout=300, hosts=("fd00::9",))
    assert [v.client.id for v in choose_redis_victims(clients, policy)] == [2]


def test_protected_applications_are_never_chosen():
    policy = ReaperPolicy(
        idle_timeout=300, applications=("*",), protected_applications=frozenset({"poolwatch-db"})
    )
    assert choose_victims([session(application="poolwatch-db")], policy, NOW) == []


def test_max_per_run_caps_and_the_longest_idle_go_first():
    sessions = [session(pid=i, state_change=NOW - dt.timedelta(seconds=400 + i)) for i in range(10)]
    chosen = choose_victims(sessions, ReaperPolicy(idle_timeout=300, applications=("*",), max_per_run=3), NOW)
    assert [v.session.pid for v in chosen] == [9, 8, 7]


def test_redis_clients_by_name_kind_and_idle():
    def client(cid: int, **kw: object) -> RedisClient:
        fields: dict[str, Any] = {
            "id": cid,
            "addr": f"127.0.0.1:{1000 + cid}",
            "name": "web-1",
            "user": "default",
            "db": 0,
            "idle": 600.0,
            "kind": "normal",
        }
        fields.update(kw)
        return RedisClient(**fields)

    clients = [
        client(1),
        client(2, name="batch"),
        client(3, idle=5.0),
        client(4, kind="pubsub"),
        client(5, kind="monitor"),
        client(6, kind="replica"),
        client(7, kind="master"),
        client(8),
        client(9, name="poolwatch-cache"),
        client(10, in_multi=True),
    ]
    policy = ReaperPolicy(
        idle_timeout=300,
        applications=("web-*", "poolwatch-*"),
        protected_applications=frozenset({"poolwatch-cache"}),
    )
    chosen = choose_redis_victims(clients, policy, own_ids={8})
    assert sorted(v.client.id for v in chosen) == [1]
    everything = ReaperPolicy(
        idle_timeout=300,
        idle_in_transaction_timeout=300,
        applications=("*",),
        allow_pubsub=True,
        allow_monitors=True,
        allow_replicas=True,
    )
    chosen = choose_redis_victims(clients, everything, own_ids={8})
    assert sorted(v.client.id for v in chosen) == [1, 2, 4, 5, 6, 9, 10]  # never the master link
    assert {v.reason for v in chosen if v.client.id == 10} == {"idle_in_transaction"}


# --- properties --------------------------------------------------------------------------------

NAMES = st.sampled_from(["orders", "billing", "web", "batch", "admin", ""])
APPS = st.sampled_from(["web-1", "web-2", "batch-7", "psql", "", "poolwatch-db", "web-admin"])
PATTERNS = st.sampled_from(["web-*", "batch-*", "*", "psql", "web-?", "poolwatch-*", "[wb]*"])
HOSTS = st.sampled_from(["10.1.0.7", "10.9.0.3", "::1", "localhost", "web-3.internal"])
HOST_PATTERNS = st.sampled_from(["10.1.*", "10.9.0.3", "*", "::1", "web-*", "local*"])
STATES = st.sampled_from(
    ["idle", "active", "idle in transaction", "idle in transaction (aborted)", "disabled", None]
)
BACKENDS = st.sampled_from(["client backend", "client backend", "autovacuum worker", "walsender", None])

sessions_strategy = st.builds(
    Session,
    pid=st.integers(1, 60),
    backend_type=BACKENDS,
    backend_start=st.one_of(st.none(), st.just(NOW - dt.timedelta(days=1))),
    user=st.one_of(st.none(), NAMES),
    database=st.one_of(st.none(), NAMES),
    application=st.one_of(st.none(), APPS),
    state=STATES,
    state_change=st.one_of(st.none(), st.integers(0, 5000).map(lambda s: NOW - dt.timedelta(seconds=s))),
    superuser=st.one_of(st.none(), st.booleans()),
    client_host=st.one_of(st.none(), HOSTS),
)
name_sets = st.frozensets(NAMES, max_size=3)
policies = st.builds(
    ReaperPolicy,
    idle_timeout=st.one_of(st.none(), st.integers(1, 4000).map(float)),
    idle_in_transaction_timeout=st.one_of(st.none(), st.integers(1, 4000).map(float)),
    databases=name_sets,
    exclude_databases=name_sets,
    users=name_sets,
    exclude_users=name_sets,
    applications=st.lists(PATTERNS, max_size=3).map(tuple),
    exclude_applications=st.lists(PATTERNS, max_size=2).map(tuple),
    protected_applications=st.frozensets(APPS, max_size=2),
    hosts=st.one_of(st.just(()), st.lists(HOST_PATTERNS, max_size=2).map(tuple)),
    exclude_hosts=st.one_of(st.just(()), st.lists(HOST_PATTERNS, max_size=2).map(tuple)),
    allow_superusers=st.booleans(),
    max_per_run=st.integers(0, 30),
)


def host_inside(host: str | None, p: ReaperPolicy) -> bool:
    if not p.hosts and not p.exclude_hosts:
        return True
    if host is None:
        return False
    if p.hosts and not any(fnmatchcase(host, pat) for pat in p.hosts):
        return False
    return not any(fnmatchcase(host, pat) for pat in p.exclude_hosts)


def inside_policy(s: Session, p: ReaperPolicy, own: frozenset[int]) -> bool:
    """The policy restated rule by rule, independently of the implementation."""
    if s.backend_type != "client backend" or s.pid in own:
        return False
    if None in (s.backend_start, s.state_change, s.superuser, s.user, s.database, s.application, s.state):
        return False
    if s.superuser and not p.allow_superusers:
        return False
    assert s.state_change is not None
    assert s.application is not None
    idle = (NOW - s.state_change).total_seconds()
    if s.state == "idle":
        timeout = p.idle_timeout
    elif s.state in ("idle in transaction", "idle in transaction (aborted)"):
        timeout = p.idle_in_transaction_timeout
    else:
        return False
    if timeout is None or idle < timeout:
        return False
    if (p.databases and s.database not in p.databases) or s.database in p.exclude_databases:
        return False
    if (p.users and s.user not in p.users) or s.user in p.exclude_users:
        return False
    if s.application in p.protected_applications:
        return False
    if not host_inside(s.client_host, p):
        return False
    if p.applications and not any(fnmatchcase(s.application, pat) for pat in p.applications):
        return False
    return not any(fnmatchcase(s.application, pat) for pat in p.exclude_applications)


@settings(max_examples=250, deadline=None)
@given(st.lists(sessions_strategy, max_size=25), policies, st.frozensets(st.integers(1, 60), max_size=5))
def test_no_session_outside_the_policy_is_ever_chosen(sessions, policy, own):
    chosen = choose_victims(sessions, policy, NOW, own)
    assert len(chosen) <= policy.max_per_run
    for victim in chosen:
        assert victim.session in sessions
        assert inside_policy(victim.session, policy, own), victim
    # ... and it is not an empty answer by construction: everything inside is chosen up to the cap.
    inside = [s for s in sessions if inside_policy(s, policy, own)]
    assert len(chosen) == min(len(inside), policy.max_per_run)
    idles = [v.idle_seconds for v in chosen]
    assert idles == sorted(idles, reverse=True)


redis_clients = st.builds(
    RedisClient,
    id=st.integers(1, 40),
    addr=st.just("127.0.0.1:5000"),
    name=APPS,
    user=NAMES,
    db=st.integers(0, 2),
    idle=st.integers(0, 5000).map(float),
    kind=st.sampled_from(["normal", "pubsub", "replica", "monitor", "master"]),
    in_multi=st.booleans(),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(redis_clients, max_size=25),
    policies,
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.frozensets(st.integers(1, 40), max_size=4),
)
def test_no_redis_client_outside_the_policy_is_ever_chosen(clients, policy, pubsub, monitors, replicas, own):
    policy = replace(policy, allow_pubsub=pubsub, allow_monitors=monitors, allow_replicas=replicas)
    chosen = choose_redis_victims(clients, policy, own)
    assert len(chosen) <= policy.max_per_run
    for victim in chosen:
        c = victim.client
        assert c.id not in own
        assert c.kind != "master"
        assert c.kind != "pubsub" or pubsub
        assert c.kind != "monitor" or monitors
        assert c.kind != "replica" or replicas
        timeout = policy.idle_in_transaction_timeout if c.in_multi else policy.idle_timeout
        assert timeout is not None
        assert c.idle >= timeout
        as_session = Session(
            pid=c.id,
            backend_type="client backend",
            backend_start=NOW,
            user=c.user,
            database=str(c.db),
            application=c.name,
            state="idle",
            state_change=NOW - dt.timedelta(days=365),
            superuser=False,
            client_host="127.0.0.1",
        )
        assert inside_policy(as_session, replace(policy, idle_timeout=1.0), frozenset())


def test_dry_run_records_each_candidate_once_while_it_stays_one():
    from poolwatch.reaper.policy import unrecorded

    fresh, seen = unrecorded([1, 2, 3], lambda x: x, set(), cap=2)
    assert (fresh, seen) == ([1, 2], {1, 2})
    fresh, seen = unrecorded([1, 2, 3], lambda x: x, seen, cap=2)
    assert (fresh, seen) == ([3], {1, 2, 3})
    fresh, seen = unrecorded([2], lambda x: x, seen, cap=2)  # 1 and 3 went away: forgotten
    assert (fresh, seen) == ([], {2})
    fresh, seen = unrecorded([1, 2], lambda x: x, seen, cap=2)  # 1 is back: recorded again
    assert (fresh, seen) == ([1], {1, 2})
