"""The daemon: builds everything from settings; start, run (foreground), stop; signals and reload.

SIGTERM and SIGINT stop the scheduler, dispose the engines, close the Redis clients and return, so
``poolwatch run`` exits 0 within a few seconds even while a target hangs. SIGHUP re-reads the
configuration: a valid one replaces the changed targets (their counters count on) and applies the
log level and format; an invalid one is logged and the running configuration kept. The HTTP listener
and the audit log keep the settings they started with (a WARNING says when those changed): swapping
the audit log under running reapers could strand records still waiting in its spool, so a new one
waits for a restart, and a reload that would leave an enforcing reaper without an audit table is
refused.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy.pool import QueuePool

from poolwatch import http, process, statuspage
from poolwatch._version import __version__
from poolwatch.census import mysql as mysql_census
from poolwatch.census import pgbouncer
from poolwatch.census import postgres as pg_census
from poolwatch.census import redis as redis_census
from poolwatch.census.job import CensusJob, PgBouncerJob
from poolwatch.census.shared import SharedReadings
from poolwatch.config import EMBEDDED_SOURCE, AuditSettings, validate
from poolwatch.database import Database, RedisDatabase
from poolwatch.errors import PoolwatchError
from poolwatch.history import History
from poolwatch.housekeeping import Housekeeper, HousekeepingJob, HousekeepingPolicy
from poolwatch.instrument import instrument, instrument_redis
from poolwatch.metrics import Metrics
from poolwatch.otlp_start import start_push
from poolwatch.probe import Probe, redis_check, sql_check
from poolwatch.reaper.audit import AuditLog
from poolwatch.reaper.job import build_postgres_reaper, build_redis_reaper
from poolwatch.reaper.mysql import build_mysql_reaper
from poolwatch.reaper.own import BACKENDS
from poolwatch.scheduler import JobStats, Scheduler
from poolwatch.serverlabel import redis_server, sql_server
from poolwatch.status import Sources, Tracker, document
from poolwatch.targetfiles import Watcher

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from threading import Thread

    from poolwatch.config import LogSettings, Settings, TargetSettings
    from poolwatch.httpserver import HttpServer
    from poolwatch.instrument import RedisInstrumentation, SQLAlchemyInstrumentation
    from poolwatch.instrument.recorder import Recorder
    from poolwatch.jobs import Job, Outcome
    from poolwatch.otlp import OtlpPush
    from poolwatch.status import StatusDoc

log = logging.getLogger(__name__)


@dataclass
class TargetRuntime:
    """What the daemon holds for one target: its shared engine or client, and its jobs."""

    settings: TargetSettings
    probe: Probe
    database: Database | None = None
    redis: RedisDatabase | None = None
    console: pgbouncer.AdminConsole | None = None
    jobs: list[Job] = field(default_factory=list)
    instrumentation: SQLAlchemyInstrumentation | RedisInstrumentation | None = None
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        if self.instrumentation is not None:
            self.instrumentation.remove()
        for closer in self.closers:
            _close_quietly(closer, self.settings.name)
        try:
            if self.database is not None:
                self.database.dispose()
            if self.redis is not None:
                self.redis.close()
            if self.console is not None:
                self.console.close()
        except Exception as exc:
            log.warning("closing %s failed: %s", self.settings.name, type(exc).__name__)


def _changed(target: TargetSettings, before: Settings, after: Settings) -> bool:
    """Whether a reload from ``before`` to ``after`` must (re)build ``target``: it is new or its
    settings changed, or the pools its census knows did (a target on its server came or went)."""
    if target not in before.targets:
        return True
    return pg_census.known_pools(target, before.targets) != pg_census.known_pools(target, after.targets)


def _close_quietly(closer: Callable[[], None], name: str) -> None:
    try:
        closer()
    except Exception as exc:
        log.warning("closing %s failed: %s", name, type(exc).__name__)


def build_target(
    target: TargetSettings,
    metrics: Metrics,
    *,
    audit: AuditLog | None = None,
    others: Iterable[TargetSettings] = (),
    counts_from: Recorder | None = None,
    shared: SharedReadings[Any] | None = None,
) -> TargetRuntime:
    """The shared engine or client of a target (instrumented, with housekeeping), and its scheduled
    jobs. ``others`` are the other configured targets (their pools are counted by name in the
    census); ``audit`` records reaper decisions (without one, they are only logged and counted);
    ``counts_from``, the pool recorder of the runtime this one replaces, whose counts go on;
    ``shared``, the census readings shared by the targets on one server.
    The probe is every other job's ``Backoff``: none logs in while it backs off after failed logins."""
    database: Database | None = None
    redis_db: RedisDatabase | None = None
    console: pgbouncer.AdminConsole | None = None
    pool = target.pool
    instrumentation: SQLAlchemyInstrumentation | RedisInstrumentation | None = None
    if target.kind == "pgbouncer":
        # No pool of ours: the admin console is one connection, shared by the probe and stats job.
        console = pgbouncer.AdminConsole(target)
        check = pgbouncer.pgbouncer_check(console)
    elif target.kind == "redis":
        redis_db = RedisDatabase.from_target(target)
        check = redis_check(redis_db.client)
        instrumentation = instrument_redis(
            redis_db.client,
            name=target.name,
            registry=metrics.registry,
            leak_threshold=pool.leak_threshold,
            counts_from=counts_from,
        )
    else:
        database = Database.from_target(target)
        check = sql_check(database.engine)
        if isinstance(database.engine.pool, QueuePool):
            instrumentation = instrument(
                database.engine,
                name=target.name,
                registry=metrics.registry,
                leak_threshold=pool.leak_threshold,
                counts_from=counts_from,
            )
        else:
            # Validation refuses in-memory SQLite, whose engine gets a SingletonThreadPool or a
            # StaticPool; should another pool class appear, the target is still probed.
            log.warning(
                "target %s: no pool metrics for a %s", target.name, type(database.engine.pool).__name__
            )
    probe = Probe(
        target.name,
        check,
        metrics.probe,
        interval=target.probe.interval,
        timeout=target.probe.timeout,
        auth_backoff_max=target.probe.auth_backoff_max,
    )
    jobs: list[Job] = [probe]
    if instrumentation is not None:
        housekeeper = Housekeeper(instrumentation, HousekeepingPolicy.from_settings(pool))
        interval = pool.housekeeping_interval
        jobs.append(
            HousekeepingJob(
                target.name,
                housekeeper,
                interval=interval,
                timeout=max(1.0, interval),
                backoff=probe,
            )
        )
    metrics.probe.add_target(target.name)
    metrics.targets.add_target(target.name, target.kind)
    runtime = TargetRuntime(
        target, probe, database, redis_db, console, jobs=jobs, instrumentation=instrumentation
    )
    if console is not None:
        _add_pgbouncer_stats(runtime, console, metrics)
    else:
        _add_census_and_reaper(runtime, metrics, audit, others, shared)
    return runtime


def _add_pgbouncer_stats(runtime: TargetRuntime, console: pgbouncer.AdminConsole, metrics: Metrics) -> None:
    """The stats job of a PgBouncer target (its census settings say how often); no census, no reaper."""
    target = runtime.settings
    if target.census.enabled:
        runtime.jobs.append(
            PgBouncerJob(
                target.name,
                pgbouncer.stats(target, console),
                metrics.pgbouncer,
                interval=target.census.interval,
                timeout=target.census.timeout,
                backoff=runtime.probe,
            )
        )


def _server_label(runtime: TargetRuntime) -> str:
    """The ``server`` label of a target's census: the one its pool series carry."""
    if runtime.database is not None:
        return sql_server(runtime.database.engine.url)
    if runtime.redis is not None:
        return redis_server(runtime.redis.client.connection_pool.connection_kwargs)
    return ""


def _add_census_and_reaper(
    runtime: TargetRuntime,
    metrics: Metrics,
    audit: AuditLog | None,
    others: Iterable[TargetSettings],
    shared: SharedReadings[Any] | None,
) -> None:
    """The census job, and the reaper job when enabled (postgres, mysql and redis targets)."""
    target = runtime.settings
    others = tuple(others)
    pools = pg_census.known_pools(target, others)
    take = None
    if runtime.database is not None and target.kind == "postgres":
        BACKENDS.track(runtime.database.engine)  # the reaper never touches our own sessions
        take = pg_census.census(target, runtime.database.engine, pools, shared)
    elif runtime.database is not None and target.kind == "mysql":
        BACKENDS.track(runtime.database.engine)
        take = mysql_census.census(target, runtime.database.engine, pools)
    elif runtime.redis is not None:
        take = redis_census.census(target, runtime.redis.client, pools, shared)
    if take is not None and target.census.enabled:
        metrics.census.set_server(target.name, _server_label(runtime))
        runtime.jobs.append(
            CensusJob(
                target.name,
                take,
                metrics.census,
                interval=target.census.interval,
                timeout=target.census.timeout,
                backoff=runtime.probe,
            )
        )
    if not target.reaper.enabled or take is None:
        return
    if audit is None:  # log and count only (`poolwatch check`, embedding without an audit table)
        audit = AuditLog(AuditSettings(), metrics.reaper)
    if runtime.redis is not None:
        reaper = build_redis_reaper(
            target, runtime.redis.client, audit, metrics.reaper, others, backoff=runtime.probe
        )
    elif target.kind == "mysql":
        reaper = build_mysql_reaper(target, audit, metrics.reaper, others=others, backoff=runtime.probe)
    else:
        reaper = build_postgres_reaper(target, audit, metrics.reaper, others=others, backoff=runtime.probe)
    runtime.jobs.append(reaper)
    runtime.closers.append(reaper.close)


# After a status request, job outcomes prepare the status (each target's part and its card) for
# this long; after that, until the next request, they only take their samples.
STATUS_WANTED_FOR: Final = 600.0


class Daemon:
    """poolwatch's long-running process, built from validated settings.

    ``loader`` re-reads the configuration on SIGHUP; without one, SIGHUP is ignored. ``on_secrets``
    and ``on_log`` hand the reloaded secrets and log settings to whoever set logging up. ``history``
    makes the trend buffer of each target (the status page's sparklines).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        loader: Callable[[], Settings] | None = None,
        on_secrets: Callable[[list[str]], None] | None = None,
        on_log: Callable[[LogSettings], None] | None = None,
        history: Callable[[], History] = History,
        settle_heap: bool = False,
    ) -> None:
        self.settings = settings
        # poolwatch run owns its process: once the targets are built (and after each reload, which
        # thaws the heap first so dropped targets are freed), what it holds is frozen out of the
        # garbage collector's full passes (poolwatch.process.settle_heap). Never in an application.
        self._settle_heap = settle_heap
        self._history = history
        self.metrics = metrics if metrics is not None else Metrics()
        self._loader = loader
        self._on_secrets = on_secrets
        self._on_log = on_log
        self._scheduler = Scheduler(self.metrics.jobs, on_record=self._observe)
        self._readings: SharedReadings[Any] = SharedReadings()
        self.audit = AuditLog(settings.audit, self.metrics.reaper)
        self._targets: dict[str, TargetRuntime] = {}
        # Trends by target name: they outlive a reload that rebuilds the target.
        self._trackers: dict[str, Tracker] = {}
        self._targets_lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._server: tuple[HttpServer, Thread] | None = None
        self._watcher: Watcher | None = None
        self._otlp: OtlpPush | None = None
        self._started = threading.Event()
        self._stopped = threading.Event()
        self._status_wanted = 0.0  # monotonic time until which job outcomes prepare the status

    @property
    def address(self) -> tuple[str, int]:
        """Where /metrics is served (the real port when ``listen`` asked for port 0)."""
        if self._server is None:
            return self.settings.http.address
        host, port = self._server[0].server_address[:2]
        return str(host), int(port)

    @property
    def base_url(self) -> str:
        host, port = self.address
        scheme = "https" if self.settings.http.tls else "http"
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{port}"

    def start(self) -> None:
        """Build the targets and start serving HTTP; jobs run once ``run()`` is called."""
        users = {
            name: hashed.get_secret_value().encode()
            for name, hashed in self.settings.http.basic_auth_users.items()
        }
        endpoint = http.Endpoint(
            self.metrics.registry,
            healthy=self.healthy,
            ready=self.ready,
            status=self.status,
            basic_auth_users=users,
        )
        self._server = http.serve(endpoint, self.settings.http)
        try:
            # A SIGHUP arriving meanwhile reloads after the targets are built, not between them.
            with self._reload_lock:
                for target in self.settings.targets:
                    self._add_target(target, self.settings.targets)
            self._otlp = start_push(self.settings.otlp, self.metrics.registry)
            if self._settle_heap:
                frozen = process.settle_heap()
                log.debug("%d objects of start-up left out of the garbage collector's passes", frozen)
        except BaseException:
            self._close()
            raise
        # Only now: a target that cannot be built ends start-up with one error line, not a banner
        # announcing a daemon that never ran.
        log.info("%s", self._banner())
        files = self.settings.target_files
        if files.directory is not None and self._loader is not None:
            # Its own thread: a reload builds targets, which neither the scheduler nor HTTP waits for.
            self._watcher = Watcher(files.directory, files.interval, self.reload)
            self._watcher.start()
        self._started.set()

    def _banner(self) -> str:
        where = f"{self.base_url}/metrics"
        if self.settings.source == EMBEDDED_SOURCE:
            (target,) = self.settings.targets
            return (
                f"poolwatch {__version__}: no configuration given, monitoring the embedded SQLite "
                f"database {target.url.removeprefix('sqlite:///')}; /metrics on {where}"
            )
        names = ", ".join(f"{t.name} ({t.kind})" for t in self.settings.targets) or "none"
        shard = self.settings.shard
        share = f"shard {shard.index}/{shard.count}, " if shard.count > 1 else ""
        return (
            f"poolwatch {__version__}: configuration from {self.settings.source}; "
            f"{share}targets {names}; /metrics on {where}"
        )

    def _add_target(
        self,
        target: TargetSettings,
        configured: Iterable[TargetSettings],
        previous: TargetRuntime | None = None,
    ) -> TargetRuntime:
        """Build and schedule a target of the ``configured`` ones; ``previous``, the runtime it
        replaces, hands its pool counters on."""
        others = [t for t in configured if t.name != target.name]
        old_pool = previous.instrumentation if previous is not None else None
        runtime = build_target(
            target,
            self.metrics,
            audit=self.audit,
            others=others,
            counts_from=old_pool.recorder if old_pool is not None else None,
            shared=self._readings,
        )
        with self._targets_lock:
            self._targets[target.name] = runtime
            self._trackers.setdefault(target.name, Tracker(self._history()))
        for job in runtime.jobs:
            self._scheduler.add(job)
        return runtime

    def _remove_target(self, name: str) -> None:
        with self._targets_lock:
            runtime = self._targets.pop(name)
        self._scheduler.remove_target(name)
        self._drop_series(name, {job.task for job in runtime.jobs})
        runtime.close()

    def _replace_target(self, target: TargetSettings, configured: Iterable[TargetSettings]) -> None:
        """Swap a changed target's runtime for a new one. Its counters count on from where they
        were (a drop would read as a counter reset, and ``rate()`` over it as a spike): the series
        stay, and the new pool's recorder starts from the old one's. Series of jobs the new
        configuration no longer runs go."""
        name = target.name
        with self._targets_lock:
            old = self._targets.pop(name)
        self._scheduler.remove_target(name, keep_series=True)
        old.close()
        tasks = {job.task for job in old.jobs}
        try:
            new = self._add_target(target, configured, previous=old)
        except BaseException:
            self._drop_series(name, tasks | {"probe"})
            raise
        self._drop_series(name, tasks - {job.task for job in new.jobs})

    def _drop_series(self, name: str, tasks: set[str]) -> None:
        """Remove the series of ``name``'s ``tasks`` (``probe``: the target's own as well)."""
        for task in tasks:
            self.metrics.jobs.remove_job(task, name)
        if "probe" in tasks:
            self.metrics.probe.remove_target(name)
            self.metrics.targets.remove_target(name)
        if "census" in tasks:
            self.metrics.census.remove_target(name)
        if "pgbouncer" in tasks:
            self.metrics.pgbouncer.remove_target(name)
        if "reaper" in tasks:
            self.metrics.reaper.remove_target(name)

    def run(self) -> None:
        """Start if needed, then run jobs in the foreground until SIGTERM/SIGINT or ``stop()``.

        The handlers go in before start-up: once the banner says the daemon runs, a SIGTERM stops
        it cleanly (exit 0) instead of killing it with the signal's default action."""
        self._install_signal_handlers()
        if not self._started.is_set():
            self.start()
        try:
            self._scheduler.run()
        finally:
            self._close()
        log.info("poolwatch stopped")

    def stop(self) -> None:
        """Ask ``run()`` to return. Safe from any thread, and to call twice."""
        self._scheduler.stop()

    def reload(self) -> None:
        """Re-read the configuration; if it is valid, replace the changed targets and apply the log
        settings. The HTTP listener and the audit log keep their settings until a restart.

        Every SIGHUP runs this on a thread of its own; reloads take turns (two at once would both
        add, or both remove, the same target), and each one re-reads the file when its turn comes;
        one during start-up waits for the targets to be built."""
        if not self._reload_lock.acquire(blocking=False):
            log.debug("reload: waiting for the reload (or start-up) under way to finish")
            self._reload_lock.acquire()
        try:
            if self._settle_heap:
                process.thaw_heap()  # what the reload drops must be collectable, cycles included
            try:
                self._reload()
            finally:
                if self._settle_heap:
                    process.settle_heap()
        finally:
            self._reload_lock.release()

    def _reload(self) -> None:
        new = self._reread()
        if new is None:
            return
        if self._on_log is not None and new.log != self.settings.log:
            self._on_log(new.log)
            log.info("reload: logging at %s as %s", new.log.level, new.log.format)
        old = {t.name: t for t in self.settings.targets}
        fresh = {t.name: t for t in new.targets}
        for name in old.keys() - fresh.keys():
            self._remove_target(name)
        for name, target in fresh.items():
            if not _changed(target, self.settings, new):
                continue
            try:
                # Built against the new configuration: its other targets are the census's known pools.
                if name in old:
                    self._replace_target(target, new.targets)
                else:
                    self._add_target(target, new.targets)
            except PoolwatchError as exc:
                log.error("reload: target %s not started: %s", name, exc)  # noqa: TRY400
        with self._targets_lock:
            for name in set(self._trackers) - set(fresh):
                del self._trackers[name]
        self.settings = new
        log.info("configuration reloaded from %s", new.source)

    def _reread(self) -> Settings | None:
        """The configuration to run from now on: the file's, with the running http and audit
        settings; None (logged) when there is none to reload or it is refused."""
        if self._loader is None:
            return None
        try:
            loaded = self._loader()
        except PoolwatchError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)  # noqa: TRY400
            return None
        try:
            # Validated again with what stays: an enforcing reaper needs an audit table, and the
            # one it gets is the running audit log's, whatever the file now says.
            new = validate(
                {
                    **dict(loaded),
                    "http": self.settings.http,
                    "audit": self.audit.settings,
                    "otlp": self.settings.otlp,
                }
            )
        except PoolwatchError as exc:
            log.error(  # noqa: TRY400 - one line, no traceback
                "reload refused, keeping the running configuration: %s (audit settings take effect "
                "after a restart)",
                exc,
            )
            return None
        if loaded.http != self.settings.http:
            log.warning("reload: http settings changed; they take effect after a restart")
        if loaded.audit != self.audit.settings:
            log.warning("reload: audit settings changed; they take effect after a restart")
        if loaded.otlp != self.settings.otlp:
            log.warning("reload: otlp settings changed; they take effect after a restart")
        if self._on_secrets is not None:
            self._on_secrets(loaded.secrets() + self.settings.secrets())
        return new

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        # Handlers only start threads: doing the work inside a handler could re-enter a lock the
        # interrupted main thread holds (APScheduler's, or a thread pool's).
        def on_stop(signum: int, _frame: object) -> None:
            log.info("received %s, stopping", signal.Signals(signum).name)
            threading.Thread(target=self.stop, name="poolwatch-stop", daemon=True).start()

        def on_reload(_signum: int, _frame: object) -> None:
            threading.Thread(target=self.reload, name="poolwatch-reload", daemon=True).start()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_reload)

    def _close(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._watcher is not None:
            self._watcher.stop()
        self._scheduler.stop()
        if self._otlp is not None:  # a last push, while the pools are still there
            self._otlp.close()
        with self._targets_lock:
            runtimes = list(self._targets.values())
        for runtime in runtimes:
            runtime.close()
        self.audit.close()
        if self._server is not None:
            http.stop_server(*self._server)

    def healthy(self) -> bool:
        return self._started.is_set() and self._scheduler.healthy

    def ready(self) -> bool:
        return self._started.is_set() and not self._stopped.is_set()

    def status(self) -> StatusDoc:
        """The /status document, from memory (docs/status.md): each target's part as made after its
        last job outcome (``_observe``), or made now when that one no longer holds."""
        now = time.time()
        self._status_wanted = time.monotonic() + STATUS_WANTED_FOR
        with self._targets_lock:
            runtimes = [(runtime, self._trackers[name]) for name, runtime in self._targets.items()]
        stats: dict[str, dict[str, JobStats]] | None = None
        docs = []
        for runtime, tracker in runtimes:
            doc = tracker.kept(runtime.settings, now, runtime.instrumentation)
            if doc is None:
                # Not under _targets_lock: _observe runs under the scheduler's.
                stats = self._scheduler.stats() if stats is None else stats
                sources = self._sources(runtime, tracker, stats.get(runtime.settings.name, {}))
                doc = tracker.refresh(sources, now)
            docs.append(doc)
        return document(
            docs, version=__version__, source=self.settings.source, healthy=self.healthy(), now=now
        )

    def _sources(self, runtime: TargetRuntime, tracker: Tracker, stats: Mapping[str, JobStats]) -> Sources:
        return Sources(
            settings=runtime.settings,
            probe=runtime.probe.result(),
            pool=runtime.instrumentation,
            jobs=runtime.jobs,
            stats=stats,
            decisions=self.audit.latest(runtime.settings.name),
            tracker=tracker,
        )

    def _observe(self, job: Job, _outcome: Outcome, stats: Mapping[str, JobStats]) -> None:
        # Called by the scheduler under its lock: plain dict reads (atomic under the GIL), so no
        # second lock is ever taken inside the scheduler's. The target's part of the status and its
        # card on the page are made here, off the request path: a few dozen microseconds per outcome
        # (the other locks taken, the probe's, the audit log's, the tracker's, are never held while
        # calling into the scheduler).
        runtime, tracker = self._targets.get(job.target), self._trackers.get(job.target)
        if runtime is not None and tracker is not None:
            now = time.time()
            tracker.observe(job, runtime.instrumentation, now)
            if time.monotonic() < self._status_wanted:  # nobody looking: nothing made for nobody
                statuspage.prepare(tracker.refresh(self._sources(runtime, tracker, stats), now))

    def runtime(self, name: str) -> TargetRuntime:
        """The live engine/client and jobs of a target (for tests and embedding)."""
        with self._targets_lock:
            return self._targets[name]
