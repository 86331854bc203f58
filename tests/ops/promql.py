"""Just enough PromQL lexing to find the metric names an expression selects.

String literals, label matchers, range/subquery brackets, grouping clauses and numbers are removed;
what is left is function and aggregation names (followed by ``(``), keywords, and metric names.
An identifier before ``(`` that is not a PromQL function is reported too, so a typo in a function
name fails instead of hiding. ``{__name__=~"a|b"}`` selectors contribute their alternatives.
"""

from __future__ import annotations

import re

FUNCTIONS = frozenset(
    {
        "abs",
        "absent",
        "absent_over_time",
        "ceil",
        "changes",
        "clamp",
        "clamp_max",
        "clamp_min",
        "day_of_month",
        "day_of_week",
        "day_of_year",
        "days_in_month",
        "delta",
        "deriv",
        "exp",
        "floor",
        "histogram_count",
        "histogram_fraction",
        "histogram_quantile",
        "histogram_sum",
        "holt_winters",
        "hour",
        "idelta",
        "increase",
        "irate",
        "label_join",
        "label_replace",
        "ln",
        "log10",
        "log2",
        "minute",
        "month",
        "predict_linear",
        "rate",
        "resets",
        "round",
        "scalar",
        "sgn",
        "sort",
        "sort_desc",
        "sqrt",
        "time",
        "timestamp",
        "vector",
        "year",
        "avg_over_time",
        "min_over_time",
        "max_over_time",
        "sum_over_time",
        "count_over_time",
        "quantile_over_time",
        "stddev_over_time",
        "stdvar_over_time",
        "last_over_time",
        "present_over_time",
        "acos",
        "acosh",
        "asin",
        "asinh",
        "atan",
        "atanh",
        "cos",
        "cosh",
        "sin",
        "sinh",
        "tan",
        "tanh",
        "deg",
        "rad",
        "pi",
        # aggregations
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        # Grafana's template-variable functions
        "label_values",
        "query_result",
        "label_names",
        "metrics",
    }
)
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"})
GROUPING = ("by", "without", "on", "ignoring", "group_left", "group_right")

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r'__name__\s*=~?\s*"([A-Za-z0-9_:|]+)"')
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:" + "|".join(GROUPING) + r")\s*\([^()]*\)")
_OFFSET = re.compile(r"\boffset\s+-?[0-9A-Za-z_$]+")
_NUMBER = re.compile(r"(?<![A-Za-z0-9_:$])(?:0x[0-9a-fA-F]+|[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)")
_VARIABLE = re.compile(r"\$\{?[A-Za-z0-9_]+\}?")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?")


class PromQLError(ValueError):
    """An identifier used as a function that PromQL does not have."""


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects. Raises PromQLError on an unknown function name."""
    names = {alt for match in _NAME_MATCHER.finditer(expr) for alt in match.group(1).split("|")}
    text = _STRING.sub('""', expr)
    text = _BRACES.sub(" ", text)
    text = _BRACKETS.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    text = _VARIABLE.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    for match in _IDENT.finditer(text):
        word = match.group(0).rstrip("( \t\n")
        if word in KEYWORDS:
            continue
        if match.group(1):
            if word not in FUNCTIONS:
                raise PromQLError(f"unknown function {word!r} in {expr!r}")
        elif word in GROUPING:
            # "sum(x) by (job)" put after the aggregation: its label list was removed above.
            continue
        else:
            names.add(word)
    return names
