"""What ``poolwatch run`` does to its own process: large blocks keep their own mappings (glibc).
Each case runs in a fresh interpreter: the settings last for the process."""

from __future__ import annotations

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
