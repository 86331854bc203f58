"""Library mode loads nothing only the daemon needs; the command says in one line what is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

DAEMON_ONLY = ("apscheduler", "yaml", "bcrypt", "psycopg2")


def modules_after(code: str, env: dict[str, str] | None = None) -> set[str]:
    """Every module loaded by a fresh interpreter after running ``code``."""
    script = textwrap.dedent(code) + "\nimport json, sys; print(json.dumps(sorted(sys.modules)))"
    environ = {k: v for k, v in os.environ.items() if k.upper() != "PROMETHEUS_MULTIPROC_DIR"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={**environ, **(env or {})},
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def loaded_after(code: str) -> set[str]:
    """Top-level modules loaded by a fresh interpreter after running ``code``."""
    return {name.partition(".")[0] for name in modules_after(code)}


INSTRUMENT_AND_CHECK_OUT = """
    import sqlalchemy
    import poolwatch
    from prometheus_client import CollectorRegistry
    engine = sqlalchemy.create_engine("sqlite://", poolclass=sqlalchemy.pool.QueuePool)
    poolwatch.instrument(engine, name="app", registry=CollectorRegistry(), leak_threshold=30)
    with engine.connect():
        pass
"""
# What import poolwatch + instrument(engine) load of poolwatch, and nothing more: each module is
# import time a worker pays. Multi-process export, masking (the daemon's error lines) and a URL's
# server label parts other adapters need are not among them.
LIBRARY_MODULES = {
    "poolwatch",
    "poolwatch._version",
    "poolwatch.errors",
    "poolwatch.instrument",
    "poolwatch.instrument.collector",
    "poolwatch.instrument.dispatch",
    "poolwatch.instrument.holder",
    "poolwatch.instrument.recorder",
    "poolwatch.instrument.sqlalchemy",
    "poolwatch.metrics",
    "poolwatch.serverlabel",
}


def test_import_and_instrument_load_no_daemon_module_and_no_redis() -> None:
    loaded = loaded_after(
        """
        import sqlalchemy
        import poolwatch
        from prometheus_client import CollectorRegistry
        engine = sqlalchemy.create_engine("sqlite://", poolclass=sqlalchemy.pool.QueuePool)
        poolwatch.instrument(engine, name="app", registry=CollectorRegistry(), leak_threshold=30)
        with engine.connect():
            pass
        """
    )
    assert loaded.isdisjoint((*DAEMON_ONLY, "redis")), sorted(loaded & {*DAEMON_ONLY, "redis"})
    assert "poolwatch" in loaded


def test_import_and_instrument_load_these_poolwatch_modules_only() -> None:
    loaded = {name for name in modules_after(INSTRUMENT_AND_CHECK_OUT) if name.startswith("poolwatch")}
    assert loaded == LIBRARY_MODULES, sorted(loaded ^ LIBRARY_MODULES)


def test_import_poolwatch_alone_loads_only_its_version() -> None:
    loaded = {name for name in modules_after("import poolwatch") if name.startswith("poolwatch")}
    assert loaded == {"poolwatch", "poolwatch._version"}


def test_multiprocess_export_loads_only_with_its_directory_set(tmp_path: Path) -> None:
    multiprocess = {"poolwatch.instrument.multiprocess", "poolwatch.instrument.slots"}
    assert modules_after(INSTRUMENT_AND_CHECK_OUT).isdisjoint(multiprocess)
    with_directory = modules_after(INSTRUMENT_AND_CHECK_OUT, {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert multiprocess <= with_directory
    assert any(path.name.startswith("counter_poolwatch-") for path in tmp_path.iterdir())


def test_instrument_stays_the_function_when_its_subpackage_is_imported() -> None:
    loaded = loaded_after(
        """
        import poolwatch.instrument.sqlalchemy
        import poolwatch
        assert callable(poolwatch.instrument), poolwatch.instrument
        from poolwatch import instrument
        assert instrument is poolwatch.instrument
        """
    )
    assert "sqlalchemy" in loaded


def test_instrument_redis_loads_redis_and_still_no_daemon_module() -> None:
    loaded = loaded_after(
        """
        import redis
        import poolwatch
        from prometheus_client import CollectorRegistry
        poolwatch.instrument_redis(redis.Redis(), name="cache", registry=CollectorRegistry())
        """
    )
    assert loaded.isdisjoint(DAEMON_ONLY), sorted(loaded & set(DAEMON_ONLY))


def test_instrumenting_a_psycopg_pool_loads_neither_sqlalchemy_nor_redis() -> None:
    loaded = loaded_after(
        """
        import psycopg_pool
        import poolwatch
        from prometheus_client import CollectorRegistry
        pool = psycopg_pool.ConnectionPool("dbname=none", min_size=0, max_size=1, open=False)
        poolwatch.instrument(pool, name="pp", registry=CollectorRegistry())
        """
    )
    assert loaded.isdisjoint((*DAEMON_ONLY, "redis", "sqlalchemy", "asyncpg")), sorted(loaded)
    assert "psycopg_pool" in loaded


def test_version_loads_no_daemon_module() -> None:
    loaded = loaded_after(
        """
        import sys
        from poolwatch.launcher import main
        assert main(["--version"]) == 0
        """
    )
    assert loaded.isdisjoint((*DAEMON_ONLY, "redis", "sqlalchemy", "prometheus_client"))


def test_a_missing_daemon_dependency_is_one_line_naming_the_install() -> None:
    blocker = """
        import sys
        class Missing:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] == "yaml":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, Missing())
        from poolwatch.launcher import main
        sys.exit(main(["config"]))
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(blocker)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert done.stderr == (
        "poolwatch: the daemon needs yaml, which is not installed: pip install 'poolwatch[daemon]'\n"
    )


def test_a_lazy_name_whose_dependency_is_missing_says_what_to_install() -> None:
    script = """
        import sys
        class Missing:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] == "yaml":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, Missing())
        import poolwatch
        try:
            poolwatch.Database
        except ModuleNotFoundError as exc:
            print(exc)
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, check=False
    )
    assert done.stdout.strip() == (
        "poolwatch.Database needs yaml, which is not installed: pip install 'poolwatch[daemon]'"
    )
