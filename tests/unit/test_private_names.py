"""Private names of the pool libraries are read in their adapters only: one module per library.

Two checks. The first needs no list: every attribute read ``x._name`` in poolwatch (``x`` not
``self`` or ``cls``) of a name poolwatch does not define itself is somebody else's private name, and
may appear only in an adapter module. The second catches the library names that poolwatch also uses
for its own attributes (``_pool``, ``_lock``, ``_connect``...), which the first cannot tell apart:
each library's private names, read as attributes, as strings (``getattr``, hooked method names) or
imported, appear in that library's adapter only. sqlalchemy_nullpool.py and redis_async.py are not
adapters: they import sqlalchemy.py's and redis.py's accessors.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "poolwatch"
INSTRUMENT = PACKAGE / "instrument"

# The one module per library where its private names are read.
ADAPTERS = {
    "sqlalchemy": INSTRUMENT / "sqlalchemy.py",
    "redis-py": INSTRUMENT / "redis.py",
    "psycopg_pool": INSTRUMENT / "psycopg_pool.py",
    "asyncpg": INSTRUMENT / "asyncpg.py",
    "psycopg2": INSTRUMENT / "psycopg2_pool.py",
    # The renderer's fast path reads prometheus_client's metric objects (exposition.py says how).
    "prometheus_client": PACKAGE / "exposition.py",
}

# Underscore names that are documented public API: namedtuple methods, SQLAlchemy's Row._mapping,
# os._exit.
PUBLIC = frozenset({"_replace", "_asdict", "_fields", "_make", "_mapping", "_exit"})

# Each library's private (or undocumented) names poolwatch reads, for the second check. ``_lock`` is
# left out: poolwatch's own objects have one too, read across its modules.
LIBRARY_PRIVATE = {
    "sqlalchemy": frozenset(
        {
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
        }
    ),
    "redis-py": frozenset(
        {
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
        }
    ),
    "psycopg_pool": frozenset(
        {
            "_connect",
            "_stats",
            "_REQUESTS_NUM",
            "_check_open_getconn",
            "_getconn_with_check_loop",
            "_check_pool_putconn",
            "_maybe_close_connection",
            "_putconn",
        }
    ),
    "asyncpg": frozenset({"_holders", "_queue", "_pool", "_connect", "_connect_args", "_connect_kwargs"}),
    "psycopg2": frozenset({"_used", "_pool", "_getconn", "_putconn", "_connect", "_args", "_kwargs"}),
}


def sources() -> dict[Path, ast.Module]:
    return {path: _parsed(path) for path in sorted(PACKAGE.rglob("*.py"))}


@cache
def _parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def own_names(trees: dict[Path, ast.Module]) -> set[str]:
    """Every name poolwatch defines: functions, classes, assigned names and attributes, parameters."""
    own: set[str] = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del)):
                own.add(node.attr)
            elif isinstance(node, ast.arg):
                own.add(node.arg)
    return own


def _on_self(node: ast.Attribute) -> bool:
    return isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")


def foreign_private_reads(tree: ast.Module, own: set[str]) -> list[tuple[int, str]]:
    """(line, name) of each read ``x._name`` of a private name poolwatch does not define."""
    return [
        (node.lineno, node.attr)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.ctx, ast.Load)
        and node.attr.startswith("_")
        and not (node.attr.startswith("__") and node.attr.endswith("__"))
        and node.attr not in own
        and node.attr not in PUBLIC
        and not _on_self(node)
    ]


def listed_reads(tree: ast.Module, names: frozenset[str]) -> list[tuple[int, str]]:
    """(line, name) of each of ``names`` read as an attribute (not on self/cls), a string or an import."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in names and not _on_self(node):
            found.append((node.lineno, node.attr))
        elif isinstance(node, ast.Constant) and node.value in names:
            found.append((node.lineno, str(node.value)))
        elif isinstance(node, ast.ImportFrom):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name in names]
    return found


def test_private_names_of_other_libraries_are_read_in_the_adapters_only() -> None:
    trees = sources()
    own = own_names(trees)
    adapters = set(ADAPTERS.values())
    outside = {
        str(path.relative_to(PACKAGE.parent)): reads
        for path, tree in trees.items()
        if path not in adapters and (reads := foreign_private_reads(tree, own))
    }
    assert outside == {}


def test_each_librarys_private_names_are_read_in_its_own_adapter_only() -> None:
    trees = sources()
    elsewhere = {}
    for library, names in LIBRARY_PRIVATE.items():
        for path, tree in trees.items():
            # A name two libraries share (``_pool``, ``_connect``) is each one's in its own adapter.
            allowed = {
                name
                for other, names_ in LIBRARY_PRIVATE.items()
                if ADAPTERS[other] == path
                for name in names_
            }
            reads = [(line, name) for line, name in listed_reads(tree, names) if name not in allowed]
            if reads and path != ADAPTERS[library]:
                elsewhere[f"{library} in {path.relative_to(PACKAGE.parent)}"] = reads
    assert elsewhere == {}


def test_the_checks_see_what_the_adapters_read() -> None:
    # Neither check is vacuous: the adapters do read these names, and the first check finds them.
    trees = sources()
    own = own_names(trees)
    sqlalchemy = trees[ADAPTERS["sqlalchemy"]]
    redis = trees[ADAPTERS["redis-py"]]
    assert {"_do_return_conn", "_inc_overflow"} <= {
        name for _, name in foreign_private_reads(sqlalchemy, own)
    }
    assert {"_available_connections"} <= {name for _, name in foreign_private_reads(redis, own)}
    read = {
        name
        for library, path in ADAPTERS.items()
        if library in LIBRARY_PRIVATE
        for _, name in listed_reads(trees[path], LIBRARY_PRIVATE[library])
    }
    assert {"_connection_record", "last_connect_time", "_return_conn", "_sock", "_connect", "_used"} <= read


def test_a_private_read_outside_an_adapter_is_found() -> None:
    own = own_names(sources())
    tree = ast.parse("def f(pool):\n    return pool._overflow_count, pool._connection_record\n")
    assert foreign_private_reads(tree, own) == [(2, "_overflow_count"), (2, "_connection_record")]
    assert listed_reads(tree, LIBRARY_PRIVATE["sqlalchemy"]) == [(2, "_connection_record")]
    hooked = ast.parse('hooks("connect", "_return_conn")\n')
    assert listed_reads(hooked, LIBRARY_PRIVATE["sqlalchemy"]) == [(1, "_return_conn")]
