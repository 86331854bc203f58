"""What ``poolwatch run`` does to its own process: large blocks keep their own mappings (glibc), and
what start-up built is left out of the garbage collector's passes.
Each case runs in a fresh interpreter: the settings last for the process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Frees a mapped 4 MiB block (glibc then raises its threshold to 4 MiB unless it was pinned) and
# counts the mappings a 1 MiB block adds: 1 when it got its own, 0 when it came from the heap.
PROBE = """
import ctypes, sys
if sys.argv[1] == "pin":
    from poolwatch.process import pin_mmap_threshold
    assert pin_mmap_threshold()
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
block = bytes(4 << 20)
del block
before = libc.mallinfo2().hblks
body = bytes(1 << 20)
print(libc.mallinfo2().hblks - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.parametrize(("how", "mappings"), [("pin", "1"), ("leave", "0")])
def test_a_pinned_threshold_keeps_a_scrape_sized_block_out_of_the_heap(how: str, mappings: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, how], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == mappings


SETTLE = """
import gc, weakref
import poolwatch.daemon  # what poolwatch run imports
from poolwatch.process import settle_heap, thaw_heap
class Node:
    pass
def cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a
before = len(gc.get_objects())
kept = cycle()  # alive when the heap is settled, as a target's engine is
frozen = settle_heap()
walked = len(gc.get_objects())
later = weakref.ref(cycle())  # garbage made after: collected as usual
gc.collect()
dropped = weakref.ref(kept)
del kept  # a frozen cycle dropped: kept until the heap is thawed
gc.collect()
while_frozen = dropped() is None
thaw_heap()
gc.collect()
print(frozen, before, walked, later() is None, while_frozen, dropped() is None)
"""


def test_a_settled_heap_is_left_out_of_collections_until_it_is_thawed() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SETTLE], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    frozen, before, walked, later, while_frozen, after_thaw = result.stdout.split()
    assert int(frozen) >= int(before) // 2  # what is alive: the imports, the cycle kept
    assert int(walked) < int(before) // 10
    assert (later, while_frozen, after_thaw) == ("True", "False", "True")


DAEMON = """
import gc, sys, weakref
from poolwatch.config import validate
from poolwatch.daemon import Daemon
def settings(*names):
    return validate({
        "targets": [{"name": n, "kind": "sqlite", "url": f"sqlite:///{sys.argv[1]}/{n}.db"} for n in names],
        "http": {"listen": "127.0.0.1:0"},
    })
daemon = Daemon(settings("a", "b"), loader=lambda: settings("a"), settle_heap=True)
daemon.start()
built = gc.get_freeze_count()
runtime = daemon.runtime("b")
runtime.itself = runtime  # a cycle, as a dropped engine's may be
dropped = weakref.ref(runtime)
del runtime
daemon.reload()  # drops b
gc.collect()
print(built, dropped() is None, gc.get_freeze_count() > 0)
daemon.stop()
"""


def test_the_daemon_settles_its_heap_once_built_and_frees_what_a_reload_drops(tmp_path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "POOLWATCH_STATE_DIR": str(tmp_path / "state")}
    result = subprocess.run(
        [sys.executable, "-c", DAEMON, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    built, freed, settled_again = result.stdout.split()
    assert int(built) > 10_000
    assert (freed, settled_again) == ("True", "True")


RUN = """
import gc
from poolwatch import daemon
seen = []
def run(self):  # poolwatch run's daemon, once started
    self.start()
    seen.append((gc.get_freeze_count(), len(self._targets)))
    self.stop()
daemon.Daemon.run = run
from poolwatch.cli import main
assert main(["run", "--listen", "127.0.0.1:0"]) == 0
print(*seen[0])
"""


def test_poolwatch_run_settles_its_heap_once_the_targets_are_built(tmp_path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "POOLWATCH_STATE_DIR": str(tmp_path / "state")}
    result = subprocess.run(
        [sys.executable, "-c", RUN], capture_output=True, text=True, timeout=60, check=False, env=env
    )
    assert result.returncode == 0, result.stderr
    frozen, targets = map(int, result.stdout.split())
    assert frozen > 10_000
    assert targets == 1  # the embedded SQLite target
