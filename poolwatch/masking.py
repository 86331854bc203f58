"""Secret masking: passwords out of URLs, and masks where secrets occur in text (imports no poolwatch).

Text is masked where a secret can stand: the password of a URL (``scheme://user:***@host``), the value
of a ``password=`` / ``password:`` style pair (DSNs, dict reprs, settings), and the credentials of an
``Authorization`` header. A configured password is masked anywhere only when it is distinctive
(``distinctive``): masking every ``postgres`` or every ``a`` in a log would garble it and, by what it
masks, announce the password.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, unquote, urlsplit, urlunsplit

if TYPE_CHECKING:
    from collections.abc import Iterable

MASK: Final = "***"
_SHOWN_CHARS: Final = 60  # of a rejected value, in an error line
# A password this long, or this long and mixing letters, digits or other characters, is not a word.
_DISTINCTIVE_ANY: Final = 16
_DISTINCTIVE_MIXED: Final = 6

# scheme://user:PASSWORD@host: the password runs to the last "@" before a space or "/", as urlsplit()
# reads the netloc (a raw "@" or quote may be in it; masking too much leaks nothing).
_URL_PASSWORD: Final = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\"]*:)[^\s/]*(?=@)")
_SENSITIVE_KEYS: Final = (
    r"password|passwd|pwd|secret|client_secret|token|access_token|refresh_token|api_?key|"
    r"access_?key|secret_?key|private_?key|requirepass|masterauth|credentials?"
)
# key=value, key: value, 'key': 'value', "key"="value"; the value quoted (to its closing quote) or
# bare (to a space, comma, semicolon, ampersand or closing bracket).
_PAIR: Final = re.compile(
    rf"(?P<head>(?<![A-Za-z0-9_])(?P<q>['\"]?)(?:{_SENSITIVE_KEYS})(?P=q)\s*[:=]\s*)"
    r"(?P<value>'[^']*'|\"[^\"]*\"|[^\s,;&)\]}'\"]+)",
    re.IGNORECASE,
)
# Authorization: Basic dXNlcjpwYXNz / Bearer eyJ... (and Proxy-Authorization): the credentials.
_AUTH_HEADER: Final = re.compile(
    r"(?P<head>(?<![A-Za-z0-9_])(?:proxy-)?authorization['\"]?\s*[:=]\s*['\"]?(?:[A-Za-z][\w-]*\s+)?)"
    r"[^\s,;'\"]+",
    re.IGNORECASE,
)


def split_password(url: str) -> tuple[str, str | None]:
    """``scheme://user:pw@host/db`` -> (``scheme://user@host/db``, ``pw``). Percent-escapes kept."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url, None
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, sep, password = userinfo.partition(":")
    if not sep:
        return url, None
    netloc = f"{user}@{hostport}" if user else hostport
    return urlunsplit(parts._replace(netloc=netloc)), unquote(password)


def mask_url(url: str, has_password: bool) -> str:
    """The URL with ``***`` standing for its password (or for any password left in it)."""
    bare, _ = split_password(url)
    if not has_password:
        return bare
    parts = urlsplit(bare)
    user, at, hostport = parts.netloc.rpartition("@")
    netloc = f"{user}:{MASK}@{hostport}" if at else f":{MASK}@{parts.netloc}"
    return urlunsplit(parts._replace(netloc=netloc))


def printable(value: Any) -> str:
    """A rejected value as an error line may show it: its repr, masked, at most 60 characters."""
    if isinstance(value, str) and split_password(value)[1] is not None:
        value = mask_url(value, has_password=True)
    text = mask_text(repr(value))
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def mask_text(text: str) -> str:
    """``text`` with every URL password, secret key/value and Authorization header replaced by
    ``***``: the places a secret can stand, whoever's secret it is."""
    if "://" in text:
        text = _URL_PASSWORD.sub(rf"\g<head>{MASK}", text)
    text = _PAIR.sub(_mask_value, text)
    return _AUTH_HEADER.sub(rf"\g<head>{MASK}", text)


def _mask_value(match: re.Match[str]) -> str:
    value = match["value"]
    quote_mark = value[0] if value[0] in "'\"" else ""
    return f"{match['head']}{quote_mark}{MASK}{quote_mark}"


def distinctive(secret: str) -> bool:
    """Whether ``secret`` can be masked wherever it appears without masking ordinary text: at least
    16 characters, or at least 6 mixing letters, digits and other characters. ``postgres``, ``a``,
    ``redis`` and ``123456`` are not (they are masked where passwords stand, by ``mask_text``)."""
    if len(secret) >= _DISTINCTIVE_ANY:
        return True
    classes = {"letter" if c.isalpha() else "digit" if c.isdigit() else "other" for c in secret}
    return len(secret) >= _DISTINCTIVE_MIXED and len(classes) > 1


class Redactor:
    """Masks text for output: ``mask_text``, then each distinctive configured secret (and its
    URL-quoted forms) wherever it appears. ``update()`` swaps the secrets in one assignment, so a
    thread redacting meanwhile sees the old set or the new one, never a mix."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets: tuple[str, ...] = ()
        self.update(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        forms = {
            form
            for secret in secrets
            if secret and distinctive(secret)
            for form in (secret, quote(secret, safe=""), quote(secret))
        }
        # Longest first, so a secret that contains another is replaced whole.
        self.secrets = tuple(sorted(forms, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        text = mask_text(text)
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text
