"""``python -m poolwatch``: the same as the ``poolwatch`` command."""

from poolwatch.cli import entry

entry()
