"""Benchmark results as Markdown: tables, charts and conditions from benchmarks/results/*.json.

Each results file has a renderer named after it; every chart ``<name>_*.png`` goes with the results
of ``<name>``. A results file without a renderer, or a chart without results, is an error: the page
shows every measurement the repository holds, and only those.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

RESULTS: Final = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
# Where the charts are published in the site, relative to the docs root.
CHARTS_URI: Final = "assets/benchmarks"
VARIANTS: Final = ("bare", "poolwatch", "poolwatch-noleak", "poolwatch-otel", "naive")
VARIANT_NAMES: Final = {
    "bare": "bare SQLAlchemy",
    "poolwatch": "poolwatch (every metric, leak detection on)",
    "poolwatch-noleak": "poolwatch without leak detection",
    "poolwatch-otel": "poolwatch published through OpenTelemetry as well",
    "naive": "naive prometheus_client wiring",
    "poolwatch-multiprocess": "poolwatch with PROMETHEUS_MULTIPROC_DIR (its writer idle in the run)",
}
# The checkout path's budget: instrumented at most this many times a bare checkout, in instructions.
CHECKOUT_BUDGET: Final = 1.10


def names(results: Path = RESULTS) -> list[str]:
    """The benchmarks with results, by file stem."""
    return sorted(path.stem for path in results.glob("*.json"))


def charts(name: str, results: Path = RESULTS) -> list[Path]:
    return sorted(results.glob(f"{name}_*.png"))


def orphan_charts(results: Path = RESULTS) -> list[Path]:
    """Charts that belong to no results file."""
    owned = {chart for name in names(results) for chart in charts(name, results)}
    return sorted(set(results.glob("*.png")) - owned)


def render(name: str, results: Path = RESULTS, page_depth: int = 0) -> str:
    """The section for one benchmark: conditions, command, tables, then its charts."""
    renderer = RENDERERS.get(name)
    if renderer is None:
        raise KeyError(f"benchmarks/results/{name}.json has no renderer in {Path(__file__).name}")
    data = json.loads((results / f"{name}.json").read_text(encoding="utf-8"))
    lines = renderer(data)
    prefix = "../" * page_depth
    for chart in charts(name, results):
        title = chart.stem.replace("_", " ")
        lines += ["", f"![{title}]({prefix}{CHARTS_URI}/{chart.name})"]
    return "\n".join(lines) + "\n"


def _machine(data: dict[str, Any]) -> str:
    machine = data["machine"]
    postgres = re.search(r"PostgreSQL\)? ([\d.]+)", machine.get("postgres", ""))
    redis = re.search(r"v=([\d.]+)", machine.get("redis", ""))
    parts = [
        f"{machine['cpus']} CPUs ({machine['cpu_model']}), {machine['memory_gb']:g} GB RAM",
        f"Python {machine['python']}",
    ]
    parts += [f"PostgreSQL {postgres.group(1)}"] if postgres else []
    parts += [f"Redis {redis.group(1)}"] if redis else []
    load = f"load average {machine['loadavg_1m_at_start']:g} at the start"
    if "loadavg_1m_at_end" in data:
        load += f", {data['loadavg_1m_at_end']:g} at the end"
    return f"**Machine:** {', '.join(parts)}; {load}; {machine['date'].split()[0]}."


def _command(module: str, data: dict[str, Any], options: dict[str, object]) -> str:
    """The command that wrote the results: recorded in the file, or rebuilt from its parameters."""
    flags = (f"--{flag} {_number(value)}".rstrip() for flag, value in options.items())
    command = data.get("command") or " ".join([f".venv/bin/python -m benchmarks.{module}", *flags])
    return f"**Command:** `{command}`"


def _number(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _head(*columns: str) -> list[str]:
    """A table's header and alignment rows: the first column text, the others numbers."""
    return ["| " + " | ".join(columns) + " |", "|---|" + "---:|" * (len(columns) - 1)]


def _ms(value: float) -> str:
    return f"{value:.3g} ms" if value < 100 else f"{value:.0f} ms"  # noqa: PLR2004 - 3 digits either way


def _spread(values: Sequence[float], unit: Callable[[float], str] = _ms) -> str:
    """Median [min-max] over rounds."""
    low, high = min(values), max(values)
    return f"{unit(statistics.median(values))} [{unit(low).split()[0]}-{unit(high)}]"


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


_SCRAPE_REQUESTS = {
    "openmetrics-gzip": "Prometheus' request (OpenMetrics preferred, gzip)",
    "plain": "Plain text, no compression",
}


def _scrape(data: dict[str, Any]) -> list[str]:
    lines = [
        _machine(data),
        "",
        _command("scrape", data, {"rounds": data["rounds"], "scrapes": data["scrapes_per_round"]}),
        "",
        f"{data['rounds']} rounds x {data['scrapes_per_round']} scrapes; median [min-max] over rounds.",
    ]
    for request, figures in data["requests"].items():
        lines += ["", f"**{_SCRAPE_REQUESTS.get(request, request)}:**", ""]
        lines += _head("", "p50", "p99", "CPU per scrape", "RSS", "samples")
        for name, row in figures["contenders"].items():
            lines.append(
                f"| {name} | {_spread(row['p50_ms'])} | {_ms(_median(row['p99_ms']))} "
                f"| {_ms(_median(row['cpu_ms_per_scrape']))} | {_median(row['rss_mb']):.1f} MB "
                f"| {row['samples']:,} |"
            )
        lines += ["", *_head("poolwatch against", "p50", "p99", "CPU per scrape", "RSS")]
        for name, ratios in figures.get("ratios", {}).items():
            keys = ("p50", "p99", "cpu_per_scrape", "rss")
            cells = [f"{ratios[key]:.2f}x" if key in ratios else "" for key in keys]
            lines.append(f"| {name.replace('_', ' ')} | " + " | ".join(cells) + " |")
    return lines


def _scale(data: dict[str, Any]) -> list[str]:
    lines = [
        _machine(data),
        "",
        _command("scale", data, _scale_options(data)),
        "",
        (
            f"Every job of every target on a {data['tick_s']:g} s tick, scheduler CPU sampled over "
            f"{data['window_s']:g} s, {data['scrapes_per_round']} scrapes per size, "
            f"{data['rounds']} rounds; median [min-max] over rounds."
        ),
        "",
        *_head(
            "SQL + Redis targets",
            "samples",
            "scrape p50",
            "scrape p99",
            "CPU per scrape",
            "scheduler CPU per target per tick",
            "RSS",
            "threads",
        ),
    ]
    for sql, rounds in sorted(data["sizes"].items(), key=lambda item: int(item[0])):
        redis = int(rounds[0]["targets"]) - int(sql)

        def med(key: str, rounds: list[dict[str, float]] = rounds) -> float:
            return _median([r[key] for r in rounds])

        lines.append(
            f"| {sql} + {redis} | {med('samples'):,.0f} | {_spread([r['p50_ms'] for r in rounds])} "
            f"| {_ms(med('p99_ms'))} | {_ms(med('cpu_ms_per_scrape'))} "
            f"| {_spread([r['cpu_ms_per_target_tick'] for r in rounds])} | {med('rss_mb'):.1f} MB "
            f"| {med('threads'):.0f} |"
        )
    lines += _scale_baseline(data)
    hung = data.get("hung")
    if hung:
        lines += [
            "",
            "**A hung target among healthy ones** (a server that accepts TCP and never answers):",
            "",
            *_head(
                "",
                "probe runs per healthy target per tick",
                "worst staleness of a healthy target",
                "hung target: failed runs",
                "hung target: skipped runs",
                "threads",
            ),
        ]
        for case in ("without", "with"):
            rounds = hung[case]
            lines.append(
                f"| {case} the hung target "
                f"| {_median([r['probe_runs_per_healthy_target_tick'] for r in rounds]):.2f} "
                f"| {min(r['worst_healthy_staleness_s'] for r in rounds):.2f}-"
                f"{max(r['worst_healthy_staleness_s'] for r in rounds):.2f} s "
                f"| {_median([r['hung_failures'] for r in rounds]):.0f} "
                f"| {_median([r['hung_skipped'] for r in rounds]):.0f} "
                f"| {_threads(rounds)} |"
            )
    return lines


def _threads(rounds: list[dict[str, float]]) -> str:
    """The most threads seen in any round (runs from before threads were sampled have none)."""
    seen = [r["threads"] for r in rounds if "threads" in r]
    return f"{max(seen):.0f}" if seen else ""


def _scale_baseline(data: dict[str, Any]) -> list[str]:
    """The baseline version measured in the same rounds, and this version's ratios to it."""
    baseline = data.get("baseline")
    if not baseline:
        return []
    # A git checkout is described by its short hash and subject, another tree by its path.
    described = baseline["source"]
    source = described.split(" ", 1)[0] if " " in described else Path(described).name
    lines = [
        "",
        (
            "**The baseline in the same rounds** (`--baseline DIR`, DIR holding poolwatch as of "
            f"`{source}`), and the ratio this / baseline of each figure, computed within each round:"
        ),
        "",
        *_head(
            "SQL + Redis targets",
            "samples",
            "scrape p50",
            "scrape p99",
            "CPU per scrape",
            "scheduler CPU per target per tick",
            "RSS",
            "threads",
        ),
    ]
    keys = ("samples", "p50_ms", "p99_ms", "cpu_ms_per_scrape", "cpu_ms_per_target_tick", "rss_mb", "threads")
    for sql, rounds in sorted(baseline["sizes"].items(), key=lambda item: int(item[0])):
        ours = data["sizes"][sql]
        redis = int(rounds[0]["targets"]) - int(sql)
        cells = []
        for key in keys:
            theirs = _median([r[key] for r in rounds])
            ratio = _median([o[key] / b[key] for o, b in zip(ours, rounds, strict=False) if b[key]])
            shown = f"{theirs:,.0f}" if key in ("samples", "threads") else _ms(theirs)
            shown = f"{theirs:.1f} MB" if key == "rss_mb" else shown
            cells.append(f"{shown} ({ratio:.2f}x)")
        lines.append(f"| {sql} + {redis} | " + " | ".join(cells) + " |")
    return lines


def _scale_options(data: dict[str, Any]) -> dict[str, object]:
    sizes = ",".join(sorted(data["sizes"], key=int))
    options = {"rounds": data["rounds"], "sizes": sizes, "tick": data["tick_s"], "window": data["window_s"]}
    options = {**options, "scrapes": data["scrapes_per_round"]}
    if not data.get("hung"):
        options["no-hung"] = ""
    if data.get("baseline"):
        options["baseline"] = "DIR"
    return options


def _render(data: dict[str, Any]) -> list[str]:
    options: dict[str, object] = {"targets": data["sql_targets"], "tick": data["tick_s"]}
    options |= {"scrapes": data["scrapes"], "ticks": data["ticks"]}
    if data.get("baseline"):
        options["baseline"] = "DIR"
    lines = [
        _machine(data),
        "",
        _command("render", data, options),
        "",
        (
            f"{data['sql_targets']} SQL + {data['targets'] - data['sql_targets']} Redis targets, every job "
            f"on a {data['tick_s']:g} s tick; thread CPU time of one answer to Prometheus' scrape request "
            f"(text format, gzip, {data['gzip_bytes'] / 1024:.0f} KB); median of {data['scrapes']} "
            f"answers back to back and of {data['ticks']} answers one tick apart."
        ),
        "",
    ]
    cpu = data["cpu_ms"]
    full = data.get("full_collections_ms")
    if full is not None:
        frozen = data.get("frozen_objects", 0)
        lines += [
            (
                f"Full collections of the garbage collector while answers were measured: {len(full)}"
                + (f", {_ms(_median(full))} each (median)" if full else "")
                + (
                    f"; {frozen:,} objects frozen once the targets were built, as `poolwatch run` does."
                    if frozen
                    else "; nothing frozen (`--no-freeze`)."
                )
            ),
            "",
        ]
    if not data.get("baseline"):
        lines += _head("", "CPU per answer")
        return lines + [f"| {case.replace('_', ' ')} | {_ms(by['this'])} |" for case, by in cpu.items()]
    source = Path(data["baseline"]).name
    lines += _head("", "this version", f"baseline (`{source}`)", "ratio")
    for case, by in cpu.items():
        ratio = data["ratio"][case]
        lines.append(
            f"| {case.replace('_', ' ')} | {_ms(by['this'])} | {_ms(by['baseline'])} | {ratio:.2f}x |"
        )
    return lines


def _reaper(data: dict[str, Any]) -> list[str]:
    return [
        _machine(data),
        "",
        _command("reaper", data, {"rounds": data["rounds"], "sessions": data["sessions"]}),
        "",
        f"{data['rounds']} rounds, {data['sessions']} idle sessions each; median [min-max].",
        "",
        *_head("", "time"),
        f"| one poolwatch reaper run (enforce, audit rows written) | {_spread(data['poolwatch_ms'])} |",
        f"| one hand-written `pg_terminate_backend` statement | {_spread(data['sql_ms'])} |",
        "",
        f"Ratio of medians: {data['ratio']:.1f}x.",
        *_reaper_breakdown(data),
    ]


def _reaper_breakdown(data: dict[str, Any]) -> list[str]:
    phases = data.get("breakdown_ms")
    if not phases:
        return []
    rounds = len(phases["run"])
    lines = [
        "",
        (
            f"**Where a run's time goes** (the reaper job run in process, {rounds} rounds over as many "
            "sessions, each phase timed around the function that does it; median [min-max]):"
        ),
        "",
        *_head("phase", "time"),
    ]
    lines += [f"| {phase} | {_spread(values)} |" for phase, values in phases.items()]
    return lines


def _cli_startup(data: dict[str, Any]) -> list[str]:
    baseline = "python -c pass"
    contenders = dict(sorted(data["contenders"].items(), key=lambda item: (item[0] != baseline, item[0])))
    lines = [
        _machine(data),
        "",
        _command("cli_startup", data, {"rounds": data["rounds"]}),
        "",
        (
            f"{data['rounds']} rounds, every contender once per round in a rotating order; median "
            "[min-max] over rounds. Wall time includes the interpreter's start; CPU is the process's "
            "user + system time."
        ),
        "",
        *_head("", "wall", "CPU", "wall / `python -c pass`"),
    ]
    lines += [
        f"| {name} | {_spread(row['wall_ms'])} | {_spread(row['cpu_ms'])} "
        f"| {_median(row['ratio_to_python']):.1f}x |"
        for name, row in contenders.items()
        if "after_stopped_ms" not in row
    ]
    lines += [
        "",
        *_head("`poolwatch run`, stopped with SIGTERM", "SIGTERM to exit", "`poolwatch stopped` to exit"),
    ]
    lines += [
        f"| {name.removesuffix(': run, SIGTERM to exit')} | {_spread(row['wall_ms'])} "
        f"| {_spread(row['after_stopped_ms'])} |"
        for name, row in contenders.items()
        if "after_stopped_ms" in row
    ]
    return lines


def _conditions(header: str) -> str:
    """A results header without its time of day: ``# 2026-11-21 17:02 UTC, Python ...``."""
    return re.sub(r"^#\s*(\d{4}-\d\d-\d\d) \d\d:\d\d UTC", r"\1", header.strip())


def _instruction_table(data: dict[str, Any]) -> list[str]:
    """Conditions, command and the per-variant instruction counts of a ``--instructions`` run."""
    counts = data["instructions_per_cycle"]
    loop, run = counts["loop"], counts["run"]
    lines = [
        f"**Conditions:** {_conditions(data['header'])}.",
        "",
        f"**Command:** `{data['command']}`",
        "",
        *_head(
            "variant",
            "checkout path: instructions per cycle",
            "ratio to bare",
            "with the scrape-side fold",
            "ratio to bare",
        ),
    ]
    lines += [
        f"| {VARIANT_NAMES[variant]} | {loop[variant]['median_instructions']:,} "
        f"| {loop[variant]['median_ratio']:.3f}x | {run[variant]['median_instructions']:,} "
        f"| {run[variant]['median_ratio']:.3f}x |"
        for variant in VARIANTS
        if variant in loop
    ]
    return lines


def _checkout_instructions(data: dict[str, Any]) -> list[str]:
    ratio = data["instructions_per_cycle"]["loop"]["poolwatch"]["median_ratio"]
    verdict = "within" if ratio <= CHECKOUT_BUDGET else "over"
    summary = (
        f"With every metric on, the checkout path costs **{ratio:.3f}x** a bare checkout: {verdict} "
        f"the {CHECKOUT_BUDGET:.2f}x budget."
    )
    return [*_instruction_table(data), "", summary]


def _checkout_otel(data: dict[str, Any]) -> list[str]:
    """The same count with ``poolwatch.otel.install()`` done: the checkout path, and the collection."""
    loop, run = data["instructions_per_cycle"]["loop"], data["instructions_per_cycle"]["run"]
    plain, otel = loop["poolwatch"]["median_ratio"], loop["poolwatch-otel"]["median_ratio"]
    verdict = "within" if otel <= CHECKOUT_BUDGET else "over"
    collection = run["poolwatch-otel"]["median_instructions"] - loop["poolwatch-otel"]["median_instructions"]
    fold = run["poolwatch"]["median_instructions"] - loop["poolwatch"]["median_instructions"]
    summary = (
        f"With OpenTelemetry installed the checkout path costs **{otel:.3f}x** a bare checkout "
        f"({plain:.3f}x without it, in the same run): {verdict} the {CHECKOUT_BUDGET:.2f}x budget. "
        f"The scrape with its SDK collection adds {collection:,} instructions per checkout since the "
        f"last one, against {fold:,} for the Prometheus fold alone, on the collecting thread."
    )
    return [*_instruction_table(data), "", summary]


def _checkout_kinds(data: dict[str, Any]) -> list[str]:
    """Each pool kind's acquire/release cycle: instructions where counted, CPU time for every kind."""
    lines: list[str] = []
    counted = data.get("instructions", {})
    if counted:
        lines += [
            (
                f"**Instructions** ({_conditions(data['instructions_header'])}; "
                f"`{data['instructions_command']}`):"
            ),
            "",
            *_head(
                "pool kind",
                "bare",
                "poolwatch (leak detection on)",
                "ratio",
                "without leak detection",
                "ratio",
            ),
        ]
        for kind, loop in counted.items():
            lines.append(
                f"| {kind} | {loop['bare']['median_instructions']:,} "
                f"| {loop['poolwatch']['median_instructions']:,} | {loop['poolwatch']['median_ratio']:.3f}x "
                f"| {loop['poolwatch-noleak']['median_instructions']:,} "
                f"| {loop['poolwatch-noleak']['median_ratio']:.3f}x |"
            )
        lines.append("")
    lines += [
        f"**Conditions:** {_conditions(data['time_header'])}.",
        "",
        f"**Command:** `{data['time_command']}`",
        "",
        "CPU time, median microseconds per cycle and the median of the per-round ratios to bare:",
        "",
        *_head(
            "pool kind",
            "bare",
            "poolwatch (leak detection on)",
            "ratio",
            "without leak detection",
            "ratio",
            "budget",
        ),
    ]
    for kind, cpu in data["time"].items():
        worst = max(cpu["poolwatch"]["median_round_ratio"], cpu["poolwatch-noleak"]["median_round_ratio"])
        lines.append(
            f"| {kind} | {cpu['bare']['median_us']:.2f} | {cpu['poolwatch']['median_us']:.2f} "
            f"| {cpu['poolwatch']['median_round_ratio']:.3f}x | {cpu['poolwatch-noleak']['median_us']:.2f} "
            f"| {cpu['poolwatch-noleak']['median_round_ratio']:.3f}x "
            f"| {'within' if worst <= CHECKOUT_BUDGET else 'over'} {CHECKOUT_BUDGET:.2f}x |"
        )
    return lines


KIND_NAMES: Final = {
    "psycopg2_pool": "psycopg2.pool (`ThreadedConnectionPool`)",
    "psycopg_pool": "psycopg_pool (`ConnectionPool`)",
    "psycopg_pool_async": "psycopg_pool (`AsyncConnectionPool`)",
    "redis_async": "redis.asyncio (`ConnectionPool`)",
    "asyncpg": "asyncpg (`Pool`)",
}


def kinds_cost(results: Path = RESULTS) -> str:
    """The checkout path of each pool kind in instructions, for the supported-pools page."""
    data = json.loads((results / "checkout_kinds.json").read_text(encoding="utf-8"))
    counted: dict[str, dict[str, dict[str, float]]] = data["instructions"]
    lines = [
        f"**Conditions:** {_conditions(data['instructions_header'])}; `{data['instructions_command']}`.",
        "",
        *_head(
            "kind",
            "bare",
            "poolwatch, no leak detection",
            "ratio",
            "with leak detection",
            "ratio",
            f"to shed for {CHECKOUT_BUDGET:.2f}x",
        ),
    ]
    hooks, leak = [], []
    for kind, loop in counted.items():
        variants = ("bare", "poolwatch-noleak", "poolwatch")
        bare, noleak, full = (loop[variant]["median_instructions"] for variant in variants)
        hooks.append(noleak - bare)
        leak.append(full - noleak)
        shed = noleak - bare * CHECKOUT_BUDGET
        lines.append(
            f"| {KIND_NAMES.get(kind, kind)} | {bare:,.0f} | {noleak:,.0f} "
            f"| {loop['poolwatch-noleak']['median_ratio']:.2f}x | {full:,.0f} "
            f"| {loop['poolwatch']['median_ratio']:.2f}x | {f'{shed:,.0f}' if shed > 0 else 'within'} |"
        )
    lines += [
        "",
        (
            f"Without leak detection the hooks cost {min(hooks):,.0f} to {max(hooks):,.0f} instructions a "
            f"cycle; leak detection adds {min(leak):,.0f} to {max(leak):,.0f}. The last column is what the "
            "hooks without leak detection would have to shed to meet the budget."
        ),
    ]
    return "\n".join(lines) + "\n"


def _checkout_time(data: dict[str, Any]) -> list[str]:
    runs = data["runs"]
    lines = [f"**Conditions:** {_conditions(runs[0]['header'])}.", "", f"**Command:** `{data['command']}`"]
    lines += [
        "",
        f"{len(runs)} runs; each cell lists the runs in order.",
        "",
        *_head(
            "variant",
            "CPU: ratio of medians",
            "CPU: median per-round ratio",
            "wall: ratio of medians",
            "scrape CPU per checkout",
        ),
    ]
    for variant in (v for v in VARIANTS if v != "bare" and v in runs[0]["summary"]["cpu"]):

        def each(measure: str, key: str, variant: str = variant) -> str:
            return " / ".join(f"{run['summary'][measure][variant][key]:.3f}" for run in runs)

        scrape = [run["summary"]["scrape"][variant]["median_us"] for run in runs]
        lines.append(
            f"| {VARIANT_NAMES[variant]} | {each('cpu', 'ratio_of_medians')} "
            f"| {each('cpu', 'median_round_ratio')} | {each('wall', 'ratio_of_medians')} "
            f"| {min(scrape):.2f}-{max(scrape):.2f} us |"
        )
    bare = [run["summary"]["cpu"]["bare"]["median_us"] for run in runs]
    lines += ["", f"A bare checkout cycle took {min(bare):.1f}-{max(bare):.1f} us of CPU."]
    return lines


def _footprint(data: dict[str, Any]) -> list[str]:
    base, extra = data["baseline"], data["poolwatch_over_baseline"]

    def row(measure: str, key: str, unit: Callable[[float], str]) -> str:
        low, high = extra[f"{key}_iqr"]
        baseline = unit(base[key]) if key in base else "-"
        return f"| {measure} | {baseline} | {unit(extra[key])} | {unit(low)} to {unit(high)} |"

    version = f"{_ms(data['cli_version_ms'])} wall, {_ms(data['cli_version_cpu_ms'])} CPU"
    what = f"Baseline: {base['what']}. poolwatch: {extra['what']}."
    return [
        f"**Conditions:** {_conditions(data['header'])}.",
        "",
        f"**Command:** `{data['command']}`",
        "",
        *_head("measure", "baseline", "poolwatch adds (median)", "interquartile range"),
        row("resident memory", "rss_mb", lambda mb: f"{mb:g} MB"),
        row("import and instrument, CPU time", "import_cpu_ms", _ms),
        row("import and instrument, wall time", "import_ms", _ms),
        *(
            [row("import poolwatch + instrument() alone, CPU time", "own_cpu_ms", _ms)]
            if "own_cpu_ms" in extra
            else []
        ),
        "",
        f"{what} `poolwatch --version`, a whole process: {version}.",
    ]


HTTP_SCENARIOS: Final = {
    "sequential": "one scraper, 200 scrapes, keep-alive",
    "concurrent": "50 scrapers at once, keep-alive",
    "flood": "100 idle connections a second",
    "auth_attack": "50 basic-auth attackers",
}


# The two daemons of a run, as the results file names them and as the page does.
HTTP_RUNS: Final = {"before": "baseline", "after": "this version"}


def _http_attack(data: dict[str, Any]) -> list[str]:
    options = {"baseline": data["baseline"], "rounds": data["rounds"]}
    options["tls-garbage"] = next(iter(data["tls_garbage"].values()))["connections"]
    lines = [
        _machine(data),
        "",
        _command("http_attack", data, options),
        "",
        (
            f"`baseline` is the revision given with `--baseline` (`{data['baseline']}` in this run), "
            f"next to this version; {data['rounds']} rounds, interleaved; scrapes answered 200 (all "
            "rounds), latency of those, median [min-max]."
        ),
        "",
        *_head("scenario", "", "scrapes answered", "p50", "p99", "over 0.5 s", "CPU", "threads"),
    ]
    for scenario, title in HTTP_SCENARIOS.items():
        per = data["scenarios"].get(scenario)
        if per is None:
            continue
        for name, label in HTTP_RUNS.items():
            row = per[name]
            p50 = [v for v in row["p50_ms"] if v is not None]
            p99 = [v for v in row["p99_ms"] if v is not None]
            slow = sum(extra["over_500ms"] for extra in row["extra"])
            lines.append(
                f"| {title if name == 'before' else ''} | {label} "
                f"| {sum(row['ok'])} of {row['total'] * len(row['ok'])} "
                f"| {_spread(p50) if p50 else '-'} | {_spread(p99) if p99 else '-'} | {slow} "
                f"| {_median(row['cpu_s']):.2f} s "
                f"| {row['threads_idle']} idle, {max(row['threads_max'])} most |"
            )
    lines += ["", *_head("failed TLS handshakes", "RSS growth", "CPU after", "TLS scrape after", "threads")]
    for name, label in HTTP_RUNS.items():
        garbage = data["tls_garbage"][name]
        lines.append(
            f"| {label}: {garbage['connections']:,} | {garbage['rss_growth_mb']:.1f} MB "
            f"| {garbage['cpu_share_after']:.1%} of a core | {garbage['tls_scrape_after']} "
            f"| {garbage['threads_after']} |"
        )
    return lines


def _multiprocess(data: dict[str, Any]) -> list[str]:
    lines = [
        f"**Conditions:** {_conditions(data['header'])}.",
        "",
        f"**Command:** `{data['command']}`",
        "",
        (
            f"{data['workers']} worker processes x {data['pools']} pools alive, then {data['recycles']:,} "
            "more workers recycled one after another (each takes a slot, counts, writes and exits); "
            f"{data['scrapes']} scrapes of the endpoint each time."
        ),
        "",
        *_head("endpoint", "p50", "p90", "CPU per scrape", "body", "files", "on disk"),
    ]
    for title, key in (("workers alive", "live"), (f"after {data['recycles']:,} recycles", "after_recycles")):
        row = data[key]
        size, disk = row["body_bytes"] / 1024, row["bytes_on_disk"] / 2**20
        lines.append(
            f"| {title} | {_ms(row['median_ms'])} | {_ms(row['p90_ms'])} | {_ms(row['cpu_median_ms'])} "
            f"| {size:.0f} KiB | {row['files']} | {disk:.1f} MiB |"
        )
    lines += [
        "",
        (
            f"Checkouts exported: {data['checkouts_exported']:,.0f} of the {data['checkouts_expected']:,} "
            f"the workers made; a recycle took {_ms(data['recycle_ms'])} (fork to exit)."
        ),
    ]
    checkout = data.get("checkout")
    if checkout:
        loop = checkout["instructions_per_cycle"]["loop"]
        ratio = loop["poolwatch-multiprocess"]["median_ratio"]
        verdict = "within" if ratio <= CHECKOUT_BUDGET else "over"
        lines += [
            "",
            f"Checkout path under callgrind ({_conditions(checkout['header'])}; `{checkout['command']}`):",
            "",
            *_head("variant", "instructions per cycle", "ratio to bare"),
            *(
                f"| {VARIANT_NAMES[name]} | {row['median_instructions']:,} | {row['median_ratio']:.3f}x |"
                for name, row in loop.items()
            ),
            "",
            (
                f"In multiprocess mode the checkout path costs **{ratio:.3f}x** a bare checkout: "
                f"{verdict} the {CHECKOUT_BUDGET:.2f}x budget."
            ),
        ]
    return lines


def _shards(data: dict[str, Any]) -> list[str]:
    lines = [
        _machine(data),
        "",
        f"**Command:** `{data['command']}`",
        "",
        (
            f"{data['targets']} targets (one in ten PostgreSQL, the others SQLite), probes every "
            f"{data['tick_s']:g} s, CPU and memory over {data['window_s']:g} s, {data['rounds']} rounds; "
            "median [min-max] over rounds."
        ),
        "",
        *_head(
            "replicas",
            "until every target is up",
            "CPU per target per tick (all replicas)",
            "RSS, largest replica",
            "RSS, all replicas",
            "scrape p50",
            "scrape p99",
        ),
    ]
    for replicas, rounds in sorted(data["setups"].items(), key=lambda item: int(item[0])):

        def values(key: str, rounds: list[dict[str, float]] = rounds) -> list[float]:
            return [r[key] for r in rounds]

        def mb(value: float) -> str:
            return f"{value:.0f} MB"

        def seconds(value: float) -> str:
            return f"{value:.1f} s"

        lines.append(
            f"| {replicas} | {_spread(values('seconds_to_all_up'), seconds)} "
            f"| {_spread(values('cpu_ms_per_target_tick'))} | {_spread(values('rss_mb_largest'), mb)} "
            f"| {_spread(values('rss_mb_total'), mb)} | {_spread(values('scrape_p50_ms'))} "
            f"| {_spread(values('scrape_p99_ms'))} |"
        )
    return lines + _shards_summary(data["setups"])


def _shards_summary(setups: dict[str, list[dict[str, float]]]) -> list[str]:
    """One process against the most replicas: each replica's scrape and memory, at the median."""
    most = max(setups, key=int)
    if "1" not in setups or most == "1":
        return []

    def med(replicas: str, key: str) -> float:
        return _median([r[key] for r in setups[replicas]])

    scrape, one_scrape = med(most, "scrape_p50_ms"), med("1", "scrape_p50_ms")
    rss, one_rss = med(most, "rss_mb_largest"), med("1", "rss_mb_largest")
    return [
        "",
        (
            f"On {most} replicas a replica's scrape takes {scrape / one_scrape:.2f} of one process's "
            f"({_ms(scrape)} against {_ms(one_scrape)} at the median) and its memory is "
            f"{rss / one_rss:.2f} of it ({rss:.0f} MB against {one_rss:.0f} MB)."
        ),
    ]


STATUS_PAGE_ROWS: Final = {
    "get_page": "a whole `GET /` between two job outcomes",
    "get_page_after_samples": "a whole `GET /` right after every target got a sample",
    "get_page_all_down": "a whole `GET /` while every target is down",
    "document": "the document from the daemon's memory",
    "render": "the page from the document",
    "json": "the `/status` JSON from the document",
    "json_after_samples": "the same right after every target got a sample",
    "observe": "one probe outcome recorded for every target (scheduler threads)",
    "reference": "the reference loop, `sum(i * i for i in range(100_000))`",
}


def _status_page(data: dict[str, Any]) -> list[str]:
    machine, results = data["machine"], data["results"]
    load = (
        f"load average {machine['loadavg_1m_at_start']:g} at the start, "
        if "loadavg_1m_at_start" in machine
        else ""
    )
    baseline = data.get("baseline")
    commit = data.get("baseline_commit")
    options = {"targets": data["targets"], "rounds": data["rounds"]}
    options |= {"baseline": baseline} if baseline else {}
    lines = [
        (
            f"**Machine:** {machine['cpus']} CPUs, Python {machine['python']}; {load}"
            f"{'' if load else 'load average '}{data['loadavg_1m_at_end']:g} at the end; {data['when'][:10]}."
        ),
        "",
        _command("status_page", data, options),
        "",
        (
            f"{data['targets']} targets, {data['rounds']} interleaved rounds, medians of CPU time"
            + (
                f"; baseline: the status code of `{baseline}`" + (f" ({commit})" if commit else "")
                if baseline
                else ""
            )
            + f". Page {data['page_bytes'] / 1000:.0f} KB, `/status` {data['json_bytes'] / 1000:.0f} KB."
        ),
        "",
        *_head("what", "CPU time", "ratio to the reference loop", "baseline", "this version / baseline"),
    ]
    for name, title in STATUS_PAGE_ROWS.items():
        row = results.get(name)
        if row is None:
            continue
        current, before = row["current"], row.get("baseline")
        versus = (
            f"{_ms(before['cpu_ms_median'])} | {row['cpu_ratio_current_to_baseline']:.2f}"
            if before
            else "- | -"
        )
        ratio = current["cpu_ratio_to_reference"]
        lines.append(f"| {title} | {_ms(current['cpu_ms_median'])} | {ratio:.2f} | {versus} |")
    return lines


RENDERERS: Final[dict[str, Callable[[dict[str, Any]], list[str]]]] = {
    "checkout_instructions": _checkout_instructions,
    "checkout_otel": _checkout_otel,
    "checkout_kinds": _checkout_kinds,
    "http_attack": _http_attack,
    "checkout_time": _checkout_time,
    "cli_startup": _cli_startup,
    "footprint": _footprint,
    "multiprocess": _multiprocess,
    "reaper": _reaper,
    "render": _render,
    "scale": _scale,
    "shards": _shards,
    "scrape": _scrape,
    "status_page": _status_page,
}
