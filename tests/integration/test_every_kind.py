"""One daemon watching a PostgreSQL, a MariaDB, a PgBouncer and a Redis target at once: all up, the
MySQL census present, MySQL victims reaped (enforce, audited) while protected sessions live, and
PgBouncer's waiting clients visible while its pool is exhausted."""

from __future__ import annotations

import contextlib
import threading
import uuid

import pytest

from tests.daemonkit import found, metric, running_daemon, scrape, wait_for

pytestmark = pytest.mark.integration


def test_one_daemon_watches_postgres_mariadb_pgbouncer_and_redis(
    pg, mariadb, redis_server, pgbouncer_factory
):
    tag = uuid.uuid4().hex[:6]
    web, orders, watch, audit_db = f"web_{tag}", f"orders_{tag}", f"watch_{tag}", f"audit_{tag}"
    mariadb.execute(f"CREATE DATABASE {orders}")
    mariadb.create_user(web, "pw", f"ALL ON {orders}.*")
    mariadb.create_user(
        watch, "pw", "PROCESS, CONNECTION ADMIN ON *.*", "SELECT (User, Super_priv) ON mysql.user"
    )
    pg.create_database(audit_db)
    bouncer = pgbouncer_factory(pool_size=1)
    config = {
        "targets": [
            {"name": "pg", "kind": "postgres", "url": pg.url(), "probe": {"interval": 0.5, "timeout": 0.5}},
            {
                "name": "maria",
                "kind": "mysql",
                "url": mariadb.url(user=watch, password="pw", database=""),
                "probe": {"interval": 0.5, "timeout": 0.5},
                "census": {"interval": 0.5, "timeout": 0.5, "users": [web], "databases": [orders]},
                "reaper": {
                    "enabled": True,
                    "dry_run": False,
                    "interval": 0.5,
                    "timeout": 0.5,
                    "idle_timeout": 1,
                    "users": [web],
                    "databases": [orders],
                },
            },
            {
                "name": "bouncer",
                "kind": "pgbouncer",
                "url": bouncer.console_url(),
                "probe": {"interval": 0.5, "timeout": 0.5},
                "census": {"interval": 0.5, "timeout": 0.5},
            },
            {
                "name": "cache",
                "kind": "redis",
                "url": redis_server.url(),
                "probe": {"interval": 0.5, "timeout": 0.5},
            },
        ],
        "audit": {"url": pg.url(database=audit_db)},
    }
    victims = [mariadb.connect(web, "pw", database=orders) for _ in range(2)]
    # Protected: outside the policy (another database), and busy (not idle).
    other_database = mariadb.connect(web, "pw")
    busy = mariadb.connect(web, "pw", database=orders)
    stop_busy = threading.Event()

    def keep_busy() -> None:
        with busy.cursor() as cursor:
            while not stop_busy.is_set():
                cursor.execute("SELECT SLEEP(0.2)")

    worker = threading.Thread(target=keep_busy, daemon=True)
    holder, waiter = bouncer.client(), bouncer.client()
    waited = threading.Event()
    try:
        worker.start()
        with running_daemon(config) as daemon:
            wait_for(
                lambda: all(
                    metric(daemon, "poolwatch_up", target=t) == 1 for t in ("pg", "maria", "bouncer", "cache")
                ),
                what="every target up",
            )
            wait_for(
                lambda: (found(scrape(daemon), "poolwatch_server_max_connections", target="maria") or 0) > 0,
                what="the MySQL census",
            )

            def busy_counted() -> bool:
                return any(
                    name == "poolwatch_server_connections"
                    and {("target", "maria"), ("state", "active"), ("user", web)} <= labels
                    and count >= 1
                    for (name, labels), count in scrape(daemon).items()
                )

            wait_for(busy_counted, what="the busy MySQL session in the census")
            wait_for(
                lambda: not any(mariadb.alive(v.thread_id()) for v in victims),
                timeout=15,
                what="MySQL victims",
            )
            assert mariadb.alive(other_database.thread_id())
            assert mariadb.alive(busy.thread_id())
            wait_for(
                lambda: (
                    metric(
                        daemon,
                        "poolwatch_reaper_terminated_total",
                        target="maria",
                        reason="idle",
                        mode="enforce",
                    )
                    == 2
                ),
                what="two kills counted",
            )
            wait_for(
                lambda: daemon.audit.spool is not None and not len(daemon.audit.spool), what="audit written"
            )
            kinds = pg.execute(
                "SELECT kind, count(*) FROM poolwatch_audit WHERE target = 'maria' GROUP BY kind",
                dbname=audit_db,
            )
            assert kinds == [("mysql", 2)]
            # PgBouncer's only server connection is held: the next client waits, and it shows.
            holder.cursor().execute("SELECT 1")

            def wait_for_a_connection() -> None:
                waiter.cursor().execute("SELECT 1")
                waited.set()

            threading.Thread(target=wait_for_a_connection, daemon=True).start()
            wait_for(
                lambda: (
                    (
                        found(
                            scrape(daemon),
                            "poolwatch_pgbouncer_client_connections",
                            target="bouncer",
                            database="postgres",
                            state="waiting",
                        )
                        or 0
                    )
                    >= 1
                ),
                what="a waiting PgBouncer client",
            )
            holder.commit()
            assert waited.wait(10)
    finally:
        stop_busy.set()
        worker.join(5)
        for connection in (other_database, busy, *victims):
            with contextlib.suppress(Exception):
                connection.close()
        holder.close()
        waiter.close()
