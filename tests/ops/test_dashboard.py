"""The Grafana dashboard: its structure, and every query on metrics poolwatch exports."""

from __future__ import annotations

import re
from typing import Any

from tests.ops import dashboard as dash
from tests.ops.exported import exported_names
from tests.ops.promql import metric_names
from tests.ops.tools import ROOT, load_yaml

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# What the dashboard must show: each entry is a metric some panel query must use.
REQUIRED = {
    "pool used/idle": "poolwatch_pool_connections",
    "pool max": "poolwatch_pool_max_connections",
    "pending": "poolwatch_pool_pending_requests",
    "checkout wait quantiles": "poolwatch_pool_wait_seconds_bucket",
    "use time": "poolwatch_pool_use_seconds_bucket",
    "timeouts": "poolwatch_pool_timeouts_total",
    "connect errors": "poolwatch_pool_connect_errors_total",
    "closes by reason": "poolwatch_pool_closed_total",
    "leaks": "poolwatch_pool_leaked_connections",
    "target up": "poolwatch_up",
    "probe latency": "poolwatch_probe_duration_seconds_bucket",
    "server sessions by state": "poolwatch_server_connections",
    "oldest idle in transaction": "poolwatch_server_oldest_seconds",
    "share of max connections": "poolwatch_server_connections_used_ratio",
    "reaper terminations": "poolwatch_reaper_terminated_total",
    "reaper errors": "poolwatch_reaper_errors_total",
    "job health": "poolwatch_job_last_success_timestamp_seconds",
    "job failures": "poolwatch_job_failures_total",
    "pgbouncer waiting clients": "poolwatch_pgbouncer_client_connections",
    "pgbouncer max wait": "poolwatch_pgbouncer_client_max_wait_seconds",
    "pgbouncer server connections": "poolwatch_pgbouncer_server_connections",
    "connections held by holder": "poolwatch_pool_use_seconds_sum",
    "server limit": "poolwatch_server_max_connections",
}
# The fleet headroom queries: per server (host:port), over every job and instance.
SERVER_FILTER = 'server=~"($server)(/.*)?"'


def test_every_panel_query_uses_only_metrics_poolwatch_exports():
    exported = exported_names()
    queries = dash.queries(dash.load())
    assert len(queries) >= 20
    for where, expr in queries:
        used = metric_names(expr)
        assert used, f"{where}: no metric in {expr!r}"
        assert used <= exported, f"{where}: not exported by poolwatch: {sorted(used - exported)}"


def test_the_metric_check_catches_a_misspelt_name():
    # The check above bites: a name off by one letter is not in the exported set.
    assert "poolwatch_pool_conections" not in exported_names()
    assert "poolwatch_pool_connections" in exported_names()


def test_the_dashboard_queries_pool_target_and_server_health_families():
    used = set().union(*(metric_names(expr) for _, expr in dash.queries(dash.load())))
    missing = {what: name for what, name in REQUIRED.items() if name not in used}
    assert missing == {}


def test_datasource_is_a_variable_used_by_every_panel_and_query():
    data = dash.load()
    variables = dash.variables(data)
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dash.panels(data):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
    for name in ("job", "instance", "pool", "target"):
        assert variables[name]["datasource"] == DATASOURCE, name


def test_job_instance_pool_target_variables_read_exported_labels():
    exported = exported_names()
    variables = dash.variables(dash.load())
    expected_label = {"job": "job", "instance": "instance", "pool": "pool", "target": "target"}
    for name, label in expected_label.items():
        variable = variables[name]
        assert variable["type"] == "query"
        selector, got_label = dash.variable_selector(variable)
        assert got_label == label
        used = metric_names(selector)
        assert used, name
        assert used <= exported, f"variable {name}: not exported: {sorted(used - exported)}"
        assert variable["multi"] is True
        assert variable["includeAll"] is True


def test_pool_and_target_panels_filter_on_their_variables():
    for where, expr in dash.queries(dash.load()):
        if "server_endpoint" in expr:  # fleet-wide: filtered on the server, never on job or instance
            assert expr.count("poolwatch_") == expr.count(SERVER_FILTER), where
            assert "$job" not in expr, where
            assert "$instance" not in expr, where
            continue
        assert 'job=~"$job"' in expr, where
        assert 'instance=~"$instance"' in expr, where
        if "poolwatch_pool_" in expr:
            assert 'pool=~"$pool"' in expr, where
        if any(f"poolwatch_{p}" in expr for p in ("up", "probe_", "server_", "reaper_", "job_")):
            assert 'target=~"$target"' in expr, where


def test_the_headroom_panel_shows_ceiling_limit_and_in_use_per_server():
    (panel,) = [p for p in dash.panels(dash.load()) if p["title"].startswith("Server headroom")]
    by_metric = {name: target["expr"] for target in panel["targets"] for name in metric_names(target["expr"])}
    assert set(by_metric) == {
        "poolwatch_pool_max_connections",  # the ceiling
        "poolwatch_server_max_connections",  # the limit
        "poolwatch_server_connections",  # in use on the server
        "poolwatch_pool_connections",  # open in the pools
    }
    for expr in by_metric.values():
        assert "by (server_endpoint)" in expr, expr
    variable = dash.variables(dash.load())["server"]
    selector, label = dash.variable_selector(variable)
    assert label == "server"
    assert metric_names(selector) <= exported_names()
    assert variable["regex"] == "/^([^/]+)/"  # host:port, as the panel groups by


def test_panel_ids_are_unique_and_the_grid_fits():
    data = dash.load()
    ids = [panel["id"] for panel in data["panels"]]
    assert len(ids) == len(set(ids))
    for panel in data["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    assert data["uid"] == "poolwatch"


def test_provisioning_files():
    provisioning = ROOT / "grafana" / "provisioning"
    datasources = load_yaml(provisioning / "datasources" / "poolwatch-prometheus.yml")
    assert isinstance(datasources, dict)
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"].startswith("http")
    providers = load_yaml(provisioning / "dashboards" / "poolwatch.yml")
    assert isinstance(providers, dict)
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")


def grafana_all_value(variable: dict[str, Any], values: list[str]) -> str:
    """What Grafana puts for ``$variable`` at "All" in a Prometheus regex matcher, when the
    variable's query found ``values``: its ``allValue``, or else every value as one alternation."""
    if variable.get("allValue"):
        return str(variable["allValue"])
    return "(" + "|".join(re.escape(value) for value in values) + ")"


def test_mysql_and_pgbouncer_rows_repeat_per_target_and_query_nothing_without_one():
    data = dash.load()
    variables = dash.variables(data)
    exported = exported_names()
    rows = {panel.get("repeat"): panel for panel in data["panels"] if panel["type"] == "row"}
    for name in dash.KIND_VARIABLES:
        kind = name.removesuffix("_target")
        variable = variables[name]
        selector, label = dash.variable_selector(variable)
        assert label == "target"
        assert f'kind="{kind}"' in selector
        assert metric_names(selector) <= exported
        # "All" by default, so the row repeats once per target of the kind...
        assert variable["includeAll"] is True
        assert variable["multi"] is True
        assert variable["current"]["value"] == ["$__all"]
        # ... and no allValue: with no such target, "All" is the empty alternation, which matches
        # no target (".*" would have made the one unrepeated row query every target).
        assert "allValue" not in variable, name
        assert re.fullmatch(grafana_all_value(variable, []), "orders") is None
        assert re.fullmatch(grafana_all_value(variable, []), "") is not None  # no poolwatch series
        both = grafana_all_value(variable, ["shop", "shop.eu"])
        assert [t for t in ("shop", "shop.eu", "shopXeu", "orders") if re.fullmatch(both, t)] == [
            "shop",
            "shop.eu",
        ]
        row = rows[name]  # collapsed, and repeated once per target of the kind
        assert row["collapsed"] is True
        assert row["panels"], name
        for panel in row["panels"]:
            for target in panel["targets"]:
                assert f'target=~"${name}"' in target["expr"], panel["title"]
