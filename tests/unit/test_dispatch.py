"""poolwatch.instrument() picks the adapter from the object's class, names what it supports, and
its table of classes matches the installed libraries."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap

import pytest
from prometheus_client import CollectorRegistry

import poolwatch
from poolwatch.instrument import dispatch


@pytest.mark.parametrize(("module", "qualname"), sorted(dispatch._KINDS))
def test_every_class_in_the_table_exists_where_the_table_says(module, qualname) -> None:
    cls = getattr(importlib.import_module(module), qualname)
    assert (cls.__module__, cls.__qualname__) == (module, qualname)
    adapter_module, function = dispatch._KINDS[module, qualname]
    assert callable(getattr(importlib.import_module(adapter_module), function))


@pytest.mark.parametrize("thing", [object(), "postgresql://db", 42, CollectorRegistry()])
def test_an_unsupported_object_is_a_type_error_listing_what_is_supported(thing) -> None:
    with pytest.raises(TypeError) as caught:
        poolwatch.instrument(thing, name="x", registry=CollectorRegistry())
    message = str(caught.value)
    assert "\n" not in message
    for supported in (
        "Engine",
        "AsyncEngine",
        "psycopg_pool.ConnectionPool",
        "asyncpg.Pool",
        "psycopg2.pool",
    ):
        assert supported in message


def test_subclasses_are_recognised_by_their_library_base() -> None:
    import psycopg2.pool
    import redis

    class MyPool(psycopg2.pool.ThreadedConnectionPool):  # type: ignore[misc]
        pass

    class MyRedis(redis.Redis):
        pass

    assert dispatch.adapter_of(MyPool.__new__(MyPool)) == (
        "poolwatch.instrument.psycopg2_pool",
        "instrument_psycopg2_pool",
    )
    assert dispatch.adapter_of(MyRedis.__new__(MyRedis)) == ("poolwatch.instrument.redis", "instrument_redis")


def test_finding_the_kind_imports_no_pool_library() -> None:
    script = textwrap.dedent(
        """
        import json, sys
        import poolwatch
        try:
            poolwatch.instrument(object(), name="x")
        except TypeError:
            pass
        print(json.dumps(sorted(sys.modules)))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    loaded = {name.partition(".")[0] for name in json.loads(done.stdout)}
    assert loaded.isdisjoint({"sqlalchemy", "redis", "psycopg", "psycopg_pool", "psycopg2", "asyncpg"})


@pytest.mark.parametrize(
    ("setup", "library"),
    [
        (
            "import psycopg2.pool\npool = psycopg2.pool.ThreadedConnectionPool(0, 1, 'dbname=none')",
            "psycopg2",
        ),
        ("import asyncpg\npool = asyncpg.create_pool('postgresql://none', min_size=0)", "asyncpg"),
        (
            "import psycopg_pool\npool = psycopg_pool.ConnectionPool('dbname=none', open=False)",
            "psycopg_pool",
        ),
    ],
)
def test_instrumenting_one_kind_imports_no_other_pool_library(setup, library) -> None:
    # No server: none of these pools connects before it is used (the asyncpg one is not awaited,
    # which instrument() refuses, after its adapter was imported).
    script = setup + textwrap.dedent(
        """
        import json, sys
        from prometheus_client import CollectorRegistry
        import poolwatch
        try:
            poolwatch.instrument(pool, name="x", registry=CollectorRegistry())
        except (TypeError, ValueError):
            pass
        print(json.dumps(sorted(sys.modules)))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    modules = json.loads(done.stdout)
    assert any(name.startswith(f"poolwatch.instrument.{library}") for name in modules)  # its adapter
    loaded = {name.partition(".")[0] for name in modules}
    others = {"redis", "psycopg", "psycopg_pool", "psycopg2", "asyncpg"} - {library}
    if library == "psycopg_pool":
        others.discard("psycopg")  # psycopg_pool is built on psycopg
    assert loaded.isdisjoint(others), loaded & others
