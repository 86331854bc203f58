"""The PromQL name finder the dashboard and rule checks rely on."""

from __future__ import annotations

import pytest

from tests.ops.promql import PromQLError, metric_names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('poolwatch_up{target=~"$target"} == 0', {"poolwatch_up"}),
        (
            "histogram_quantile(0.99, sum by (job, le) (rate(poolwatch_pool_wait_seconds_bucket[$__rate_interval])))",
            {"poolwatch_pool_wait_seconds_bucket"},
        ),
        (
            "(time() - a_seconds > 900) unless on (job, target) (b == 0)",
            {"a_seconds", "b"},
        ),
        ('sum(rate(x_total{state="idle in transaction"}[5m] offset 1h)) by (pool) / 1e3', {"x_total"}),
        ('up{job="poolwatch"} == 0 or absent(up{job="poolwatch"})', {"up"}),
        (
            '{__name__=~"poolwatch_up|poolwatch_pool_max_connections", job=~"$job"}',
            {"poolwatch_up", "poolwatch_pool_max_connections"},
        ),
        ("a / on (pool) group_left (state) b", {"a", "b"}),
    ],
)
def test_metric_names(expr, names):
    assert metric_names(expr) == names


def test_label_values_in_strings_and_matchers_are_not_metric_names():
    assert metric_names('m{state="rate(other)", pool=~"a|b"}') == {"m"}


def test_an_unknown_function_is_an_error():
    with pytest.raises(PromQLError, match="'rat'"):
        metric_names("rat(x_total[5m])")
