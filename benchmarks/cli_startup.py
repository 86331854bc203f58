"""Command-line start-up and exit: how long each subcommand takes, against a bare interpreter.

    .venv/bin/python -m benchmarks.cli_startup                   # this checkout
    .venv/bin/python -m benchmarks.cli_startup --compare DIR     # and the poolwatch package in DIR

``DIR`` holds another version's ``poolwatch/`` package (``git archive <commit> poolwatch | tar -x -C
DIR``); both are run through the same bootstrap, which imports ``poolwatch`` from the directory named,
so the two differ in their code only. Each round runs every contender once, in a rotating order; the
figures are medians over rounds of wall time and of the child's CPU time (user + system, from
``wait4``), and of the ratio to ``python -c pass`` measured in the same round; "cli.py alone" runs
the command line without ``poolwatch/__init__.py`` (what ``cli.py`` itself loads). The
``run`` contender
starts the daemon on the embedded SQLite database, waits until its target is up, sends SIGTERM and
times SIGTERM to exit and the "poolwatch stopped" line to exit. It needs no servers.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.harness import machine, median, rotate, save_results, spread

HERE = Path(__file__).resolve().parents[1]
# Imports poolwatch from the directory in argv[1] whatever is installed (an editable install's
# finder would otherwise win), then runs the command line with the remaining arguments.
BOOT = """
import importlib.machinery, sys
root = sys.argv.pop(1)
class Finder:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "poolwatch":
            return importlib.machinery.PathFinder.find_spec(name, [root])
        return None
sys.meta_path.insert(0, Finder())
sys.argv[0] = "poolwatch"
if sys.argv[1] == "--skip-package-init":
    # What the command line itself loads, whatever poolwatch/__init__.py imports.
    import types
    sys.argv.pop(1)
    package = types.ModuleType("poolwatch")
    package.__path__ = [root + "/poolwatch"]
    sys.modules["poolwatch"] = package
from poolwatch.cli import entry
entry()
"""
CONFIGS = {
    "redis.yaml": 'targets: [{name: cache, kind: redis, url: "redis://cache.example:6379/0"}]\n',
    "postgres.yaml": 'targets: [{name: orders, kind: postgres, url: "postgresql://app@db.example/orders"}]\n',
}
COMMANDS = {
    "--version": ["--version"],
    "--help": ["--help"],
    "config (redis)": ["config", "-c", "{tmp}/redis.yaml"],
    "config (postgres)": ["config", "-c", "{tmp}/postgres.yaml"],
    "check (sqlite)": ["check", "-c", "{tmp}/sqlite.yaml"],
}


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``argv``."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode not in (0, 1):
        raise RuntimeError(f"{argv} exited {process.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def stop_to_exit(prefix: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Seconds from SIGTERM to exit, and from the "poolwatch stopped" line to exit."""
    process = subprocess.Popen(
        [*prefix, "run", "--listen", "127.0.0.1:0"], env=env, stderr=subprocess.PIPE, text=True
    )
    assert process.stderr is not None
    line = process.stderr.readline()
    found = re.search(r"/metrics on (\S+)", line)
    if found is None:
        process.kill()
        raise RuntimeError(line)
    deadline = time.monotonic() + 30
    while b'poolwatch_up{target="embedded"} 1.0' not in urllib.request.urlopen(found.group(1)).read():
        if time.monotonic() > deadline:
            raise RuntimeError("the embedded target was not up within 30 s")
        time.sleep(0.05)
    sent = time.perf_counter()
    process.send_signal(signal.SIGTERM)
    stopped = sent
    for text in process.stderr:
        if "poolwatch stopped" in text:
            stopped = time.perf_counter()
            break
    process.wait(30)
    ended = time.perf_counter()
    return ended - sent, ended - stopped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--compare", metavar="DIR", help="a directory holding another poolwatch package")
    parser.add_argument("--compare-name", default="compared", help="how the results name that version")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="poolwatch-cli-"))
    for name, text in CONFIGS.items():
        (tmp / name).write_text(text)
    (tmp / "sqlite.yaml").write_text(
        f'targets: [{{name: lite, kind: sqlite, url: "sqlite:///{tmp}/a.db"}}]\n'
    )
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp), "POOLWATCH_STATE_DIR": str(tmp)}
    trees = {"this checkout": str(HERE)}
    if args.compare:
        trees[args.compare_name] = str(Path(args.compare).resolve())
    contenders: list[tuple[str, list[str]]] = [("python -c pass", [sys.executable, "-c", "pass"])]
    for tree, root in trees.items():
        prefix = [sys.executable, "-c", BOOT, root]
        contenders += [
            (f"{tree}: {name}", [*prefix, *(a.replace("{tmp}", str(tmp)) for a in argv)])
            for name, argv in COMMANDS.items()
        ]
        contenders.append((f"{tree}: run, SIGTERM to exit", [*prefix]))
        contenders += [
            (f"{tree}: {name} (cli.py alone)", [*prefix, "--skip-package-init", *argv])
            for name, argv in (
                ("--version", ["--version"]),
                ("config (redis)", ["config", "-c", f"{tmp}/redis.yaml"]),
            )
        ]
    wall: dict[str, list[float]] = {name: [] for name, _ in contenders}
    cpu: dict[str, list[float]] = {name: [] for name, _ in contenders}
    ratio: dict[str, list[float]] = {name: [] for name, _ in contenders}
    after_stopped: dict[str, list[float]] = {name: [] for name, _ in contenders if "SIGTERM" in name}
    for round_no in range(args.rounds):
        this_round: dict[str, float] = {}
        for name, argv in rotate(contenders, round_no):
            if "SIGTERM" in name:
                total, tail = stop_to_exit(argv, env)
                wall[name].append(total)
                after_stopped[name].append(tail)
                continue
            seconds, cpu_seconds = timed(argv, env)
            wall[name].append(seconds)
            cpu[name].append(cpu_seconds)
            this_round[name] = seconds
        for name, seconds in this_round.items():
            ratio[name].append(seconds / this_round["python -c pass"])
        print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr)
    print(f"{'contender':58} {'wall ms':>22} {'cpu ms':>22} {'x python -c pass':>17}")
    for name, _ in contenders:
        wall_ms = [1000 * s for s in wall[name]]
        cpu_ms = [1000 * s for s in cpu[name]]
        shown_ratio = f"{median(ratio[name]):.2f}" if ratio[name] else ""
        print(f"{name:58} {spread(wall_ms):>22} {spread(cpu_ms) if cpu_ms else '':>22} {shown_ratio:>17}")
        if name in after_stopped:
            tail_ms = spread([1000 * s for s in after_stopped[name]])
            print(f"{'  (of which after poolwatch stopped)':58} {tail_ms:>22}")
    results: dict[str, Any] = {
        "benchmark": "cli_startup",
        "command": shlex.join([".venv/bin/python", "-m", "benchmarks.cli_startup", *sys.argv[1:]]),
        "machine": machine(),
        "rounds": args.rounds,
        "contenders": {
            name: {
                "wall_ms": [1000 * s for s in wall[name]],
                "cpu_ms": [1000 * s for s in cpu[name]],
                "ratio_to_python": ratio[name],
                **(
                    {"after_stopped_ms": [1000 * s for s in after_stopped[name]]}
                    if name in after_stopped
                    else {}
                ),
            }
            for name, _ in contenders
        },
    }
    print(f"saved {save_results('cli_startup', results)}", file=sys.stderr)


if __name__ == "__main__":
    main()
