"""The configuration page cannot drift: its example is a file `poolwatch config` accepts as it is, and
its table of settings has every key of the models with their defaults and bounds. No servers."""

from __future__ import annotations

import re
import subprocess
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from poolwatch.config import Settings, TargetSettings
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


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "[" + ", ".join(_shown(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def _bounds(field: FieldInfo) -> str:
    found: list[Any] = list(field.metadata)

    def walk(annotation: Any) -> None:
        if typing.get_origin(annotation) is typing.Annotated:
            base, *metadata = typing.get_args(annotation)
            for item in metadata:
                found.extend(item.metadata if isinstance(item, FieldInfo) else [item])
            walk(base)
        else:
            for argument in typing.get_args(annotation):
                walk(argument)

    walk(field.annotation)
    symbols = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))
    parts = [
        f"{symbol} {value:g}" if isinstance(value, float) else f"{symbol} {value}"
        for item in found
        for name, symbol in symbols
        if (value := getattr(item, name, None)) is not None
    ]
    return ", ".join(dict.fromkeys(parts))


def _expected(model: type[BaseModel], prefix: str = "") -> dict[str, tuple[str, str]]:
    rows: dict[str, tuple[str, str]] = {}
    for name, field in model.model_fields.items():
        if name == "source":  # set by the loader, not a setting
            continue
        nested = [a for a in (field.annotation, *typing.get_args(field.annotation)) if isinstance(a, type)]
        if name == "targets":
            rows.update(_expected(TargetSettings, "targets[]."))
        elif models := [a for a in nested if issubclass(a, BaseModel)]:
            rows.update(_expected(models[0], f"{prefix}{name}."))
        else:
            default = (
                "required" if field.is_required() else _shown(field.get_default(call_default_factory=True))
            )
            rows[f"{prefix}{name}"] = (default, _bounds(field))
    return rows


def test_the_table_has_every_setting_with_its_default_and_bounds() -> None:
    documented = {
        key: (default.strip(), bounds.strip())
        for key, default, bounds in re.findall(
            r"^\| `([^`]+)` \|([^|]*)\|([^|]*)\|", PAGE.read_text(), re.MULTILINE
        )
        if "." in key
    }
    assert documented == _expected(Settings)
