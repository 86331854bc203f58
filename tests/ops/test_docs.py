"""The documentation: the site builds strictly, its generated pages cover the code, its examples hold.

The site is built once for the module with the real mkdocs, as scripts/test does; the checks read
the HTML it wrote. What the generated pages must contain is enumerated here independently of the
generators: the configuration models walked again, the metric families of a daemon with a target of
every kind and of an instrumented application, the alerts of the rules file.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import bcrypt
import pytest
import yaml
from docsgen import benchmark_pages, config_reference, runbooks
from docsgen.config_reference import DESCRIPTIONS, INTERNAL
from mkdocs.exceptions import PluginError

from poolwatch.config import Settings, validate
from poolwatch.schema import Model
from tests.daemonkit import clean_env
from tests.ops.exported import exported_families
from tests.ops.tools import ROOT, RULES, alerts, load_yaml

DOCS = ROOT / "docs"
README = ROOT / "README.md"
README_MAX_LINES = 200
DEPLOYED_STATE_DIR = "/var/lib/poolwatch"  # the Dockerfile's, systemd unit's and Kubernetes manifests'


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(out)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def html(site: Path, page: str) -> str:
    return (site / page / "index.html").read_text(encoding="utf-8")


def section(page: str, anchor: str) -> str:
    """The HTML from the heading with id ``anchor`` to the next heading of any level."""
    start = page.index(f'id="{anchor}"')
    end = re.compile(r"<h[1-6]").search(page, start + 1)
    return page[start : end.start() if end else len(page)]


def models(model: type[Model] = Settings, path: str = "") -> list[tuple[str, type[Model]]]:
    """Every configuration model with the key path where it sits in the file."""
    found = [(path, model)]
    for name, field in model.model_fields.items():
        if not path and name in INTERNAL:
            continue
        for candidate in (field.annotation, *typing.get_args(field.annotation)):
            if isinstance(candidate, type) and issubclass(candidate, Model):
                many = typing.get_origin(field.annotation) is tuple
                found += models(candidate, f"{path}.{name}".lstrip(".") + ("[]" if many else ""))
    return found


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]

    def pages(entries: list[object]) -> set[str]:
        found: set[str] = set()
        for entry in entries:
            assert isinstance(entry, dict)
            for value in entry.values():
                found |= pages(value) if isinstance(value, list) else {str(value)}
        return found

    written = {path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md")}
    assert pages(nav) == written | {"changelog.md"}  # the changelog is CHANGELOG.md, added at build


def test_configuration_reference_lists_every_key_in_its_section(site):
    page = html(site, "configuration")
    for path, model in models():
        shown = section(page, config_reference.anchor(path))
        for name in model.model_fields:
            if path or name not in INTERNAL:
                assert f"<code>{name}</code>" in shown, f"{path or 'top level'}: {name} missing"


def test_every_configuration_key_has_exactly_one_description():
    paths = {
        f"{path}.{name}".lstrip(".")
        for path, model in models()
        for name in model.model_fields
        if path or name not in INTERNAL
    }
    assert set(config_reference.keys()) == paths
    fields = {
        f"{path}.{name}".lstrip("."): field
        for path, model in models()
        for name, field in model.model_fields.items()
    }
    for path in paths:
        in_model, in_table = bool(fields[path].description), path in DESCRIPTIONS
        assert in_model or in_table, f"{path}: no description (Field(description=...) or DESCRIPTIONS)"
        assert not (in_model and in_table), f"{path}: described twice; drop its DESCRIPTIONS entry"
    assert set(DESCRIPTIONS) - paths == set(), "DESCRIPTIONS names keys the models no longer have"


def test_metrics_reference_lists_every_exported_family_with_its_type(site):
    page = html(site, "metrics")
    families = exported_families()
    assert len(families) > 30  # the daemon's families and the pools'
    for family, kind in families:
        exposed = f"{family}_total" if kind == "counter" else family
        row = re.search(rf"<tr>\s*<td><code>{exposed}</code></td>\s*<td>(\w+)</td>", page)
        assert row, f"{exposed} is not in the metrics reference"
        assert row.group(1) == kind, exposed


def test_every_alert_has_a_runbook_section_and_a_runbook_url_pointing_at_it(site):
    page = html(site, "runbooks")
    anchors = set(re.findall(r'<h2 id="([^"]+)"', page))
    site_url = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["site_url"]
    rules = alerts(load_yaml(RULES))
    assert rules
    for rule in rules:
        name = rule["alert"]
        assert isinstance(name, str)
        annotations = rule["annotations"]
        assert isinstance(annotations, dict)
        assert name.lower() in anchors, f"docs/runbooks.md has no '## {name}' section"
        assert name in section(page, name.lower()), name
        assert annotations["runbook_url"] == f"{site_url.rstrip('/')}/runbooks/#{name.lower()}", name
    assert runbooks.problems(runbooks.site_url(), anchors) == []


def test_a_runbook_url_that_does_not_match_is_reported(tmp_path):
    rules = tmp_path / "rules.yml"
    url = "https://docs.example/runbooks/#poolwatchtargetdown"
    rules.write_text(
        yaml.safe_dump(
            {"groups": [{"rules": [{"alert": "PoolwatchTargetDown", "annotations": {"runbook_url": url}}]}]}
        )
    )
    assert runbooks.problems("https://docs.example/", {"poolwatchtargetdown"}, rules) == []
    assert len(runbooks.problems("https://elsewhere.example/", {"poolwatchtargetdown"}, rules)) == 1
    assert len(runbooks.problems("https://docs.example/", set(), rules)) == 1


def test_benchmarks_page_shows_every_result_and_every_chart(site):
    page = html(site, "benchmarks")
    results = sorted(benchmark_pages.RESULTS.glob("*.json"))
    assert results
    assert set(benchmark_pages.RENDERERS) == {path.stem for path in results}
    # Each result is shown once: on the benchmarks page, or next to what it measures (the status
    # page's cost on the status page, the endpoint under attack on the security page).
    pages = (page, html(site, "status"), html(site, "security"))
    assert sum(shown.count("<strong>Command:</strong>") for shown in pages) == len(results)
    for chart in benchmark_pages.RESULTS.glob("*.png"):
        assert (site / benchmark_pages.CHARTS_URI / chart.name).read_bytes() == chart.read_bytes()
        assert f'src="../{benchmark_pages.CHARTS_URI}/{chart.name}"' in page, chart.name


def test_checkout_budget_verdict_follows_the_measured_ratio(tmp_path):
    data = json.loads((benchmark_pages.RESULTS / "checkout_instructions.json").read_text(encoding="utf-8"))
    results = tmp_path / "checkout_instructions.json"
    for ratio, verdict in ((1.099, "within"), (1.101, "over")):
        data["instructions_per_cycle"]["loop"]["poolwatch"]["median_ratio"] = ratio
        results.write_text(json.dumps(data))
        shown = benchmark_pages.render("checkout_instructions", tmp_path)
        assert f"costs **{ratio:.3f}x** a bare checkout: {verdict} the 1.10x budget" in shown


def test_results_or_charts_the_page_cannot_show_are_errors(tmp_path):
    (tmp_path / "newbench.json").write_text("{}")
    (tmp_path / "newbench_chart.png").write_bytes(b"")
    (tmp_path / "stray.png").write_bytes(b"")
    with pytest.raises(KeyError, match=r"newbench\.json has no renderer"):
        benchmark_pages.render("newbench", tmp_path)
    assert benchmark_pages.orphan_charts(tmp_path) == [tmp_path / "stray.png"]


def test_an_unknown_generated_part_fails_the_build():
    import docs_hooks  # mkdocs loads it by path; imported here for this check

    expanded, used = docs_hooks.expand("a\n<!-- generated: benchmark scale -->\nb\n")
    assert used == ["benchmark scale"]
    assert "generated" not in expanded
    with pytest.raises(PluginError, match="unknown generated part"):
        docs_hooks.expand("<!-- generated: benchmark nope -->\n")


def yaml_blocks(path: Path) -> list[str]:
    return re.findall(r"^```yaml\n(.*?)^```", path.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)


def runnable(value: object, tmp_path: Path) -> object:
    """An example made loadable here: files it names exist, bcrypt placeholders are real hashes."""
    if isinstance(value, dict):
        done: dict[object, object] = {}
        for key, item in value.items():
            if isinstance(key, str) and key.endswith("_file") and isinstance(item, str):
                stand_in = tmp_path / f"{key}-{len(list(tmp_path.iterdir()))}"
                # A password file holds the secret; a headers file, "Name: value" lines.
                stand_in.write_text("X-Example: secret\n" if key == "headers_file" else "example-secret\n")
                done[key] = str(stand_in)
            elif key == "basic_auth_users" and isinstance(item, dict):
                done[key] = {user: bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode() for user in item}
            else:
                done[key] = runnable(item, tmp_path)
        return done
    if isinstance(value, list):
        return [runnable(item, tmp_path) for item in value]
    return value


def test_configuration_examples_in_the_docs_are_valid(tmp_path):
    keys = set(Settings.model_fields) - INTERNAL
    checked = 0
    for path in [README, *sorted(DOCS.rglob("*.md"))]:
        for block in yaml_blocks(path):
            example = yaml.safe_load(block)
            if not isinstance(example, dict) or not set(example) <= keys:
                continue
            config = runnable(example, tmp_path)
            assert isinstance(config, dict)
            # The examples' spool lives in the deployments' state directory (POOLWATCH_STATE_DIR).
            settings = validate(config, state_dir=DEPLOYED_STATE_DIR)  # raises ConfigError, naming the key
            assert settings.targets or "targets" not in example, path.name
            checked += 1
    assert checked >= 5  # README, install, configuration, census/reaper, security


def test_the_readmes_configuration_loads_as_copied(tmp_path):
    # Exactly as written, through the real command: no file it names is swapped for a real one.
    keys = set(Settings.model_fields) - INTERNAL
    blocks = [block for block in yaml_blocks(README) if set(yaml.safe_load(block) or {}) <= keys]
    assert blocks, "the README shows a configuration file"
    for index, block in enumerate(blocks):
        path = tmp_path / f"readme-{index}.yaml"
        path.write_text(block, encoding="utf-8")
        result = subprocess.run(
            [sys.executable, "-m", "poolwatch", "config", "--config", str(path)],
            cwd=tmp_path,
            env=clean_env(HOME=str(tmp_path), PYTHONPATH=str(ROOT)),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, block + result.stderr
        assert "Traceback" not in result.stderr


def test_readme_is_a_short_front_door_whose_links_resolve():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert local, "the README links into the documentation"
    for link in local:
        assert (ROOT / link).exists(), f"README links to {link}, which does not exist"


# The repository speaks of the product: what it does and what was measured, never how it was made.
ABOUT_THE_PRODUCT_ONLY = (
    ROOT / "README.md",
    ROOT / "CHANGELOG.md",
    ROOT / "pyproject.toml",
    ROOT / "Dockerfile",
    ROOT / "mkdocs.yml",
    *(ROOT / folder for folder in ("docs", "poolwatch", "tests", "benchmarks", "deploy", "scripts")),
    *(ROOT / folder for folder in ("examples", "grafana")),
)
# A commit's short or full hash: hex digits with at least one letter and one digit.
COMMIT = r"(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b"
NOT_ABOUT_THE_PRODUCT = re.compile(
    r"\bissue #?\d+"
    r"|\bLLMs?\b|\bAI[- ]assisted\b"
    rf"|\b(?:at|commit|revision) {COMMIT}"
    r"|\bgit archive [0-9a-f]{7,40}\b"
    rf"|\({COMMIT}\)"
    r"|\bbefore these changes\b"
    r"|\bearlier versions? of this\b"
    r"|\bthis session\b"
    r"|\b(?:STYLE|DESIGN|AUDIT)\.md\b"
    r"|\brequired by review\b",
    re.IGNORECASE,
)
TEXT_SUFFIXES = frozenset({".py", ".md", ".json", ".yml", ".yaml", ".toml", ".txt", ".sql", ".sh", ".ini"})


def product_text_files() -> list[Path]:
    found: list[Path] = []
    for path in ABOUT_THE_PRODUCT_ONLY:
        if path.is_file():
            found.append(path)
            continue
        found += [
            file
            for file in sorted(path.rglob("*"))
            if file.is_file()
            and (file.suffix in TEXT_SUFFIXES or file.name in {"Dockerfile", "test"})
            and not {"__pycache__", ".venv", "site"} & set(file.relative_to(ROOT).parts)
        ]
    return [path for path in found if path != Path(__file__).resolve()]


def test_the_repository_speaks_of_the_product_not_of_its_making():
    files = product_text_files()
    assert ROOT / "CHANGELOG.md" in files
    assert ROOT / "benchmarks" / "results" / "checkout_instructions.json" in files
    found = {}
    for path in files:
        text = path.read_text(encoding="utf-8")
        hits = NOT_ABOUT_THE_PRODUCT.findall(text)
        if hits:
            found[str(path.relative_to(ROOT))] = hits
    assert found == {}


@pytest.mark.parametrize(
    "wording",
    [
        "as issue #12 asks",
        "drafted with an LLM",
        "AI-assisted rewrite",
        "poolwatch at d313284",
        "git archive 7527388 into DIR",
        "before (99cf54b): --help",
        "Before these changes, the figures were",
        "earlier versions of this page",
        "made in this session",
        "see STYLE.md #2",
        "required by review",
    ],
)
def test_wording_about_the_making_is_found(wording):
    assert NOT_ABOUT_THE_PRODUCT.search(wording)


@pytest.mark.parametrize(
    "wording",
    [
        "a User-Agent header",
        "the session's backend",
        "a seed (20261130)",
        "version 0.20.0",
        "at 1000000 cycles",
    ],
)
def test_wording_about_the_product_is_not_flagged(wording):
    assert not NOT_ABOUT_THE_PRODUCT.search(wording.replace("User-Agent", ""))
