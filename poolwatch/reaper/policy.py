"""Which sessions the reaper may terminate: a pure function of sessions, policy, clock and own pids.

Nothing here does I/O, so every rule can be checked exhaustively (tests/unit/test_reaper_policy.py
drives it with hypothesis). The safety rules: only client backends, never
poolwatch's own sessions, no superusers unless allowed, nothing whose columns are hidden (a NULL is
"unknown", and unknown is never a victim), idleness measured from ``state_change``, and a cap per run.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Final, Literal, TypeVar

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Callable, Collection, Hashable, Iterable

    from poolwatch.census.redis import RedisClient, RedisKind
    from poolwatch.config import ReaperSettings

Reason = Literal["idle", "idle_in_transaction"]
REASONS: Final[tuple[Reason, ...]] = ("idle", "idle_in_transaction")
CLIENT_BACKEND: Final = "client backend"
IDLE: Final = "idle"
IDLE_IN_TRANSACTION: Final = frozenset({"idle in transaction", "idle in transaction (aborted)"})


@dataclass(frozen=True, slots=True)
class Session:
    """One row of ``pg_stat_activity`` (or one Redis client). ``None`` means hidden or unknown."""

    pid: int
    backend_type: str | None
    backend_start: dt.datetime | None
    user: str | None
    database: str | None
    application: str | None
    state: str | None
    state_change: dt.datetime | None
    superuser: bool | None
    client_addr: str | None = None
    query: str | None = None
    # The client's host without its port, as ``hosts`` / ``exclude_hosts`` match it; None when the
    # server shows none (a PostgreSQL unix-socket client) or hides it.
    client_host: str | None = None


@dataclass(frozen=True, slots=True)
class ReaperPolicy:
    """What may be reaped. Empty include lists mean "any"; excludes always win."""

    idle_timeout: float | None = None
    idle_in_transaction_timeout: float | None = None
    databases: frozenset[str] = frozenset()
    exclude_databases: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    exclude_users: frozenset[str] = frozenset()
    applications: tuple[str, ...] = ()
    exclude_applications: tuple[str, ...] = ()
    # Client host globs (lower case); with either set, a session without a known host is never chosen.
    hosts: tuple[str, ...] = ()
    exclude_hosts: tuple[str, ...] = ()
    # Exact application names that are poolwatch itself (any replica): never touched.
    protected_applications: frozenset[str] = frozenset()
    allow_superusers: bool = False
    # Redis only: client kinds that are never reaped unless allowed.
    allow_pubsub: bool = False
    allow_monitors: bool = False
    allow_replicas: bool = False
    max_per_run: int = 20

    @classmethod
    def from_settings(cls, settings: ReaperSettings, protected: Iterable[str] = ()) -> ReaperPolicy:
        return cls(
            idle_timeout=settings.idle_timeout,
            idle_in_transaction_timeout=settings.idle_in_transaction_timeout,
            databases=frozenset(settings.databases),
            exclude_databases=frozenset(settings.exclude_databases),
            users=frozenset(settings.users),
            exclude_users=frozenset(settings.exclude_users),
            applications=tuple(settings.applications),
            exclude_applications=tuple(settings.exclude_applications),
            hosts=tuple(host.lower() for host in settings.hosts),
            exclude_hosts=tuple(host.lower() for host in settings.exclude_hosts),
            protected_applications=frozenset(protected),
            allow_superusers=settings.allow_superusers,
            allow_pubsub=settings.allow_pubsub,
            allow_monitors=settings.allow_monitors,
            allow_replicas=settings.allow_replicas,
            max_per_run=settings.max_per_run,
        )

    def timeout_for(self, reason: Reason) -> float | None:
        return self.idle_timeout if reason == "idle" else self.idle_in_transaction_timeout


@dataclass(frozen=True, slots=True)
class Victim:
    """A session the policy chose, why, and how long it had been idle at ``now``."""

    session: Session
    reason: Reason
    idle_seconds: float


def reason_for_state(state: str | None) -> Reason | None:
    """The reaper reason a session state can lead to; None for states never reaped (active, ...)."""
    if state == IDLE:
        return "idle"
    if state in IDLE_IN_TRANSACTION:
        return "idle_in_transaction"
    return None


def host_of(address: str | None) -> str | None:
    """A client address without its port: ``10.0.0.5:51234`` -> ``10.0.0.5``, MySQL's
    ``::1:51234`` -> ``::1``, Redis' ``[::1]:51234`` -> ``::1``; one without a port (MySQL's
    ``localhost`` for a socket client) as it is. None or empty: None."""
    if not address:
        return None
    if address.startswith("["):
        host, bracket, _ = address[1:].partition("]")
        return host if bracket and host else None
    host, colon, port = address.rpartition(":")
    if colon and host and port.isdigit():
        return host
    return address


def matches_hosts(host: str | None, policy: ReaperPolicy) -> bool:
    """The client host is inside ``hosts`` and outside ``exclude_hosts`` (globs, case-insensitive).

    With either list set, a session whose host is unknown (hidden, or a unix-socket client on
    PostgreSQL) is outside: it might be one the operator meant to protect.
    """
    if not policy.hosts and not policy.exclude_hosts:
        return True
    if host is None:
        return False
    host = host.lower()
    if policy.hosts and not any(fnmatchcase(host, p) for p in policy.hosts):
        return False
    return not any(fnmatchcase(host, p) for p in policy.exclude_hosts)


def matches_scope(session: Session, policy: ReaperPolicy) -> bool:
    """Database, user, application and client host are inside the policy (include lists, excludes,
    protection).

    Hidden values (None) never match: a session we cannot see is a session we do not touch.
    """
    database, user, application = session.database, session.user, session.application
    if database is None or user is None or application is None:
        return False
    if policy.databases and database not in policy.databases:
        return False
    if database in policy.exclude_databases:
        return False
    if policy.users and user not in policy.users:
        return False
    if user in policy.exclude_users:
        return False
    if application in policy.protected_applications:
        return False
    if not matches_hosts(session.client_host, policy):
        return False
    if policy.applications and not any(fnmatchcase(application, p) for p in policy.applications):
        return False
    return not any(fnmatchcase(application, p) for p in policy.exclude_applications)


def judge(
    session: Session, policy: ReaperPolicy, now: dt.datetime, own_pids: Collection[int]
) -> Victim | None:
    """The verdict on one session: a ``Victim`` if every rule allows it, else None."""
    if session.backend_type != CLIENT_BACKEND or session.pid in own_pids:
        return None
    if session.backend_start is None or session.state_change is None or session.superuser is None:
        return None
    if session.superuser and not policy.allow_superusers:
        return None
    reason = reason_for_state(session.state)
    if reason is None:
        return None
    timeout = policy.timeout_for(reason)
    if timeout is None:
        return None
    idle_seconds = (now - session.state_change).total_seconds()
    if idle_seconds < timeout or not matches_scope(session, policy):
        return None
    return Victim(session, reason, idle_seconds)


def choose_victims(
    sessions: Iterable[Session],
    policy: ReaperPolicy,
    now: dt.datetime,
    own_pids: Collection[int] = frozenset(),
) -> list[Victim]:
    """The sessions to terminate now, longest idle first, at most ``policy.max_per_run``.

    ``now`` should be the server's clock (``now()`` from the same query) so client clock skew cannot
    make a session look idle longer than it is.
    """
    victims = [v for s in sessions if (v := judge(s, policy, now, own_pids)) is not None]
    victims.sort(key=lambda v: (-v.idle_seconds, v.session.pid))
    return victims[: max(0, policy.max_per_run)]


@dataclass(frozen=True, slots=True)
class RedisVictim:
    client: RedisClient
    reason: Reason
    idle_seconds: float


def _kind_allowed(kind: RedisKind, policy: ReaperPolicy) -> bool:
    allowed = {
        "normal": True,
        "pubsub": policy.allow_pubsub,
        "monitor": policy.allow_monitors,
        "replica": policy.allow_replicas,
        "master": False,  # the link to our own primary: killing it breaks replication
    }
    return allowed[kind]


def judge_redis(client: RedisClient, policy: ReaperPolicy, own_ids: Collection[int]) -> RedisVictim | None:
    """The verdict on one Redis client; databases are matched as their numbers ("0", "1", ...)."""
    if client.id in own_ids or not _kind_allowed(client.kind, policy):
        return None
    reason: Reason = "idle_in_transaction" if client.in_multi else "idle"
    timeout = policy.timeout_for(reason)
    if timeout is None or client.idle < timeout:
        return None
    session = Session(
        pid=client.id,
        backend_type=CLIENT_BACKEND,
        backend_start=None,
        user=client.user,
        database=str(client.db),
        application=client.name,
        state=None,
        state_change=None,
        superuser=False,
        client_addr=client.addr,
        # A unix-socket client's address is the socket's path (``/run/redis.sock:0``): no host.
        client_host=None if client.addr.startswith("/") else host_of(client.addr),
    )
    if not matches_scope(session, policy):
        return None
    return RedisVictim(client, reason, client.idle)


def choose_redis_victims(
    clients: Iterable[RedisClient], policy: ReaperPolicy, own_ids: Collection[int] = frozenset()
) -> list[RedisVictim]:
    """The Redis clients to kill now, longest idle first, at most ``policy.max_per_run``."""
    victims = [v for c in clients if (v := judge_redis(c, policy, own_ids)) is not None]
    victims.sort(key=lambda v: (-v.idle_seconds, v.client.id))
    return victims[: max(0, policy.max_per_run)]


T = TypeVar("T")


def unrecorded(
    candidates: list[T], key: Callable[[T], Hashable], recorded: set[Hashable], cap: int
) -> tuple[list[T], set[Hashable]]:
    """Dry run: the candidates not recorded yet (at most ``cap``), and the keys to remember.

    A dry run kills nothing, so the same sessions come back every run; each is recorded once while
    it stays a candidate. Keys of sessions that stopped being candidates are forgotten (so memory is
    bounded by the current candidates), and such a session is recorded again if it returns.
    """
    current = {key(c) for c in candidates}
    fresh = [c for c in candidates if key(c) not in recorded][: max(0, cap)]
    return fresh, (recorded & current) | {key(c) for c in fresh}
