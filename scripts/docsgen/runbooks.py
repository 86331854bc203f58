"""Alert runbook URLs: one section of docs/runbooks.md per alert, its URL derived from site_url.

An alert's anchor is its name in lower case (the heading's id, as mkdocs makes it); its
``runbook_url`` is ``<site_url>runbooks/#<anchor>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final

import yaml

if TYPE_CHECKING:
    from collections.abc import Collection

ROOT: Final = Path(__file__).resolve().parents[2]
MKDOCS: Final = ROOT / "mkdocs.yml"
RULES: Final = ROOT / "deploy" / "prometheus" / "rules" / "poolwatch.rules.yml"
PAGE: Final = "runbooks.md"


def site_url(mkdocs: Path = MKDOCS) -> str:
    """The docs site's address, always ending in ``/``."""
    config = yaml.safe_load(mkdocs.read_text(encoding="utf-8"))
    return str(config["site_url"]).rstrip("/") + "/"


def base(site: str) -> str:
    """Every runbook URL is this plus the alert's anchor."""
    return f"{site}{PAGE.removesuffix('.md')}/#"


def anchor(alert: str) -> str:
    return alert.lower()


def alerts(rules: Path = RULES) -> dict[str, str]:
    """Alert name -> its runbook_url, as the rules file has them."""
    document = yaml.safe_load(rules.read_text(encoding="utf-8"))
    found = {}
    for group in document["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                found[rule["alert"]] = rule.get("annotations", {}).get("runbook_url", "")
    return found


def problems(site: str, anchors: Collection[str], rules: Path = RULES) -> list[str]:
    """What is wrong between the rules and the runbooks page: one line per problem."""
    found = []
    for alert, url in alerts(rules).items():
        if anchor(alert) not in anchors:
            found.append(f"{alert}: no '## {alert}' section in docs/{PAGE}")
        if url != base(site) + anchor(alert):
            found.append(
                f"{alert}: runbook_url is {url!r}, expected {base(site) + anchor(alert)!r} "
                "(scripts/gen_runbook_urls.py writes them)"
            )
    return found
