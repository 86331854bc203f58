"""Which targets are in trouble and why: the problem rules, their thresholds, and the worst-first order.

A target's health is its worst problem's severity ("ok" without one, "unknown" before its first
probe). Targets sort by health (critical, warning, unknown, ok), then by the kind of their first
problem at that severity in ``KINDS`` order, then by name. Light on purpose: ``poolwatch status``
imports it without the daemon's modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from poolwatch.config import TargetSettings
    from poolwatch.status import CensusDoc, PoolDoc, ProblemDoc, TargetDoc

Severity = Literal["critical", "warning", "unknown", "ok"]
SEVERITIES: Final[tuple[Severity, ...]] = ("critical", "warning", "unknown", "ok")
KINDS: Final = (
    "down",
    "exhausted",
    "timeouts",
    "server_full",
    "idle_in_transaction",
    "leaks",
    "pool_busy",
    "job_failing",
)
RECENT: Final = 300.0  # seconds: the window of "timeouts / leaks lately"
SERVER_WARNING: Final = 0.8  # share of the server's usable max_connections in use
SERVER_CRITICAL: Final = 0.95
POOL_BUSY: Final = 0.8  # share of the pool's max in use
IDLE_IN_TRANSACTION_WARNING: Final = 60.0  # seconds, unless the reaper has its own limit
IDLE_IN_TRANSACTION_CRITICAL: Final = 5.0  # times the warning age
IDLE_IN_TRANSACTION: Final = ("idle in transaction", "idle in transaction (aborted)")


def assess(target: TargetDoc, settings: TargetSettings, now: float) -> list[ProblemDoc]:
    """Every problem of one target, most important kind first."""
    problems: list[ProblemDoc] = []
    pool, census = target["pool"], target["census"]
    exhausted = _exhausted(target, pool)
    if target["up"] is False and not exhausted:
        since = target["since"]
        how_long = "" if since is None else f" for {duration(now - since)}"
        wait = target["backoff_seconds"]
        retry = f" (logins held back: next attempt within {duration(wait)})" if wait else ""
        problems.append(_problem("down", "critical", f"down{how_long}: {target['error']}{retry}"))
    if exhausted and pool is not None:
        problems.append(_problem("exhausted", "critical", f"pool exhausted: {_pool_use(pool)}"))
    elif exhausted:
        problems.append(_problem("exhausted", "critical", f"pool exhausted: {target['error']}"))
    if pool is not None and pool["timeouts_recent"]:
        n = pool["timeouts_recent"]
        text = f"{n} checkout{_s(n)} timed out in the last {duration(RECENT)}"
        problems.append(_problem("timeouts", "critical", text))
    if census is not None:
        problems.extend(_server(census, settings))
    if pool is not None:
        problems.extend(_pool(pool, exhausted=exhausted))
    # While the target is down or exhausted its other jobs fail for the same reason: not news.
    for job in target["jobs"] if target["up"] else ():
        if job["task"] != "probe" and job["failing_for"]:
            n = job["failing_for"]
            text = f"{job['task']} failing ({n} run{_s(n)} in a row): {job['last_error']}"
            problems.append(_problem("job_failing", "warning", text))
    return problems


def _exhausted(target: TargetDoc, pool: PoolDoc | None) -> bool:
    if target["up"] is False and target["reason"] == "pool_timeout":
        return True
    return (
        pool is not None and pool["pending"] > 0 and pool["max"] is not None and pool["used"] >= pool["max"]
    )


def _server(census: CensusDoc, settings: TargetSettings) -> list[ProblemDoc]:
    problems = []
    ratio, limit = census["used_ratio"], census["max_connections"]
    if ratio is not None and ratio >= SERVER_WARNING:
        severity: Severity = "critical" if ratio >= SERVER_CRITICAL else "warning"
        of = f" ({census['sessions']} of {limit})" if limit else ""
        text = f"server at {ratio:.0%} of max_connections{of}"
        problems.append(_problem("server_full", severity, text))
    age = max((census["oldest_seconds"].get(state, 0.0) for state in IDLE_IN_TRANSACTION), default=0.0)
    limit_age = settings.reaper.idle_in_transaction_timeout if settings.reaper.enabled else None
    warning = limit_age or IDLE_IN_TRANSACTION_WARNING
    if age >= warning:
        severity = "critical" if age >= IDLE_IN_TRANSACTION_CRITICAL * warning else "warning"
        text = f"a session has been idle in a transaction for {duration(age)}"
        oldest = census["oldest_idle_in_transaction"]
        if oldest is not None:
            who = ", ".join(
                f"{label} {value}"
                for label, value in (
                    ("pid", oldest["pid"]),
                    ("user", oldest["user"]),
                    ("application", oldest["application"] or "''"),
                )
                if value is not None
            )
            text += f" ({who})"
        problems.append(_problem("idle_in_transaction", severity, text))
    return problems


def _pool(pool: PoolDoc, *, exhausted: bool) -> list[ProblemDoc]:
    problems = []
    if pool["leaked"]:
        n = pool["leaked"]
        threshold = pool["leak_threshold_seconds"]
        past = f" past leak_threshold ({duration(threshold)})" if threshold else ""
        problems.append(_problem("leaks", "warning", f"{n} connection{_s(n)} held{past} now"))
    elif pool["leaks_recent"]:
        n = pool["leaks_recent"]
        text = f"{n} connection{_s(n)} leaked in the last {duration(RECENT)}"
        problems.append(_problem("leaks", "warning", text))
    limit = pool["max"]
    busy = pool["pending"] > 0 or (limit is not None and limit > 0 and pool["used"] >= POOL_BUSY * limit)
    if busy and not exhausted:
        problems.append(_problem("pool_busy", "warning", f"pool busy: {_pool_use(pool)}"))
    return problems


def _pool_use(pool: PoolDoc) -> str:
    limit = "unbounded" if pool["max"] is None else str(pool["max"])
    waiting = f", {pool['pending']} waiting" if pool["pending"] else ""
    return f"{pool['used']} of {limit} in use{waiting}"


def _problem(kind: str, severity: Severity, text: str) -> ProblemDoc:
    return {"kind": kind, "severity": severity, "text": text}


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def health(target: TargetDoc) -> Severity:
    severities = {problem["severity"] for problem in target["problems"]}
    if "critical" in severities:
        return "critical"
    if "warning" in severities:
        return "warning"
    return "unknown" if target["up"] is None else "ok"


def rank(target: TargetDoc) -> tuple[int, int, str]:
    """The sort key: worst severity, then the first kind of problem at that severity, then name."""
    worst = target["health"]
    kinds = [KINDS.index(p["kind"]) for p in target["problems"] if p["severity"] == worst]
    return SEVERITIES.index(worst), min(kinds, default=len(KINDS)), target["name"]


def duration(seconds: float) -> str:
    """``3725`` -> ``1h 2m``, ``3600`` -> ``1h``, ``62`` -> ``1m 02s``, ``4.2`` -> ``4.2s``."""
    if seconds < 60:  # noqa: PLR2004 - the common case first
        if seconds <= 0:
            return "0s"
        return f"{seconds:.1f}s" if seconds < 10 and seconds != int(seconds) else f"{int(seconds)}s"  # noqa: PLR2004
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m {secs:02d}s" if secs else f"{minutes}m"
    return f"{secs}s"
