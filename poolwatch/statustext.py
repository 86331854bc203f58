"""The status document as terminal text for ``poolwatch status``: worst first, colour on a terminal.

Each target is a headline (health, name, kind, the problems) and a few indented lines: probe, pool,
server, reaper, jobs. Colour codes are added only when asked for (standard output is a TTY and
``NO_COLOR`` is not set); every value from the daemon has its control characters replaced, so a
hostile application name cannot move the cursor.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Final

from poolwatch.assess import duration

if TYPE_CHECKING:
    from collections.abc import Callable

    from poolwatch.status import CensusDoc, JobDoc, PoolDoc, ReaperDoc, StatusDoc, TargetDoc

COLORS: Final = {"critical": "1;31", "warning": "33", "ok": "32", "unknown": "2", "dim": "2"}
if TYPE_CHECKING:
    Paint = Callable[[str, str], str]
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def render(doc: StatusDoc, *, url: str, color: bool = False) -> str:
    now = doc["generated_at"]

    def paint(text: str, style: str) -> str:
        return f"\x1b[{COLORS[style]}m{text}\x1b[0m" if color else text

    counts = ", ".join(paint(f"{n} {k}", k) for k, n in doc["counts"].items() if n) or "no targets"
    clock = time.strftime("%H:%M:%S UTC", time.gmtime(now))
    lines = [f"poolwatch {_t(doc['version'])} at {url}: {counts} (as of {clock})"]
    for target in doc["targets"]:
        lines.append("")
        lines.extend(_target(target, now, paint))
    return "\n".join(lines)


def _target(target: TargetDoc, now: float, paint: Paint) -> list[str]:
    health = target["health"]
    tag = paint(f"{health.upper():<8}", health)
    lines = [f"{tag} {_t(target['name'])} ({_t(target['kind'])}, {_t(target['url'])})"]
    lines.extend(f"  {paint('!', p['severity'])} {_t(p['text'])}" for p in target["problems"])
    rows = [("probe", _probe(target, now))]
    if target["pool"] is not None:
        rows.append(("pool", _pool(target["pool"])))
    if target["census"] is not None:
        rows.append(("server", _census(target["census"])))
    if target["reaper"] is not None:
        rows.append(("reaper", _reaper(target["reaper"])))
    rows.append(("jobs", _jobs(target["jobs"], now)))
    lines.extend(f"  {paint(f'{name:<7}', 'dim')} {text}" for name, text in rows)
    return lines


def _probe(target: TargetDoc, now: float) -> str:
    if target["up"] is None or target["checked_at"] is None:
        return "not probed yet"
    since = target["since"]
    state = "up" if target["up"] else "down"
    text = state + ("" if since is None else f" for {duration(now - since)}")
    latency = target["latency_seconds"]
    if target["up"] and latency is not None:
        text += f", {latency * 1000:.1f} ms"
    return text + f", checked {duration(now - target['checked_at'])} ago"


def _pool(pool: PoolDoc) -> str:
    limit = "unbounded" if pool["max"] is None else pool["max"]
    text = f"{pool['used']} used, {pool['idle']} idle, max {limit}, {pool['pending']} waiting"
    text += f", overflow {pool['overflow']}"
    return text + f"; last 5m: {pool['timeouts_recent']} timeouts, {pool['leaks_recent']} leaks"


def _census(census: CensusDoc) -> str:
    limit, ratio = census["max_connections"], census["used_ratio"]
    text = f"{census['sessions']} sessions"
    if limit and ratio is not None:
        text += f" ({ratio:.0%} of {limit})"
    states = ", ".join(f"{n} {_t(state)}" for state, n in sorted(census["by_state"].items()) if n)
    text += f": {states}" if states else ""
    oldest = census["oldest_idle_in_transaction"]
    if oldest is not None and oldest["idle_seconds"] is not None:
        who = f"pid {oldest['pid']} {_t(oldest['user'] or '?')}/{_t(oldest['application'] or '-')}"
        text += f"; oldest idle in transaction {duration(oldest['idle_seconds'])} ({who})"
    return text


def _reaper(reaper: ReaperDoc) -> str:
    mode = "dry run" if reaper["mode"] == "dry_run" else "enforcing"
    text = f"{mode}, lease {'held' if reaper['lease_held'] else 'not held'}"
    if reaper["mode"] == "dry_run":
        text += f", would terminate {reaper['candidates_total']} now"
    latest = reaper["latest"]
    if latest:
        last = latest[0]
        text += (
            f"; last: pid {last['pid']} {_t(last['user'] or '?')}/{_t(last['application'] or '-')} "
            f"{last['reason'].replace('_', ' ')} {duration(last['idle_seconds'])}"
        )
    return text


def _jobs(jobs: list[JobDoc], now: float) -> str:
    shown = []
    for job in jobs:
        success = job["last_success"]
        last = "never ok" if success is None else f"ok {duration(now - success)} ago"
        failing = f", failing {job['failing_for']} in a row" if job["failing_for"] else ""
        shown.append(f"{job['task']} {last}{failing}")
    return ", ".join(shown) or "none"


def _t(value: object) -> str:
    return _CONTROL.sub("?", str(value))
