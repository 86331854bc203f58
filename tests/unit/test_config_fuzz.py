"""Property-based fuzzing of the configuration loader: whatever the YAML or the environment holds,
``validate`` / ``load_settings`` return ``Settings`` or raise ``ConfigError`` with a one-line message
that does not contain a password planted in the input. Nothing else escapes."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poolwatch.config import (
    AuditSettings,
    CensusSettings,
    HttpSettings,
    PoolSettings,
    ProbeSettings,
    ReaperSettings,
    Settings,
    TargetSettings,
    load_settings,
    validate,
)
from poolwatch.errors import ConfigError

PLANTED = "fuzzPW9x"
_FILES = Path(tempfile.mkdtemp(prefix="poolwatch-fuzz-"))
(_FILES / "good").write_text("a-password\n")
(_FILES / "empty").write_text("")
(_FILES / "binary").write_bytes(b"\xff\xfe")
# Only these paths: a fuzzer-made path could name /dev/zero, and reading it never ends.
SAFE_PATHS = [str(_FILES / name) for name in ("good", "empty", "binary", "absent")] + [str(_FILES)]

FIELD_NAMES = sorted(
    {
        name
        for model in (
            Settings,
            HttpSettings,
            TargetSettings,
            PoolSettings,
            ProbeSettings,
            CensusSettings,
            ReaperSettings,
            AuditSettings,
        )
        for name in model.model_fields
    }
    - {"password_file", "source"}  # source: set by load_settings (a file may not), never a secret
)
URLS = [
    f"postgresql+psycopg2://app:{PLANTED}@db:5432/app",
    f"postgresql://app:{PLANTED}@db:99999/app",
    f"redis://:{PLANTED}@cache:6379/0",
    f"redis://:{PLANTED}@cache:x/0",
    f"rediss://u:{PLANTED}@[::1]:6379/1",
    f"sqlite:///{_FILES}/db.sqlite",
    "unix:///tmp/redis.sock",
    f"mysql://root:{PLANTED}@h/d",
    "postgresql://",
    "://",
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=24)
    | st.sampled_from(["postgres", "redis", "sqlite", "127.0.0.1:0", "[::1]:80", ":0", "INFO", "json", *URLS])
)
keys = st.sampled_from(FIELD_NAMES) | st.text(max_size=10)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=4),
    max_leaves=16,
)
sections = st.dictionaries(st.sampled_from(FIELD_NAMES), values, max_size=5)
targets = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["a", "b", "orders", "x y", ""]) | scalars,
        "kind": st.sampled_from(["postgres", "redis", "sqlite", "mysql"]) | scalars,
        "url": st.sampled_from(URLS) | scalars,
    },
    optional={
        "pool": sections | values,
        "probe": sections | values,
        "census": sections,
        "reaper": sections,
        "password_file": st.sampled_from(SAFE_PATHS),
        "password": st.just(PLANTED) | scalars,
    },
)
configs = st.fixed_dictionaries(
    {},
    optional={
        "http": sections | values,
        "log": sections | values,
        "targets": st.lists(targets | values, max_size=3) | values,
        "audit": st.fixed_dictionaries(
            {}, optional={"url": st.sampled_from(URLS), "password_file": st.sampled_from(SAFE_PATHS)}
        )
        | sections,
    },
) | st.dictionaries(keys, values, max_size=4)

ENV_NAMES = [
    "POOLWATCH_LISTEN",
    "POOLWATCH_LOG_LEVEL",
    "POOLWATCH_STATE_DIR",
    "DATABASE_URL",
    "REDIS_URL",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_HOST",
    "POSTGRES_PORT",
    "POSTGRES_DB",
]
env_text = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=30)
# A planted password goes only where a password belongs (and into POOLWATCH_LISTEN, a plausible slip):
# a URL given as POSTGRES_USER is a strange user name, not a secret, and is shown as such.
SECRET_CARRIERS = {"DATABASE_URL", "REDIS_URL", "POSTGRES_PASSWORD", "POOLWATCH_LISTEN"}
environments = st.fixed_dictionaries(
    {},
    optional={
        name: env_text | st.sampled_from([*URLS, PLANTED] if name == "POSTGRES_PASSWORD" else URLS)
        if name in SECRET_CARRIERS
        else env_text
        for name in ENV_NAMES
    },
)


def _check(call: Any) -> None:
    try:
        result = call()
    except ConfigError as exc:
        message = str(exc)
        assert message
        assert "\n" not in message, repr(message)
        assert "\r" not in message, repr(message)
        assert PLANTED not in message, message
        return
    assert isinstance(result, Settings)
    assert PLANTED not in repr(result)
    assert PLANTED not in str(result.public_dict())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_validate_returns_settings_or_one_line_config_error(config: dict[str, Any]) -> None:
    _check(lambda: validate(config))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(environments)
def test_load_settings_from_any_environment(environ: dict[str, str]) -> None:
    environ = {**environ, "POOLWATCH_STATE_DIR": str(_FILES)}
    _check(lambda: load_settings(environ=environ))
