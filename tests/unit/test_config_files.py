"""Reading configuration and password files: size caps, devices and pipes, nesting depth, alias
expansion and duplicate keys, each refused with one line. No servers."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from poolwatch.config import load_settings, validate
from poolwatch.config_file import MAX_CONFIG_BYTES, MAX_DEPTH, MAX_PASSWORD_BYTES
from poolwatch.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

TARGET = '{name: c, kind: redis, url: "redis://h:6379/0"}'


def load(path: Path) -> None:
    load_settings(str(path), environ={})


def one_line(caught: pytest.ExceptionInfo[ConfigError]) -> str:
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_file_larger_than_the_cap_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert one_line(caught) == f"{path}: the configuration file is larger than 1 MiB, the limit for this file"


def test_a_file_at_the_cap_is_read(tmp_path: Path) -> None:
    path = tmp_path / "full.yaml"
    head = f"targets: [{TARGET}]\n"
    path.write_text(head + "#" * (MAX_CONFIG_BYTES - len(head) - 1) + "\n")
    assert path.stat().st_size == MAX_CONFIG_BYTES
    load(path)


def test_dev_zero_is_refused_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings("/dev/zero", environ={})
    assert one_line(caught) == "/dev/zero: the configuration file is not a regular file (a character device)"


def test_a_password_file_on_a_device_or_too_large_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_text("x" * (MAX_PASSWORD_BYTES + 1))
    for path, problem in (("/dev/zero", "is not a regular file"), (str(big), "is larger than 64 KiB")):
        with pytest.raises(ConfigError) as caught:
            validate(
                {"targets": [{"name": "c", "kind": "redis", "url": "redis://h/0", "password_file": path}]}
            )
        assert f"password_file {path} {problem}" in one_line(caught)


def test_a_pipe_is_read_as_in_process_substitution() -> None:
    # `poolwatch config -c <(render-config)`: the file is /dev/fd/N, one end of a pipe.
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, f"targets: [{TARGET}]\n".encode())
        os.close(write_end)
        settings = load_settings(f"/dev/fd/{read_end}", environ={})
    finally:
        os.close(read_end)
    assert [t.name for t in settings.targets] == ["c"]


def test_a_pipe_nobody_writes_to_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="the configuration file is empty"):
        load(fifo)


@pytest.mark.parametrize(
    ("name", "nested"),
    [
        ("flow sequences", "[" * 600 + "]" * 600),
        ("flow mappings", "{a: " * 600 + "1" + "}" * 600),
        ("block mappings", "".join(f"{'  ' * i}k{i}:\n" for i in range(600)) + "  " * 600 + "v\n"),
    ],
)
def test_deep_nesting_is_one_line_not_a_recursion_error(tmp_path: Path, name: str, nested: str) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(f"x: {nested}\n" if not nested.startswith("k0") else nested)
    with pytest.raises(ConfigError) as caught:
        load(path)
    message = one_line(caught)
    assert f"nested deeper than {MAX_DEPTH} levels" in message, (name, message)
    assert message.startswith(f"{path}: not valid YAML at line ")


def test_nesting_within_the_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(f"targets: [{TARGET}]\nhttp: {{}}\n")
    load(path)


def test_an_alias_bomb_is_refused_before_validation(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\ntargets: *a8\n")
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert one_line(caught) == f"{path}: expands to more than 100000 values (counting each alias use)"


def test_a_recursive_alias_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("targets: &loop [*loop]\n")
    with pytest.raises(ConfigError, match="expands to more than"):
        load(path)


def test_anchors_and_merge_keys_still_work(tmp_path: Path) -> None:
    path = tmp_path / "anchors.yaml"
    path.write_text(
        "targets:\n"
        '  - {name: a, kind: redis, url: "redis://h/0", probe: &fast {interval: 2, timeout: 1}}\n'
        '  - name: b\n    kind: redis\n    url: "redis://h/1"\n'
        "    probe:\n      <<: *fast\n      timeout: 2\n"
    )
    a, b = load_settings(str(path), environ={}).targets
    assert (a.probe.interval, a.probe.timeout) == (2, 1)
    assert (b.probe.interval, b.probe.timeout) == (2, 2)  # a key after a merge overrides: no duplicate


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (f"targets: [{TARGET}]\ntargets: []\n", "duplicate key targets at line 2"),
        (
            "targets:\n  - name: c\n    kind: redis\n    url: redis://h/0\n    pool: {size: 2, size: 3}\n",
            "duplicate key targets[0].pool.size at line 5",
        ),
        ('http: {listen: "127.0.0.1:1", "listen": "127.0.0.1:2"}\n', "duplicate key http.listen at line 1"),
    ],
)
def test_a_duplicate_key_is_refused_naming_its_path(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert one_line(caught) == f"{path}: {where} (each key may be given once)"
