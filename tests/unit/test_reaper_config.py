"""Census, reaper and audit settings: safe defaults and one-line refusals."""

from __future__ import annotations

import pytest

from poolwatch.config import validate
from poolwatch.errors import ConfigError


def target(**reaper: object) -> dict[str, object]:
    return {"name": "db", "kind": "postgres", "url": "postgresql://poolwatch@db:5432/app", "reaper": reaper}


def test_the_reaper_is_off_and_dry_run_by_default():
    settings = validate({"targets": [target()]})
    reaper = settings.targets[0].reaper
    assert (reaper.enabled, reaper.dry_run) == (False, True)


def test_an_enabled_reaper_needs_a_scope():
    with pytest.raises(ConfigError) as info:
        validate({"targets": [target(enabled=True, idle_timeout=60)]})
    assert "needs databases, users, applications or hosts" in str(info.value)
    assert "\n" not in str(info.value)


def test_an_enabled_reaper_needs_a_timeout():
    with pytest.raises(ConfigError, match="needs idle_timeout or idle_in_transaction_timeout"):
        validate({"targets": [target(enabled=True, applications=["web-*"])]})


def test_enforcing_needs_an_audit_database():
    with pytest.raises(ConfigError, match=r"targets\.db\.reaper: dry_run false needs audit\.url"):
        validate({"targets": [target(enabled=True, dry_run=False, idle_timeout=60, users=["web"])]})
    settings = validate(
        {
            "targets": [target(enabled=True, dry_run=False, idle_timeout=60, users=["web"])],
            "audit": {"url": "postgresql://audit:s3cret@db:5432/audit"},
        }
    )
    assert settings.audit.display_url() == "postgresql://audit:***@db:5432/audit"
    assert "s3cret" in settings.secrets()
    assert settings.audit.sqlalchemy_url().password == "s3cret"


def test_audit_table_name_is_an_identifier():
    with pytest.raises(ConfigError, match=r"audit\.table"):
        validate({"audit": {"table": "audit; DROP TABLE x"}})


def test_reaper_timeout_must_not_exceed_interval():
    with pytest.raises(ConfigError, match=r"timeout .* must not exceed interval"):
        validate({"targets": [target(interval=1, timeout=5)]})
