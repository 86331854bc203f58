"""mkdocs hooks: the generated parts of the docs site, made from the code and results at build time.

A page asks for a generated part with a marker line, ``<!-- generated: NAME [ARGUMENT] -->``:
``config-reference``, ``metrics-reference``, ``otel-mapping``, ``checkout-kinds-cost`` (the
pool kinds' checkout path in instructions) and ``benchmark <results file stem>``.
The build fails on an unknown marker, and when a generated part, a benchmark's results or a chart is
shown nowhere. The benchmark charts and CHANGELOG.md are added to the site as they are.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Final

from docsgen import benchmark_pages, config_reference, metrics_reference, otel_mapping, runbooks
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from mkdocs.config.defaults import MkDocsConfig
    from mkdocs.structure.pages import Page
    from mkdocs.structure.toc import AnchorLink

MARKER: Final = re.compile(r"^<!-- generated: ([a-z-]+)(?: ([\w-]+))? -->$", re.MULTILINE)
CHANGELOG: Final = runbooks.ROOT / "CHANGELOG.md"

# What the pages of the current build asked for: every part must be shown once.
_shown: list[str] = []


def parts() -> dict[str, Callable[[int], str]]:
    """Every generated part by name, given the depth of the page that shows it."""
    found: dict[str, Callable[[int], str]] = {
        "config-reference": lambda _depth: config_reference.render(),
        "metrics-reference": lambda _depth: metrics_reference.render(),
        "otel-mapping": lambda _depth: otel_mapping.render(),
        "checkout-kinds-cost": lambda _depth: benchmark_pages.kinds_cost(),
    }
    for name in benchmark_pages.names():
        found[f"benchmark {name}"] = functools.partial(_benchmark, name)
    return found


def _benchmark(name: str, depth: int) -> str:
    return benchmark_pages.render(name, page_depth=depth)


def expand(markdown: str, depth: int = 0) -> tuple[str, list[str]]:
    """``markdown`` with every marker replaced by its part, and the parts' names in order."""
    available = parts()
    used: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name = " ".join(word for word in match.groups() if word)
        if name not in available:
            raise PluginError(f"unknown generated part {match.group(0)}; known: {', '.join(available)}")
        used.append(name)
        return available[name](depth)

    return MARKER.sub(replace, markdown), used


def on_pre_build(config: MkDocsConfig) -> None:  # noqa: ARG001 - mkdocs' hook signature
    _shown.clear()
    orphans = benchmark_pages.orphan_charts()
    if orphans:
        raise PluginError(f"charts without results: {', '.join(path.name for path in orphans)}")


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for chart in benchmark_pages.RESULTS.glob("*.png"):
        uri = f"{benchmark_pages.CHARTS_URI}/{chart.name}"
        files.append(File.generated(config, uri, abs_src_path=str(chart)))
    files.append(File.generated(config, "changelog.md", content=CHANGELOG.read_text(encoding="utf-8")))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:  # noqa: ARG001
    expanded, used = expand(markdown, depth=page.file.src_uri.count("/"))
    _shown.extend(used)
    return expanded


def on_page_content(html: str, page: Page, config: MkDocsConfig, files: Files) -> str:  # noqa: ARG001
    if page.file.src_uri == runbooks.PAGE:
        found = runbooks.problems((config.site_url or "").rstrip("/") + "/", _anchors(page.toc))
        if found:
            raise PluginError("alert runbooks:\n  " + "\n  ".join(found))
    return html


def _anchors(links: Iterable[AnchorLink]) -> set[str]:
    return {anchor for link in links for anchor in (link.id, *_anchors(link.children))}


def on_post_build(config: MkDocsConfig) -> None:  # noqa: ARG001
    missing = [name for name in parts() if name not in _shown]
    twice = sorted({name for name in _shown if _shown.count(name) > 1})
    if missing:
        lines = ", ".join(f"'<!-- generated: {name} -->'" for name in missing)
        raise PluginError(f"generated parts shown on no page: put {lines} on a line of its page")
    if twice:
        raise PluginError(f"generated parts shown on more than one page: {', '.join(twice)}")
