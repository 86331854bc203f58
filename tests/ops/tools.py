"""Paths of the repository's ops files, and the external tools the ops tests run."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules" / "poolwatch.rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "tests" / "poolwatch.rules.test.yml"
SCRAPE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "grafana" / "dashboards" / "poolwatch.json"


def tool(name: str, installed_by: str) -> str:
    """The path of a required tool; a missing one fails the test (scripts/test installs it)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} not found: run scripts/test, which installs {installed_by}")
    return found


def load_yaml(path: Path) -> object:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alerts(rules: object) -> list[dict[str, object]]:
    assert isinstance(rules, dict)
    return [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


def rules(loaded: object) -> list[dict[str, object]]:
    """Every rule of every group: alerts and recording rules."""
    assert isinstance(loaded, dict)
    return [rule for group in loaded["groups"] for rule in group["rules"]]
