"""Killing idle Redis clients the policy chose: ``CLIENT KILL ID`` with a re-check first.

Redis cannot re-check idleness inside the kill, so right before each kill the reaper reads that one
client again (``CLIENT LIST ID``) and judges it afresh, renews the lease, and then kills with filters
that must all match: the client id, its address (ids restart with the server; the address pins the
connection), its type, and ``SKIPME yes``. Its own connection (``CLIENT ID`` on the same pipeline as
``CLIENT LIST``) and every connection named like poolwatch's pool are never candidates.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Final

from poolwatch.census.redis import parse_client
from poolwatch.errors import first_line, translating
from poolwatch.reaper.audit import AuditRecord, Candidates
from poolwatch.reaper.policy import choose_redis_victims, judge_redis, unrecorded

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable

    import redis

    from poolwatch.census.redis import RedisClient, RedisKind
    from poolwatch.reaper.audit import AuditLog
    from poolwatch.reaper.lease import RedisLease
    from poolwatch.reaper.policy import ReaperPolicy, RedisVictim

log = logging.getLogger(__name__)

# CLIENT KILL TYPE values; a MONITOR client is of type normal.
KILL_TYPE: Final[dict[RedisKind, str]] = {
    "normal": "normal",
    "pubsub": "pubsub",
    "replica": "replica",
    "monitor": "normal",
    "master": "master",
}


class RedisReaper:
    """One reaper run on a Redis target."""

    def __init__(
        self,
        target: str,
        client: redis.Redis,
        lease: RedisLease,
        policy: ReaperPolicy,
        audit: AuditLog,
        *,
        dry_run: bool,
        on_error: Callable[[], None] = lambda: None,
    ) -> None:
        self.target = target
        self.client = client
        self.lease = lease
        self.policy = policy
        self.audit = audit
        self.dry_run = dry_run
        self._on_error = on_error
        self._recorded: set[Hashable] = set()
        self.candidates = Candidates()

    def run(self) -> int:
        with translating(self.target):
            if not self.lease.hold():
                self.candidates = Candidates()  # another replica decides
                return 0
            pipe = self.client.pipeline(transaction=False)
            pipe.client_id()
            pipe.client_list()
            own_id, entries = pipe.execute()
            clients = [parse_client(fields) for fields in entries]
            if self.dry_run:
                everyone = choose_redis_victims(
                    clients, replace(self.policy, max_per_run=len(clients)), {int(own_id)}
                )
                self.candidates = Candidates.of(everyone, self._record)
                victims, self._recorded = unrecorded(
                    everyone,
                    lambda v: (v.client.id, v.client.addr),
                    self._recorded,
                    self.policy.max_per_run,
                )
            else:
                victims = choose_redis_victims(clients, self.policy, {int(own_id)})
            done = 0
            for victim in victims:
                if not self.dry_run and not self._kill(victim, int(own_id)):
                    continue
                self.audit.record(self._record(victim))
                done += 1
            return done

    def _kill(self, victim: RedisVictim, own_id: int) -> bool:
        now = self._reread(victim.client)
        if now is None or now.addr != victim.client.addr or now.kind != victim.client.kind:
            log.info(
                "reaper %s: client %d changed before the kill; left alone", self.target, victim.client.id
            )
            return False
        if judge_redis(now, self.policy, {own_id}) is None:
            log.info("reaper %s: client %d no longer matches; left alone", self.target, victim.client.id)
            return False
        if not self.lease.still_held():
            return False
        try:
            killed = self.client.client_kill_filter(
                _id=str(now.id), _type=KILL_TYPE[now.kind], addr=now.addr, skipme=True
            )
        except Exception as exc:
            self._on_error()
            log.warning("reaper %s: killing client %d failed: %s", self.target, now.id, first_line(exc))
            return False
        return bool(killed)

    def _reread(self, client: RedisClient) -> RedisClient | None:
        entries = self.client.client_list(client_id=[client.id])
        return parse_client(entries[0]) if entries else None

    def _record(self, victim: RedisVictim) -> AuditRecord:
        client = victim.client
        return AuditRecord.make(
            target=self.target,
            kind="redis",
            pid=client.id,
            username=client.user,
            database=str(client.db),
            application=client.name,
            client_addr=client.addr,
            state=client.kind,
            idle_seconds=victim.idle_seconds,
            query=None,
            backend_start=None,
            reason=victim.reason,
            mode="dry_run" if self.dry_run else "enforce",
        )
