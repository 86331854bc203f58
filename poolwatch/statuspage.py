"""The status page at / and the JSON document at /status, both rendered from the status document.

The page is one self-contained HTML document: no external script, style sheet, font or image (the
daemon runs in closed networks), readable without JavaScript, light or dark by the reader's
``prefers-color-scheme``. A few lines of script refresh it in place (``?refresh=N`` seconds, 0 for
never; without script a ``<noscript>`` meta refresh does it), and a Content-Security-Policy allows
exactly that script and style block. Sparklines are inline SVG (``sparkline``). Every value from the
document is HTML-escaped.

A target's card is made once per part of the document the daemon keeps for it (from one job outcome
to the next; ``prepare`` makes it right then), with marks where it says how long ago something was
and where the sparklines' window starts: a page fills those in and joins the cards. The JSON of each
part is kept the same way.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs

from poolwatch import sparkline
from poolwatch.assess import duration
from poolwatch.memo import SlotCache
from poolwatch.sparkline import Frame

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from poolwatch.status import (
        CensusDoc,
        DecisionDoc,
        JobDoc,
        PoolDoc,
        ProblemDoc,
        ReaperDoc,
        StatusDoc,
        TargetDoc,
        TrendDoc,
    )

StartResponse = Any
DEFAULT_REFRESH: Final = 10
MAX_REFRESH: Final = 3600
SHOWN_DECISIONS: Final = 3

STYLE: Final = """
:root{color-scheme:light dark;--bg:#fff;--fg:#1b1f24;--muted:#57606a;--card:#f6f8fa;--line:#d0d7de;
--critical:#b3261e;--warning:#8a5300;--ok:#1a7f37;--unknown:#57606a;--spark:#0969da}
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--fg:#e6edf3;--muted:#9da7b3;--card:#161b22;
--line:#30363d;--critical:#ff7b72;--warning:#e3b341;--ok:#56d364;--unknown:#9da7b3;--spark:#79c0ff}}
*{box-sizing:border-box}
body{margin:0;padding:1rem 1.25rem;background:var(--bg);color:var(--fg);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
h1{font-size:1.25rem;margin:0}h2{font-size:1.05rem;margin:0;display:flex;gap:.5rem;align-items:center}
a{color:var(--spark)}
body>header{display:flex;flex-wrap:wrap;gap:.25rem 1rem;align-items:baseline;margin-bottom:.75rem}
.meta,.where{color:var(--muted);margin:0;font-size:.85rem}.where{overflow-wrap:anywhere}
.counts{margin:0;font-weight:600}
main{display:grid;gap:.75rem;grid-template-columns:repeat(auto-fill,minmax(min(100%,34rem),1fr))}
article{background:var(--card);border:1px solid var(--line);border-left:.4rem solid var(--unknown);
border-radius:6px;padding:.6rem .8rem}
article[data-health=critical]{border-left-color:var(--critical)}
article[data-health=warning]{border-left-color:var(--warning)}article[data-health=ok]{border-left-color:var(--ok)}
.badge{font-size:.7rem;text-transform:uppercase;letter-spacing:.04em;padding:.05rem .4rem;
border-radius:3px;border:1px solid currentColor}
.critical{color:var(--critical)}.warning{color:var(--warning)}.ok{color:var(--ok)}
.unknown{color:var(--unknown)}
ul.problems{margin:.35rem 0;padding-left:1.1rem;font-weight:600}ul.problems li{overflow-wrap:anywhere}
dl{display:grid;grid-template-columns:4.5rem 1fr;gap:.15rem .5rem;margin:.4rem 0 0}
dt{color:var(--muted)}dd{margin:0;overflow-wrap:anywhere}dd ul{margin:0;padding-left:1rem}
meter{width:5rem;height:.8rem;vertical-align:middle}
.trends{display:flex;flex-wrap:wrap;align-items:end;gap:.25rem .75rem;margin:.5rem 0 0}
.trends>p{margin:0;font-size:.75rem;color:var(--muted);width:100%}
figure{margin:0;width:160px}figcaption{font-size:.75rem;color:var(--muted);white-space:nowrap}
svg{display:block;width:160px;height:28px;color:var(--spark);background:var(--bg);
border:1px solid var(--line);border-radius:3px}
svg path{fill:none;stroke:currentColor;stroke-width:1.5;stroke-linejoin:round;
vector-effect:non-scaling-stroke}
svg .dot{stroke-width:4;stroke-linecap:round}svg .limit{stroke:var(--muted);stroke-dasharray:3 3}
#stale{color:var(--critical);font-weight:600;margin:0}
"""

SCRIPT: Final = """
(function(){const every=Number(document.body.dataset.refresh)*1000;if(!(every>0))return;
const stale=document.getElementById("stale");
setInterval(async function(){try{const r=await fetch(location.href,{cache:"no-store"});
if(!r.ok)throw new Error("HTTP "+r.status);
const d=new DOMParser().parseFromString(await r.text(),"text/html");
for(const s of ["body>header","main"])document.querySelector(s).replaceWith(d.querySelector(s));
document.title=d.title;stale.hidden=true}catch(e){stale.hidden=false;
stale.textContent="Not refreshed at "+new Date().toLocaleTimeString()+": "+e.message}},every)})();
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CONTENT_SECURITY_POLICY: Final = (
    f"default-src 'none'; style-src {_sha256(STYLE)}; script-src {_sha256(SCRIPT)}; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def respond(
    environ: dict[str, Any], start_response: StartResponse, status: Callable[[], StatusDoc]
) -> list[bytes]:
    """Answer GET or HEAD for ``/`` (the page) or ``/status`` (the JSON document)."""
    doc = status()
    headers = [("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")]
    if environ.get("PATH_INFO") == "/status":
        body = to_json(doc).encode()
        headers.append(("Content-Type", "application/json"))
    else:
        body = render(doc, refresh=refresh_seconds(environ.get("QUERY_STRING", ""))).encode()
        headers += [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
            ("Referrer-Policy", "no-referrer"),
        ]
    headers.append(("Content-Length", str(len(body))))
    start_response("200 OK", headers)
    return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]


def to_json(doc: StatusDoc) -> str:
    """``json.dumps(doc)``, compact, with each target's part serialised once: the daemon keeps a
    target's part from one job outcome to the next, and so is its text kept here."""
    top = {key: value for key, value in doc.items() if key != "targets"}
    targets = ",".join(map(_target_json, doc["targets"]))
    return json.dumps(top, separators=(",", ":"))[:-1] + f',"targets":[{targets}]}}'


def _target_json(target: TargetDoc) -> str:
    kept = _JSON.get(target["name"])
    if kept is None or kept[0] is not target:
        kept = (target, json.dumps(target, separators=(",", ":")))
        if len(_JSON) >= _MAX_CARDS:
            _JSON.clear()
        _JSON[target["name"]] = kept
    return kept[1]


_JSON: dict[str, tuple[TargetDoc, str]] = {}


def refresh_seconds(query: str) -> int:
    """``refresh=N`` from the query string: 0 (never) to ``MAX_REFRESH``; anything else the default."""
    values = parse_qs(query).get("refresh", [])
    text = values[0] if values else ""
    return int(text) if text.isdigit() and int(text) <= MAX_REFRESH else DEFAULT_REFRESH


def render(doc: StatusDoc, *, refresh: int = DEFAULT_REFRESH) -> str:
    """The whole page."""
    now = doc["generated_at"]
    counts = doc["counts"]
    shown = [f'<span class="{k}">{n} {k}</span>' for k, n in counts.items() if n]
    summary = " · ".join(shown) or "no targets"
    title_counts = ", ".join(f"{n} {k}" for k, n in counts.items() if n and k in {"critical", "warning"})
    title = f"poolwatch: {title_counts or 'all ok'}"
    noscript = f'<noscript><meta http-equiv="refresh" content="{refresh}"></noscript>' if refresh else ""
    every = f" · refreshes every {refresh}s" if refresh else ""
    head = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<meta name="color-scheme" content="light dark"><title>{_e(title)}</title>'
        f'<link rel="icon" href="data:,">{noscript}<style>{STYLE}</style></head>'
        f'<body data-refresh="{refresh}"><header><h1>poolwatch</h1>'
        f'<p class="counts">{summary} <span class="meta">of {len(doc["targets"])} targets</span></p>'
        f'<p class="meta">{_e(doc["version"])} · configuration: {_e(doc["source"])} · '
        f"as of {_clock(now)}{every} · "
        '<a href="/status">JSON</a> · <a href="/metrics">metrics</a></p>'
        '<p id="stale" role="status" hidden></p></header><main>'
    )
    parts = [head]
    parts.extend(_card(target).at(now) for target in doc["targets"])
    parts.append(f"</main><script>{SCRIPT}</script></body></html>")
    return "".join(parts)


def _card(target: TargetDoc) -> _Card:
    """A target's card, made again only when its part of the document is another one (the daemon
    keeps a target's part from one job outcome to the next); what depends on the time is filled in
    for each page."""
    kept = _CARDS.get(target["name"])
    if kept is None or kept[0] is not target:
        kept = (target, _Card(target))
        if len(_CARDS) >= _MAX_CARDS:  # targets renamed by reloads, one after another
            _CARDS.clear()
        _CARDS[target["name"]] = kept  # replaced whole: a reader on another thread sees one or the other
    return kept[1]


def prepare(target: TargetDoc) -> None:
    """Make ``target``'s card now (off the request path) for the pages to come."""
    _card(target)


class _Card:
    """A card's text split at its marks (text, mark, text, ..., text): an ``_ago`` mark says how long
    ago its time was; the sparklines' window marks say where it starts and how wide it is."""

    __slots__ = ("_first", "_marks", "_parts", "_step", "_window")

    def __init__(self, target: TargetDoc) -> None:
        trend = target["trend"]
        self._step = step = trend["step_seconds"]
        self._window = round(trend["window_seconds"] / step)
        firsts = [series[0] for series in (trend["at"], trend["sessions_at"]) if series]
        self._first = int(min(firsts) // step) if firsts else 0
        parts = _target(target, _frame(self._first, trend)).split(_MARK)
        self._parts = parts
        self._marks = [
            (i, parts[i] if parts[i] in _WINDOW_MARKS else float(parts[i])) for i in range(1, len(parts), 2)
        ]

    def at(self, now: float) -> str:
        if not self._marks:
            return self._parts[0]
        end = int(now // self._step) + 1  # one past the current step
        start = max(end - self._window, self._first - 1)
        shown = {_LEFT: str(start - self._first + 1), _WIDTH: str(end - start)}
        shown[_SPAN] = duration((end - start) * self._step)
        parts = self._parts.copy()
        for i, mark in self._marks:
            if isinstance(mark, float):
                parts[i] = duration(now - mark) if now > mark else "0s"
            else:
                parts[i] = shown[mark]
        return "".join(parts)


_CARDS: dict[str, tuple[TargetDoc, _Card]] = {}
_MAX_CARDS: Final = 100_000
_MARK: Final = "\x00"  # never in the text of a card: _e() replaces it
_LEFT, _WIDTH, _SPAN = "left", "width", "span"
_WINDOW_MARKS: Final = frozenset({_LEFT, _WIDTH, _SPAN})


def _ago(then: float) -> str:
    """How long ago ``then`` was, as of the page the card goes into."""
    return f"{_MARK}{then!r}{_MARK}"


def _frame(first: int, trend: TrendDoc) -> Frame:
    step = trend["step_seconds"]
    lasts = [series[-1] for series in (trend["at"], trend["sessions_at"]) if series]
    # The limit line reaches the end of the window as long as the newest sample is in it.
    reach = (int(max(lasts) // step) if lasts else first) - first + 2 + round(trend["window_seconds"] / step)
    return Frame(step, first - 1, reach, f"{_MARK}{_LEFT}{_MARK}", f"{_MARK}{_WIDTH}{_MARK}")


def _target(target: TargetDoc, frame: Frame) -> str:
    health = target["health"]
    problems = "".join(
        f'<li class="{p["severity"]}" data-kind="{p["kind"]}">{_problem(p, target["since"])}</li>'
        for p in target["problems"]
    )
    rows = [("Probe", _probe(target))]
    if target["pool"] is not None:
        rows.append(("Pool", _pool(target["pool"])))
    name, census, reaper = target["name"], target["census"], target["reaper"]
    # Both parts are shared between documents until they change, and do not age: made once each.
    if census is not None:
        rows.append(("Server", _PARTS.get((name, "census"), (census,), lambda: _census(census))))
    if reaper is not None:
        rows.append(("Reaper", _PARTS.get((name, "reaper"), (reaper,), lambda: _reaper(reaper))))
    rows.append(("Jobs", _jobs(target["jobs"])))
    details = "".join(f"<dt>{title}</dt><dd>{body}</dd>" for title, body in rows)
    return (
        f'<article data-target="{_e(target["name"])}" data-health="{health}">'
        f'<header><h2><span class="badge {health}">{health}</span> {_e(target["name"])}</h2>'
        f'<p class="where">{_e(target["kind"])} · {_e(target["url"])}</p></header>'
        + (f'<ul class="problems">{problems}</ul>' if problems else "")
        + f"<dl>{details}</dl>{_trends(target, frame)}</article>"
    )


def _problem(problem: ProblemDoc, since: float | None) -> str:
    text = _e(problem["text"])
    if problem["kind"] == "down" and since is not None and text.startswith("down for "):
        # "down for <duration>: <error>" (assess) says for how long as of when the target's part of
        # the document was made (its last job outcome); the page says it as of the page.
        _, colon, rest = text.partition(": ")
        if colon:
            return f"down for {_ago(since)}: {rest}"
    return text


def _probe(target: TargetDoc) -> str:
    up, since, checked = target["up"], target["since"], target["checked_at"]
    if up is None or checked is None:
        return "not probed yet"
    state = '<span class="ok">up</span>' if up else '<span class="critical">down</span>'
    text = state + (f" since {_clock(since)} ({_ago(since)})" if since is not None else "")
    latency = target["latency_seconds"]
    took = f", {latency * 1000:.1f} ms" if up and latency is not None else ""
    text += f" · checked {_ago(checked)} ago{took}"
    if not up and target["error"] and not any(p["kind"] == "down" for p in target["problems"]):
        text += f"<br>{_e(target['error'])}"
    return text


def _pool(pool: PoolDoc) -> str:
    limit = pool["max"]
    meter = (
        f'<meter min="0" max="{limit}" value="{pool["used"]}" low="{limit * 0.5:g}" '
        f'high="{limit * 0.8:g}" optimum="0" title="{pool["used"]} of {limit} in use"></meter> '
        if limit
        else ""
    )
    waiting = pool["pending"]
    text = (
        f'{meter}<span data-field="used">{pool["used"]}</span> used · {pool["idle"]} idle · '
        f"max {'unbounded' if limit is None else limit} · overflow {pool['overflow']} · "
        + (f'<strong class="critical">{waiting} waiting</strong>' if waiting else "0 waiting")
    )
    recent = [
        f'<span data-field="{field}">{n}</span> {what}'
        for field, what, n in (
            ("timeouts", "checkout timeout" + _s(pool["timeouts_recent"]), pool["timeouts_recent"]),
            ("leaks", "leak" + _s(pool["leaks_recent"]), pool["leaks_recent"]),
        )
        if n
    ]
    text += "<br>" + (
        " · ".join(recent) + " in the last 5m" if recent else "no timeouts or leaks in the last 5m"
    )
    if pool["leaked"]:
        text += f' · <strong class="warning">{pool["leaked"]} held past leak_threshold now</strong>'
    if pool["timeouts_total"] or pool["leaks_total"]:
        text += f" (since start: {pool['timeouts_total']} timeouts, {pool['leaks_total']} leaks)"
    return text


def _census(census: CensusDoc) -> str:
    limit, ratio = census["max_connections"], census["used_ratio"]
    share = f" ({_percent(ratio)} of {limit})" if limit and ratio is not None else ""
    states = ", ".join(f"{n} {_e(state)}" for state, n in sorted(census["by_state"].items()) if n)
    text = f'<span data-field="sessions">{census["sessions"]}</span> sessions{share}'
    text += f": {states}" if states else ""
    oldest = census["oldest_idle_in_transaction"]
    if oldest is not None and oldest["idle_seconds"] is not None:
        who = ", ".join(
            f"{label} {_e(str(value))}"
            for label, value in (
                ("pid", oldest["pid"]),
                ("user", oldest["user"]),
                ("application", oldest["application"] or "''"),
                ("database", oldest["database"]),
            )
            if value is not None
        )
        text += f"<br>oldest idle in transaction: {duration(oldest['idle_seconds'])} ({who})"
    return text


_PARTS: SlotCache[str] = SlotCache()


def _reaper(reaper: ReaperDoc) -> str:
    mode = "dry run" if reaper["mode"] == "dry_run" else "enforcing"
    lease = "lease held" if reaper["lease_held"] else "lease not held (another replica decides)"
    limits = [
        f"{label} over {duration(seconds)}"
        for label, seconds in (
            ("idle", reaper["idle_timeout_seconds"]),
            ("idle in transaction", reaper["idle_in_transaction_timeout_seconds"]),
        )
        if seconds is not None
    ]
    parts = [f"{mode}, {lease} · terminates {', '.join(limits)}"]
    if reaper["mode"] == "dry_run":
        parts.append(f"would terminate now: {reaper['candidates_total']}" + _decisions(reaper["candidates"]))
    latest = reaper["latest"]
    verb = "recorded" if reaper["mode"] == "dry_run" else "terminated"
    parts.append(f"last {verb}: " + (_decisions(latest) if latest else "none since start"))
    return "".join(f"<div>{part}</div>" for part in parts)


def _decisions(decisions: list[DecisionDoc]) -> str:
    items = "".join(f"<li>{_who(d)}{_decided(d)}</li>" for d in decisions[:SHOWN_DECISIONS])
    more = len(decisions) - SHOWN_DECISIONS
    return f"<ul>{items}</ul>" + (f"and {more} more (see /status)" if more > 0 else "") if items else ""


def _who(d: DecisionDoc) -> str:
    who = f"{_e(d['user'] or '?')} / {_e(d['application'] or '-')} ({_e(d['database'] or '?')})"
    return f"pid {d['pid']} {who}: {_e(d['reason'].replace('_', ' '))} for {duration(d['idle_seconds'])}"


def _decided(decision: DecisionDoc) -> str:
    at = _unix_time(decision["decided_at"])
    return "" if at is None else f", at {_clock(at)}"


@functools.lru_cache(maxsize=4096)
def _unix_time(iso: str) -> float | None:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


def _jobs(jobs: Iterable[JobDoc]) -> str:
    shown = []
    for job in jobs:
        success = job["last_success"]
        last = "never succeeded" if success is None else f"ok {_ago(success)} ago"
        if job["failing_for"]:
            n = job["failing_for"]
            shown.append(f'<span class="warning">{job["task"]} failing ({n} in a row; {last})</span>')
        else:
            failed = f" ({job['failures']} failed since start)" if job["failures"] else ""
            shown.append(f"{job['task']} {last}{failed}")
    return " · ".join(shown) or "none"


def _trends(target: TargetDoc, frame: Frame) -> str:
    """Sparklines over the history window, or since the first sample when the history is shorter."""
    trend = target["trend"]
    if not (trend["at"] or trend["sessions_at"]):
        return ""
    name, pool = target["name"], target["pool"]
    figures = []
    if trend["at"]:
        limit = None if pool is None else pool["max"]
        at = trend["at"]
        figures.append(_spark(name, "in use", (at, trend["used"]), frame, limit))
        figures.append(_spark(name, "waiting", (at, trend["pending"]), frame, None))
    if trend["sessions_at"]:
        samples = (trend["sessions_at"], trend["sessions"])
        figures.append(_spark(name, "server sessions", samples, frame, None))
    return f'<div class="trends"><p>last {_MARK}{_SPAN}{_MARK}</p>{"".join(figures)}</div>'


def _spark(
    target: str, label: str, samples: tuple[list[float], list[float]], frame: Frame, limit: int | None
) -> str:
    """One sparkline, cached by ``_FIGURES`` while its sample lists (shared until the next sample)
    and frame stay the same; a new sample formats only its own moves (``_LINES``)."""
    slot = (target, label)
    return _FIGURES.get(
        slot, (*samples, frame, limit), lambda: sparkline.figure(_LINES, slot, label, samples, frame, limit)
    )


_FIGURES: SlotCache[str] = SlotCache()
_LINES = sparkline.Lines()


def _clock(at: float) -> str:
    """Unix time as a UTC clock time in a ``<time>`` element with the full date."""
    full = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
    return f'<time datetime="{full}">{full[11:19]} UTC</time>'


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _percent(ratio: float) -> str:
    return "under 1%" if 0 < ratio < 0.01 else f"{ratio:.0%}"  # noqa: PLR2004


# NUL, which HTML does not allow anyway, marks the times in a cached card (``_since``).
_ESCAPES: Final = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;", _MARK: "\ufffd"}
)


def _e(text: object) -> str:
    """``html.escape(text, quote=True)`` in one C call (and NUL replaced)."""
    return str(text).translate(_ESCAPES)
