"""Which replica monitors which target: rendezvous hashing of target names over ``count`` shards.

Every replica reads the same configuration and keeps the targets whose name hashes highest for its
own index: no coordination, the same answer on every replica, and each target's owner depends on its
name and the shard count only. So adding or removing targets moves no other target; growing from
``n`` to ``n + 1`` replicas moves only the ~1/(n+1) of targets the new replica wins. (Hashing the name
modulo the count would move most of them.) The reaper lease still decides which replica may
terminate sessions on a server, as with unsharded replicas.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable


@dataclass(frozen=True, slots=True)
class Shard:
    """This replica's place: ``index`` of ``count`` (0-based)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: needs 0 <= INDEX < COUNT")

    def owns(self, name: str) -> bool:
        return self.count == 1 or owner(name, self.count) == self.index


def owner(name: str, count: int) -> int:
    """The shard (0 .. count-1) that monitors the target called ``name``."""
    return max(range(count), key=lambda shard: _weight(shard, name))


def _weight(shard: int, name: str) -> bytes:
    return hashlib.blake2b(f"{shard}\0{name}".encode(), digest_size=8).digest()


def assign(names: Iterable[str], count: int) -> dict[int, list[str]]:
    """Every shard's targets (for ``poolwatch config`` and the tests)."""
    shards: dict[int, list[str]] = {shard: [] for shard in range(count)}
    for name in names:
        shards[owner(name, count)].append(name)
    return shards
