"""Point every alert's runbook_url at its section of the docs site, then regenerate the PrometheusRule.

The address comes from ``site_url`` in mkdocs.yml; an alert's URL is ``<site_url>runbooks/#<alert in
lower case>``. Rewrites the rules file and the expected annotations in its promtool unit tests in
place (only the ``runbook_url:`` lines change), then writes deploy/kubernetes/prometheusrule.yaml.
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING

import gen_prometheusrule
from docsgen import runbooks

if TYPE_CHECKING:
    from pathlib import Path

RULE_TESTS = runbooks.ROOT / "deploy" / "prometheus" / "tests" / "poolwatch.rules.test.yml"
# A runbook_url line up to its anchor: the anchor (the alert's name) stays, the address before it is
# rewritten.
RUNBOOK_URL = re.compile(r'^(\s*runbook_url:\s*"?)[^"#\s]*#', re.MULTILINE)


def rewrite(text: str, base: str) -> str:
    return RUNBOOK_URL.sub(lambda match: match.group(1) + base, text)


def main() -> int:
    base = runbooks.base(runbooks.site_url())
    for path in (runbooks.RULES, RULE_TESTS):
        _write(path, rewrite(path.read_text(encoding="utf-8"), base))
    return gen_prometheusrule.main()


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    sys.stdout.write(f"wrote {path.relative_to(runbooks.ROOT)}\n")


if __name__ == "__main__":
    sys.exit(main())
