"""Targets from a directory of files (Prometheus ``file_sd`` style), and a watcher that reloads on change.

Each ``*.yaml``, ``*.yml`` or ``*.json`` file in the directory holds one target (a mapping with a
``name``), a list of targets, or a mapping with a ``targets`` list; files are read in name order and
their targets join the configuration file's. A tool (Ansible, a Kubernetes ConfigMap, a service
catalogue) drops files there; the daemon notices a change by polling the directory's names, sizes
and modification times, a few ``stat`` calls every ``interval`` on a thread of its own, away from
the scheduler and the HTTP workers, and reloads as on SIGHUP: a file that does not parse or
validate refuses the reload with one error line naming it, and the running targets are kept.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from poolwatch.config_file import MAX_CONFIG_BYTES, UnreadableFileError, load_text, read_text
from poolwatch.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger(__name__)

SUFFIXES: Final = (".yaml", ".yml", ".json")

Fingerprint = tuple[tuple[str, int, int], ...]


def files(directory: str) -> list[str]:
    """The target files of ``directory``, in name order (hidden files, such as the ``..data``
    links of a mounted ConfigMap, are left out)."""
    try:
        entries = list(Path(directory).iterdir())
    except OSError as exc:
        raise ConfigError(f"target_files.directory {directory}: {exc.strerror or exc}") from None
    wanted = [entry for entry in entries if entry.name.endswith(SUFFIXES) and not entry.name.startswith(".")]
    return sorted(str(entry) for entry in wanted)


def read_targets(directory: str) -> list[dict[str, Any]]:
    """Every target defined in the directory's files, as configuration mappings."""
    targets: list[dict[str, Any]] = []
    for path in files(directory):
        targets.extend(_targets_of(path))
    return targets


def _targets_of(path: str) -> list[dict[str, Any]]:
    try:
        text = read_text(path, MAX_CONFIG_BYTES)
    except UnreadableFileError as exc:
        raise ConfigError(f"targets file {path} {exc}") from None
    data = load_text(path, text)
    if isinstance(data, dict) and "name" not in data and set(data) == {"targets"}:
        data = data["targets"]
    if isinstance(data, dict):
        data = [data]
    if data is None:
        return []
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise ConfigError(
            f"targets file {path}: expected a target (a mapping with a name), a list of them, "
            "or a mapping with a targets list"
        )
    return data


def fingerprint(directory: str) -> Fingerprint:
    """What changes when a target file is added, removed or rewritten (names, sizes, mtimes)."""
    seen = []
    for path in files(directory):
        try:
            info = Path(path).stat()
        except OSError:
            continue  # removed meanwhile: the next poll sees the directory without it
        seen.append((path, info.st_size, info.st_mtime_ns))
    return tuple(seen)


class Watcher:
    """Calls ``on_change()`` when the directory's target files change, polling every ``interval``."""

    def __init__(self, directory: str, interval: float, on_change: Callable[[], None]) -> None:
        self._directory = directory
        self._interval = interval
        self._on_change = on_change
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen = self._poll()

    def _poll(self) -> Fingerprint | None:
        try:
            return fingerprint(self._directory)
        except ConfigError as exc:
            log.error("%s", exc)  # noqa: TRY400 - one line, no traceback
            return None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="poolwatch-target-files", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stopped.wait(self._interval):
            seen = self._poll()
            if seen is None or seen == self._seen:
                continue
            self._seen = seen
            log.info("target files in %s changed: reloading", self._directory)
            try:
                self._on_change()
            except Exception:
                log.exception("reloading after a change of the target files failed")

    def stop(self) -> None:
        """Safe to call twice, and before ``start()``."""
        self._stopped.set()
