"""The alert rules: valid for promtool, unit-tested both ways, documented, on exported metrics."""

from __future__ import annotations

import subprocess

import yaml

from tests.ops.exported import PROMETHEUS_SERIES, exported_names
from tests.ops.promql import metric_names
from tests.ops.tools import (
    ROOT,
    RULE_TESTS,
    RULES,
    SCRAPE_CONFIG,
    alerts,
    load_yaml,
    rules,
    tool,
)

SEVERITIES = {"critical", "warning", "info"}
EXPECTED_ALERTS = {
    "PoolwatchPoolExhausted",
    "PoolwatchPoolSaturated",
    "PoolwatchPoolCheckoutSlow",
    "PoolwatchPoolConnectErrors",
    "PoolwatchConnectionLeak",
    "PoolwatchTargetDown",
    "PoolwatchStaleData",
    "PoolwatchServerConnectionsNearMax",
    "PoolwatchReaperErrors",
    "PoolwatchReaperTerminations",
    "PoolwatchNotScraped",
    "PoolwatchPgbouncerClientsWaiting",
    "PoolwatchPgbouncerMaxWaitHigh",
    "PoolwatchIdleTransactionOld",
    "PoolwatchFleetCanExhaustServer",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool", "the Debian prometheus package"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_promtool_check_rules_accepts_the_rules_file():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    recorded = [rule for rule in rules(load_yaml(RULES)) if "record" in rule]
    assert f"SUCCESS: {len(EXPECTED_ALERTS) + len(recorded)} rules found" in result.stdout


def test_promtool_unit_tests_pass():
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_catch_a_changed_threshold(tmp_path):
    # The unit tests bite: raising the saturation threshold above 100% breaks its firing case.
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    text = RULES.read_text(encoding="utf-8")
    assert text.count("> 0.9\n") == 1
    (tmp_path / "rules" / RULES.name).write_text(text.replace("> 0.9\n", "> 1.5\n"))
    (tmp_path / "tests" / RULE_TESTS.name).write_text(RULE_TESTS.read_text(encoding="utf-8"))
    result = promtool("test", "rules", str(tmp_path / "tests" / RULE_TESTS.name))
    assert result.returncode != 0
    assert "PoolwatchPoolSaturated" in result.stdout + result.stderr


def test_every_alert_is_unit_tested_firing_and_not_firing():
    tests = load_yaml(RULE_TESTS)
    assert isinstance(tests, dict)
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts(load_yaml(RULES))}
    assert names == EXPECTED_ALERTS
    assert names - firing == set(), "alerts without a firing test"
    assert names - quiet == set(), "alerts without a non-firing test"


def test_every_alert_has_severity_summary_description_and_a_runbook_url():
    for rule in alerts(load_yaml(RULES)):
        name = rule["alert"]
        assert isinstance(name, str)
        labels, annotations = rule["labels"], rule["annotations"]
        assert isinstance(labels, dict)
        assert isinstance(annotations, dict)
        assert labels["severity"] in SEVERITIES, name
        assert annotations["summary"], name
        assert annotations["description"], name
        assert annotations["runbook_url"], name


def test_rules_use_only_metrics_poolwatch_exports_or_records():
    recorded = {rule["record"] for rule in rules(load_yaml(RULES)) if "record" in rule}
    assert recorded, "the fleet headroom rules record their series"
    exported = exported_names() | PROMETHEUS_SERIES | recorded
    for rule in rules(load_yaml(RULES)):
        name = rule.get("alert", rule.get("record"))
        expr = rule["expr"]
        assert isinstance(expr, str)
        used = metric_names(expr)
        assert used, name
        assert used <= exported, f"{name}: not exported: {sorted(used - exported)}"
        if "record" in rule:  # recorded from poolwatch's own series only
            assert used <= exported_names(), name


def test_scrape_configs_are_valid_for_promtool(tmp_path):
    result = promtool("check", "config", str(SCRAPE_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    # The compose file's config names its rules by their path inside the container: check it
    # with that path pointed at the repository's rules.
    compose = load_yaml(ROOT / "deploy" / "compose" / "prometheus.yml")
    assert isinstance(compose, dict)
    assert compose["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    compose["rule_files"] = [str(RULES.parent / "*.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(compose))
    result = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
