"""Reading the files a configuration names: the YAML file and password files, bounded and strict.

A file is read with a size cap (1 MiB for the configuration, 64 KiB for a password), so ``/dev/zero``
or a runaway file cannot hang start-up or eat memory; devices, sockets and directories are refused
(a pipe, as in ``--config <(...)``, is read). YAML is composed with a depth limit (a nesting bomb
would end in a ``RecursionError`` thousands of lines long) and a budget of values that counts every
alias expansion (an alias bomb would take minutes to validate); a key given twice in one mapping is
an error naming its key path, where PyYAML keeps the last one silently.
"""

from __future__ import annotations

import os
import stat
from typing import Any, Final

import yaml

from poolwatch.config_errors import key_text
from poolwatch.errors import ConfigError

MAX_CONFIG_BYTES: Final = 1 << 20
MAX_PASSWORD_BYTES: Final = 64 << 10
MAX_DEPTH: Final = 64
MAX_VALUES: Final = 100_000
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"


class UnreadableFileError(Exception):
    """A file that cannot be read, or is not: the message says why, as in "<file> is a directory"."""


def read_text(path: str, limit: int) -> str:
    """The UTF-8 text of ``path``, at most ``limit`` bytes of it; ``UnreadableFileError`` for a file
    that is missing, unreadable, larger, not text, or neither a regular file nor a pipe."""
    try:
        return read_bounded(path, limit).decode("utf-8")
    except FileNotFoundError:
        reason = "does not exist"
    except IsADirectoryError:
        reason = "is a directory"
    except PermissionError:
        reason = "is not readable (permission denied)"
    except UnicodeDecodeError:
        reason = "is not UTF-8 text"
    except OSError as exc:
        reason = f"cannot be read ({exc.strerror or type(exc).__name__})"
    raise UnreadableFileError(reason)


def read_bounded(path: str, limit: int) -> bytes:
    """The bytes of ``path``, at most ``limit``. ``UnreadableFileError`` for a larger file or one that
    is neither a regular file nor a pipe; ``OSError`` (not found, permission denied, ...) passes."""
    # O_NONBLOCK: opening a FIFO nobody writes to must not block; the mode is checked on the open
    # descriptor (not the path), so the file checked is the file read.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(path)
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            raise UnreadableFileError(f"is not a regular file ({_file_type(mode)})")
        os.set_blocking(fd, True)  # a pipe's writer may not have written yet
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 16, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise UnreadableFileError(f"is larger than {_size(limit)}, the limit for this file")
    return b"".join(chunks)


def read_yaml(path: str) -> dict[str, Any]:
    """The top-level mapping of a YAML configuration file; any problem is one ConfigError line."""
    try:
        text = read_text(path, MAX_CONFIG_BYTES)
    except UnreadableFileError as exc:
        raise ConfigError(f"{path}: the configuration file {exc}") from None
    data = load_text(path, text)
    if data is None:
        raise ConfigError(f"{path}: the configuration file is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def read_password_file(path: str) -> str:
    """The password in ``path`` without its trailing newline; a problem is a ``ValueError`` (the
    validation names the key path)."""
    try:
        password = read_text(path, MAX_PASSWORD_BYTES).rstrip("\r\n")
    except UnreadableFileError as exc:
        raise ValueError(f"password_file {path} {exc}") from None
    if not password:
        raise ValueError(f"password_file {path} is empty")
    return password


class _DepthLimitedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing to compose nodes nested deeper than ``MAX_DEPTH``."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        # The composer recurses once per level (twice the frames), so the limit is checked on the
        # way down, before Python's own recursion limit is near.
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise yaml.MarkedYAMLError(
                    problem=f"nested deeper than {MAX_DEPTH} levels", problem_mark=mark
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def load_text(path: str, text: str) -> Any:
    """The YAML (or JSON) document in ``text``, read from ``path``, with the limits above."""
    try:
        loader = _DepthLimitedLoader(text)  # reading starts here: it refuses control characters
        try:
            root = loader.get_single_node()
            if root is None:
                return None
            _check_nodes(path, root)
            return loader.construct_document(root)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid syntax"
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None


def _check_nodes(path: str, root: yaml.Node) -> None:
    """Refuse a key given twice in one mapping, and a document that expands (through aliases) to
    more than ``MAX_VALUES`` values or ``MAX_DEPTH`` levels. Iterative: the tree may be deep."""
    pending: list[tuple[yaml.Node, str, int]] = [(root, "", 1)]
    count = 0
    while pending:
        node, where, depth = pending.pop()
        count += 1
        if count > MAX_VALUES or depth > MAX_DEPTH:
            limit = f"{MAX_VALUES} values" if count > MAX_VALUES else f"{MAX_DEPTH} levels"
            raise ConfigError(f"{path}: expands to more than {limit} (counting each alias use)")
        if isinstance(node, yaml.SequenceNode):
            pending.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            pending.extend(_children(path, node, where, depth))


def _children(path: str, node: yaml.MappingNode, where: str, depth: int) -> list[tuple[yaml.Node, str, int]]:
    children: list[tuple[yaml.Node, str, int]] = []
    seen: set[tuple[str, str]] = set()
    for key, value in node.value:
        if key.tag == _MERGE_TAG:  # "<<: *defaults": the merged mapping's keys may be overridden
            children.append((value, where, depth))
            continue
        name = key_text(str(key.value)) if isinstance(key, yaml.ScalarNode) else "<complex key>"
        child = f"{where}.{name}" if where else name
        if isinstance(key, yaml.ScalarNode):
            if (key.tag, key.value) in seen:
                line = key.start_mark.line + 1
                raise ConfigError(
                    f"{path}: duplicate key {child} at line {line} (each key may be given once)"
                )
            seen.add((key.tag, key.value))
        children.append((value, child, depth + 1))
    return children


def _size(limit: int) -> str:
    return f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit >> 10} KiB"


def _file_type(mode: int) -> str:
    for test, name in (
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a file"
