"""A bounded local spool of audit records waiting for the audit database.

Records are kept in memory and, when a path is configured, in a JSON-lines file rewritten atomically
(write, fsync, rename) on every change, so a restart or a crash loses nothing that was spooled. At
the bound the oldest records are dropped, and every drop is reported to ``on_drop``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Collection

log = logging.getLogger(__name__)


class Spool:
    """A thread-safe FIFO of JSON-serialisable records, each a dict with a ``record_id``."""

    def __init__(
        self,
        limit: int,
        path: str | None = None,
        on_drop: Callable[[int], None] = lambda _n: None,
    ) -> None:
        self.limit = limit
        self.path = Path(path) if path else None
        self._on_drop = on_drop
        self._lock = threading.Lock()
        self._records: deque[dict[str, Any]] = deque()
        if self.path is not None:
            self._load(self.path)

    def _load(self, path: Path) -> None:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return
        bad = 0
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(record, dict) and "record_id" in record:
                self._records.append(record)
            else:
                bad += 1
        if bad:
            log.warning("audit spool %s: %d unreadable lines skipped", path, bad)
        if self._records:
            log.info("audit spool %s: %d records waiting from before", path, len(self._records))
        self._trim()

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def push(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._records.append(record)
            self._trim()
            self._persist()

    def peek(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The oldest records (a copy), without removing them."""
        with self._lock:
            records = list(self._records)
        return records if limit is None else records[:limit]

    def remove(self, record_ids: Collection[str]) -> None:
        """Forget records once they are safely written elsewhere."""
        with self._lock:
            self._records = deque(r for r in self._records if r["record_id"] not in record_ids)
            self._persist()

    def _trim(self) -> None:
        dropped = 0
        while len(self._records) > self.limit:
            self._records.popleft()
            dropped += 1
        if dropped:
            log.error("audit spool full (%d records): dropped the %d oldest", self.limit, dropped)
            self._on_drop(dropped)

    def _persist(self) -> None:
        if self.path is None:
            return
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with temporary.open("w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(r, separators=(",", ":")) + "\n" for r in self._records)
                handle.flush()
                os.fsync(handle.fileno())
            temporary.replace(self.path)
        except OSError as exc:
            # The records are still in memory; only a restart now would lose them.
            log.error("audit spool %s cannot be written: %s", self.path, exc.strerror)  # noqa: TRY400
