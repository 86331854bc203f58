"""Paths of the repository's ops files, and the external tools the ops tests run."""

from __future__ import annotations

import re
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
README = ROOT / "README.md"


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


def readme_anchors() -> set[str]:
    """GitHub's anchors for the README's headings."""
    return markdown_anchors(README)


def markdown_anchors(path: Path) -> set[str]:
    """GitHub's anchors for a Markdown file's headings: lower case, punctuation dropped, spaces to '-'."""
    anchors = set()
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        match = None if in_code else re.match(r"#{1,6}\s+(.*)", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors
