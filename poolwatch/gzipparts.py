"""A gzip body made of parts deflated one by one; a part that is the same object as last time is not
deflated again.

Why: at 100 targets the /metrics body is 1.8 MB, and ``gzip.compress(body, 1)`` took 3.4 ms a scrape,
as long as rendering it. The renderer hands the body over as one bytes object per metric family and
gives back the very same object for a family that did not change (exposition.py), which between
two scrapes is most of them.

How: each part is deflated by a fresh compressor and ended with a sync flush, so it refers to nothing
before it and ends on a byte boundary, with no final-block bit: the raw deflate data of consecutive
parts concatenate into one valid stream (RFC 1951), closed by one empty final block. The gzip header
and trailer (CRC-32 and length of the whole body, RFC 1952) wrap it; the CRC is the one pass over
the whole body left per scrape (~0.4 ms at 1.8 MB). Deflating families apart costs no size here: a
family's series repeat their own names, not the previous family's (the 100-target body came out 5 %
smaller than in one piece).
"""

from __future__ import annotations

import struct
import threading
import zlib
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable

# Magic, deflate, no flags, no time, "fastest" (XFL 4), unknown OS: as gzip.compress(level=1) writes.
_HEADER: Final = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff"
_RAW: Final = -zlib.MAX_WBITS  # a raw deflate stream: no zlib header or checksum


def _deflate(part: bytes, level: int) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, _RAW)
    return compressor.compress(part) + compressor.flush(zlib.Z_SYNC_FLUSH)


# An empty block with the final bit set: the end of the stream.
_END: Final = zlib.compressobj(1, zlib.DEFLATED, _RAW).flush()


class GzipParts:
    """Gzips a body given as parts, keeping each part's deflated bytes until it is not given again.
    Thread-safe."""

    def __init__(self, level: int = 1) -> None:
        self._level = level
        self._lock = threading.Lock()
        # By id(part), with the part itself: held, so the id cannot be reused by another object.
        self._deflated: dict[int, tuple[bytes, bytes]] = {}

    def compress(self, parts: Iterable[bytes]) -> bytes:
        """The gzip file (one member) of ``b"".join(parts)``."""
        with self._lock:
            fresh: dict[int, tuple[bytes, bytes]] = {}
            out = [_HEADER]
            crc, size = 0, 0
            for part in parts:
                if not part:
                    continue
                known = self._deflated.get(id(part))
                if known is None or known[0] is not part:
                    known = (part, _deflate(part, self._level))
                fresh[id(part)] = known
                out.append(known[1])
                crc = zlib.crc32(part, crc)
                size += len(part)
            out.append(_END)
            out.append(struct.pack("<II", crc, size & 0xFFFFFFFF))
            # Only the parts of this body are kept: nothing accumulates.
            self._deflated = fresh
            return b"".join(out)
