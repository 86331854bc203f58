"""Reading the Grafana dashboard: its panels, their queries, and its template variables."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.ops.tools import DASHBOARD

# Variables listing the targets of one kind; a row repeats over each. Without such targets the one
# unrepeated row ("All") queries no target: its variable has no allValue.
KIND_VARIABLES = ("mysql_target", "pgbouncer_target")

_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.*),\s*(?P<label>[A-Za-z_]\w*)\s*\)$", re.DOTALL)


def load() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def panels(dashboard: dict[str, Any], without: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every panel that shows data, including those inside collapsed rows, except the rows repeating
    over a variable in ``without``."""
    found = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            if panel.get("repeat") not in without:
                found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def queries(dashboard: dict[str, Any], without: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(panel title + refId, expr) of every panel query (``without``: as in ``panels``)."""
    return [
        (f"{panel['title']} [{target['refId']}]", target["expr"])
        for panel in panels(dashboard, without)
        for target in panel["targets"]
    ]


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in dashboard["templating"]["list"]}


def variable_selector(variable: dict[str, Any]) -> tuple[str, str]:
    """(series selector, label) of a ``label_values(selector, label)`` variable query."""
    query = variable["query"]
    text = query["query"] if isinstance(query, dict) else query
    match = _LABEL_VALUES.match(text.strip())
    assert match, f"variable {variable['name']}: expected label_values(selector, label), got {text!r}"
    return match["selector"], match["label"]


def instantiate(expr: str, rate_interval: str) -> str:
    """The query as Grafana sends it with every variable at "All" (.*)."""
    text = expr.replace("$__rate_interval", rate_interval).replace("$__interval", rate_interval)
    return re.sub(r"\$\{?(job|instance|pool|target|server)\}?", ".*", text)
