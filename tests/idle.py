"""Waiting until server sessions have been idle long enough, by the server's own clock (what the
census and the reaper read), instead of sleeping past a timeout."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.daemonkit import wait_for

if TYPE_CHECKING:
    from collections.abc import Collection

    from tests.servers import PostgresServer, RedisServer


def wait_pg_idle(
    pg: PostgresServer,
    pids: Collection[int],
    seconds: float,
    states: Collection[str] = ("idle",),
    timeout: float = 20,
) -> None:
    """Until every backend in ``pids`` has been in one of ``states`` for more than ``seconds``."""

    def idle() -> bool:
        rows = pg.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s) AND state = ANY(%s)"
            " AND state_change < now() - make_interval(secs => %s)",
            (list(pids), list(states), seconds),
        )
        return bool(rows[0][0] == len(pids))

    wait_for(idle, timeout, f"{len(pids)} sessions {'/'.join(states)} for {seconds}s", step=0.02)


def wait_redis_idle(server: RedisServer, ids: Collection[int], seconds: int, timeout: float = 20) -> None:
    """Until every client in ``ids`` has been idle at least ``seconds`` (whole seconds, as Redis
    counts them in CLIENT LIST)."""

    def idle() -> bool:
        admin = server.client()
        try:
            found = {int(c["id"]): int(c["idle"]) for c in admin.client_list() if int(c["id"]) in ids}
        finally:
            admin.close()
        return len(found) == len(ids) and min(found.values(), default=seconds) >= seconds

    wait_for(idle, timeout, f"{len(ids)} clients idle {seconds}s", step=0.1)
