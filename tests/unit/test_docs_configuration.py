"""The configuration page's example cannot drift: it is a file `poolwatch config` accepts as it is,
shown verbatim on the page (the reference below it is generated from the models). No servers."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.daemonkit import clean_env, poolwatch_command

DOCS = Path(__file__).parents[2] / "docs"
SAMPLE = DOCS / "poolwatch.example.yaml"
PAGE = DOCS / "configuration.md"


def test_the_documented_example_is_accepted_as_it_is(tmp_path: Path) -> None:
    result = subprocess.run(
        poolwatch_command("config", "-c", str(SAMPLE)),
        capture_output=True,
        text=True,
        env=clean_env(HOME=str(tmp_path)),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "name: orders" in result.stdout


def test_the_page_shows_the_example_file_verbatim() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)
    assert SAMPLE.read_text() in blocks
