"""The daemon's signal handling around start-up."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

from poolwatch.config import validate
from poolwatch.daemon import Daemon

if TYPE_CHECKING:
    from pathlib import Path

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def test_sigterm_is_handled_from_the_moment_the_banner_announces_the_daemon(tmp_path: Path) -> None:
    daemon = Daemon(
        validate(
            {
                "targets": [{"name": "local", "kind": "sqlite", "url": f"sqlite:///{tmp_path / 'local.db'}"}],
                "http": {"listen": "127.0.0.1:0"},
            }
        )
    )
    before = {signum: signal.getsignal(signum) for signum in SIGNALS}
    seen: dict[str, object] = {}
    banner = daemon._banner

    def banner_and_stop() -> str:
        seen["sigterm"] = signal.getsignal(signal.SIGTERM)
        daemon.stop()  # run() returns as soon as its scheduler would start
        return banner()

    daemon._banner = banner_and_stop  # type: ignore[method-assign]
    try:
        daemon.run()  # the main thread: the only one that may install signal handlers
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    assert seen["sigterm"] not in (before[signal.SIGTERM], signal.SIG_DFL, signal.SIG_IGN)
