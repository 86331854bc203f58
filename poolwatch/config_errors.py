"""How a configuration that fails validation is reported: one line naming the key path, no secrets."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from poolwatch.masking import printable

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from poolwatch.schema import Issue, ValidationError


def describe_validation_error(
    exc: ValidationError, data: Mapping[str, Any], pattern_meanings: Mapping[str, str]
) -> str:
    """The first validation failure as ``key.path: what is expected (got ...)``.

    ``pattern_meanings`` says in words what a regular expression of the models accepts; a pattern not
    in it is shown as it is."""
    issues = exc.issues
    path = _key_path(issues[0].loc, data)
    message = _plain_message(issues[0], pattern_meanings)
    more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
    return f"{path}: {message}{more}" if path else f"{message}{more}"


def _key_path(loc: Sequence[int | str], data: Mapping[str, Any]) -> str:
    parts: list[str] = []
    node: Any = data
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1] if parts else ''}[{item}]"]
            node = node[item] if isinstance(node, list | tuple) and item < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str) and len(parts) == 1:
                parts[-1] += f"({printable(node['name'])[1:-1][:40]})"
            continue
        if "[" in item:  # a mapping key's own check ("[key]")
            continue
        parts.append(key_text(item))
        node = node.get(item) if isinstance(node, dict) else None
    return ".".join(parts)


def key_text(key: str) -> str:
    """A key as a key path shows it. A key is user text: quoted (so a newline in it cannot break the
    one line) unless plain."""
    return key if re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", key) else printable(key)


def _plain_message(issue: Issue, pattern_meanings: Mapping[str, str]) -> str:
    if issue.kind in {"unknown", "missing"}:
        return issue.message
    if issue.kind == "value":
        return issue.message[:1].lower() + issue.message[1:]
    message = issue.message
    if issue.kind == "pattern":
        message = f"expected {pattern_meanings.get(message, f'text matching {message}')}"
    return message + _got(issue.value)


def _got(value: Any) -> str:
    if isinstance(value, dict | list):
        return f" (got a {type(value).__name__})"
    return f" (got {printable(value)})"
