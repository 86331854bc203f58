"""``python -m poolwatch``: the same as the ``poolwatch`` command."""

from poolwatch.launcher import entry

entry()
