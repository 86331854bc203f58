"""Sharding targets across replicas: every target has one owner, owners are stable as targets come
and go, and a new replica takes only its share."""

from __future__ import annotations

import pytest

from poolwatch.config import load_settings
from poolwatch.errors import ConfigError
from poolwatch.sharding import Shard, assign, owner

NAMES = [f"db{i:04d}" for i in range(1000)]


def test_every_target_has_exactly_one_owner_and_shares_are_even() -> None:
    shards = assign(NAMES, 4)
    assert sorted(name for names in shards.values() for name in names) == sorted(NAMES)
    for names in shards.values():
        assert 200 <= len(names) <= 300, {s: len(n) for s, n in shards.items()}
    for name in NAMES[:50]:
        assert [Shard(i, 4).owns(name) for i in range(4)].count(True) == 1


def test_adding_or_removing_targets_moves_no_other_target() -> None:
    before = {name: owner(name, 4) for name in NAMES[:500]}
    after = {name: owner(name, 4) for name in NAMES}  # 500 more
    assert all(after[name] == shard for name, shard in before.items())


def test_a_new_replica_takes_only_its_share() -> None:
    moved = [name for name in NAMES if owner(name, 4) != owner(name, 5)]
    assert all(owner(name, 5) == 4 for name in moved)  # only to the new replica
    assert 150 <= len(moved) <= 250  # about a fifth


def test_shard_bounds() -> None:
    with pytest.raises(ValueError, match="INDEX < COUNT"):
        Shard(4, 4)


def sqlite_config(tmp_path, count: int = 12) -> str:
    lines = ["targets:"]
    lines += [
        f"  - {{name: t{i:02d}, kind: sqlite, url: 'sqlite:///{tmp_path}/t{i:02d}.db'}}" for i in range(count)
    ]
    path = tmp_path / "poolwatch.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_settings_keep_this_replicas_share(tmp_path) -> None:
    config = sqlite_config(tmp_path)
    shares = [load_settings(config, environ={}, shard=f"{i}/3").targets for i in range(3)]
    names = [t.name for share in shares for t in share]
    assert sorted(names) == [f"t{i:02d}" for i in range(12)]
    assert all(load_settings(config, environ={}, shard=f"{i}/3").shard.index == i for i in range(3))


def test_the_index_can_come_from_the_statefulset_pod_ordinal(tmp_path) -> None:
    config = sqlite_config(tmp_path)
    by_flag = load_settings(config, environ={}, shard="2/3").targets
    by_pod = load_settings(config, environ={"HOSTNAME": "poolwatch-2"}, shard_count=3).targets
    by_env = load_settings(config, environ={"HOSTNAME": "poolwatch-2", "POOLWATCH_SHARD_COUNT": "3"}).targets
    assert by_flag == by_pod == by_env


@pytest.mark.parametrize(
    ("shard", "count", "environ", "message"),
    [
        ("3/3", None, {}, r"^shard: index 3 is not below count 3$"),
        ("1-3", None, {}, r"shard: expected INDEX/COUNT \(such as 0/4\), got '1-3'"),
        (None, 3, {"HOSTNAME": "worker"}, r"pod ordinal ending HOSTNAME .* HOSTNAME is 'worker'"),
        (None, None, {"POOLWATCH_SHARD_COUNT": "four"}, r"POOLWATCH_SHARD_COUNT: expected a number"),
    ],
)
def test_bad_shard_settings_are_one_line_errors(tmp_path, shard, count, environ, message) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings(sqlite_config(tmp_path), environ=environ, shard=shard, shard_count=count)
    assert "\n" not in str(caught.value)
