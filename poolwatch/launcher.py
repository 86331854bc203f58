"""The ``poolwatch`` command's entry point: ``--version`` at once, a one-line hint when the daemon's
dependencies are not installed (the plain ``poolwatch`` install is the library only)."""

from __future__ import annotations

import logging
import sys
from typing import Final

from poolwatch._version import __version__

# The top-level modules of what ``poolwatch[daemon]`` installs beyond the library.
DAEMON_MODULES: Final = frozenset({"apscheduler", "yaml", "bcrypt", "redis", "psycopg2"})
DAEMON_INSTALL: Final = "pip install 'poolwatch[daemon]'"


def main(argv: list[str] | None = None) -> int:
    """Run the command line; 2 with one line on stderr when a daemon dependency is missing."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--version"]:  # answered without loading the daemon (argparse prints the same)
        print(f"poolwatch {__version__}")
        return 0
    try:
        from poolwatch.cli import main as cli_main  # noqa: PLC0415 - the daemon's imports start here

        return cli_main(args)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in DAEMON_MODULES:
            raise
        print(
            f"poolwatch: the daemon needs {missing}, which is not installed: {DAEMON_INSTALL}",
            file=sys.stderr,
        )
        return 2


def entry() -> None:
    logging.raiseExceptions = False  # a log line that cannot be written must not become a traceback
    sys.exit(main())
