"""Private names of SQLAlchemy and redis-py are read in their adapters only (one place per library)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "poolwatch"
ADAPTERS = {
    PACKAGE / "instrument" / f"{name}.py"
    for name in (
        "sqlalchemy",
        "sqlalchemy_nullpool",
        "redis",
        "redis_async",
        "psycopg_pool",
        "asyncpg",
        "psycopg2_pool",
    )
}

# Every private (or undocumented) name of either library poolwatch reads, in the adapters.
LIBRARY_PRIVATE = frozenset(
    {
        # SQLAlchemy
        "_pool",
        "_max_overflow",
        "_recycle",
        "_invalidate_time",
        "_inc_overflow",
        "_dec_overflow",
        "_create_connection",
        "_do_return_conn",
        "_return_conn",
        "_dialect",
        "_connection_record",
        "last_connect_time",
        "starttime",
        "_ConnectionFairy",
        "_ConnectionRecord",
        "_checkout",
        # redis-py
        "_available_connections",
        "_in_use_connections",
        "_get_free_connections",
        "_get_in_use_connections",
        "_sock",
        "_connect",
        "_connect_callbacks",
        "_register_connect_callback",
        "on_connect_check_health",
        "_created_connections",
        "_connections",
        "_checkpid",
        # asyncpg, psycopg2.pool
        "_holders",
        "_queue",
        "_used",
    }
)


def private_reads(path: Path) -> list[tuple[int, str]]:
    """(line, name) of each library-private name read in ``path``: attributes not on self/cls, and
    strings (getattr, vars() keys)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in LIBRARY_PRIVATE:
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                found.append((node.lineno, node.attr))
        elif isinstance(node, ast.Constant) and node.value in LIBRARY_PRIVATE:
            found.append((node.lineno, str(node.value)))
        elif isinstance(node, ast.alias) and node.name in LIBRARY_PRIVATE:
            found.append((0, node.name))
    return found


def test_library_private_names_appear_only_in_the_adapters() -> None:
    outside = {
        str(path.relative_to(PACKAGE.parent)): reads
        for path in sorted(PACKAGE.rglob("*.py"))
        if path not in ADAPTERS and (reads := private_reads(path))
    }
    assert outside == {}


def test_the_adapters_read_what_the_list_names() -> None:
    # The list is not stale: the adapters do read these names (a check on the check above).
    read = {name for path in ADAPTERS for _, name in private_reads(path)}
    assert {"_connection_record", "last_connect_time", "_do_return_conn", "_sock", "_connect"} <= read
