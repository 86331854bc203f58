"""Logging set-up: one line per record, text or JSON, with secrets masked where they can occur.

Secrets are kept out of messages where they are made (URLs are stored without passwords, errors carry
the driver's first line only); the redacting filter is the second line of defence, for any text a
library formats that we did not foresee: it masks URL passwords, ``password=`` values and
Authorization headers in every record, and each distinctive configured password wherever it appears
(``masking.Redactor``). A short or common-word password (``postgres``, ``a``) is not masked inside
ordinary text: that would garble every line and, by what it masks, announce the password.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from poolwatch.masking import Redactor

if TYPE_CHECKING:
    from collections.abc import Iterable


class RedactingFilter(logging.Filter):
    """Masks the formatted message and traceback of every record (``masking.Redactor``)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.redact = Redactor(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        """Mask these configured secrets from now on (a reload's, with the running ones)."""
        self.redact.update(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redact(message)
        if record.exc_info:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra`` fields."""

    _standard = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update({k: v for k, v in record.__dict__.items() if k not in self._standard})
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exception"] = record.exc_text
        return json.dumps(data, default=str)


def setup_logging(level: str = "INFO", fmt: str = "text", secrets: Iterable[str] = ()) -> RedactingFilter:
    """Send poolwatch's and the libraries' records to stderr, redacted; return the filter."""
    handler = logging.StreamHandler(sys.stderr)
    redactor = RedactingFilter(secrets)
    handler.addFilter(redactor)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    set_level_and_format(level, fmt)
    return redactor


def set_level_and_format(level: str, fmt: str) -> None:
    """Apply ``log.level`` and ``log.format`` to the output ``setup_logging`` made; the daemon calls
    it again on a SIGHUP reload. A record is formatted by one formatter, whichever another thread has
    just set, so no line is ever half text, half JSON."""
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    root = logging.getLogger()
    for handler in root.handlers:
        handler.setFormatter(formatter)
    root.setLevel(level)
    # APScheduler logs every run at INFO; its warnings (missed runs, max instances) are what matter.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.getLevelName(level)))
