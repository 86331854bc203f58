"""Census arithmetic without a server: label folding, pools, thresholds, Redis client kinds."""

from __future__ import annotations

import pytest

from poolwatch.census.labels import FOLDED, Bounds
from poolwatch.census.postgres import Activity, samples
from poolwatch.census.redis import parse_client, state_of
from poolwatch.config import validate
from poolwatch.errors import ConfigError


def as_dict(out):
    return {(name, labels): value for name, labels, value in out}


def test_unconfigured_names_fold_into_the_empty_value_and_known_series_exist_at_zero():
    rows = [
        Activity("idle", "orders", "web", "web-1", 100.0, None),
        Activity("idle", "orders", "web", "req-8f3a", 30.0, None),
        Activity("idle", "tmp", "intruder", "web-1", 5.0, None),
        Activity(None, "orders", "web", "web-1", None, None),
        Activity("idle in transaction", "orders", "web", "web-1", 7.0, 9.5),
    ]
    bounds = Bounds(frozenset({"orders"}), frozenset({"web"}), frozenset({"web-1"}))
    out = as_dict(samples(rows, 100, bounds, {"web-1": "web"}, (10.0, 60.0)))
    assert out["server_connections", ("idle", "orders", "web", "web-1")] == 1
    assert out["server_connections", ("idle", "orders", "web", FOLDED)] == 1
    assert out["server_connections", ("idle", FOLDED, FOLDED, "web-1")] == 1
    assert out["server_connections", ("unknown", "orders", "web", "web-1")] == 1
    assert out["server_pool_connections", ("web", "idle")] == 2
    assert out["server_pool_connections", ("web", "active")] == 0
    assert out["server_pool_connections", ("web", "unknown")] == 1
    assert out["server_connections_used_ratio", ()] == 0.05
    assert out["server_oldest_seconds", ("idle",)] == 100.0
    assert out["server_oldest_seconds", ("active",)] == 0.0
    assert out["server_oldest_transaction_seconds", ()] == 9.5
    assert out["server_idle_connections", ("10",)] == 2
    assert out["server_idle_connections", ("60",)] == 1
    labels = {labels for (name, labels) in out if name == "server_connections"}
    assert all(
        v in {"orders", "web", "web-1", FOLDED, "idle", "unknown", "idle in transaction"}
        for labels_ in labels
        for v in labels_
    )


def test_redis_client_kinds_from_flags():
    def kind(**fields):
        return state_of(parse_client({"id": "1", "idle": "3", **fields}))

    assert kind(flags="N") == "connected"
    assert kind(flags="b") == "blocked"
    assert kind(flags="P", sub="1") == "pubsub"
    assert kind(flags="N", psub="2") == "pubsub"
    assert kind(flags="S") == "replica"
    assert kind(flags="O") == "monitor"
    assert kind(flags="M") == "master"
    assert parse_client({"id": "9", "flags": "x"}).in_multi


def test_a_name_that_is_configured_never_reads_as_the_fold():
    # A role, database and application really named "other", configured, next to sessions whose
    # names are not configured: two series, not one.
    rows = [
        Activity("idle", "other", "other", "other", 1.0, None),
        Activity("idle", "tmp", "intruder", "req-1", 1.0, None),
        Activity("idle", "tmp", None, "", 1.0, None),  # hidden user, unnamed application
    ]
    bounds = Bounds(frozenset({"other"}), frozenset({"other"}), frozenset({"other"}))
    out = as_dict(samples(rows, 100, bounds, {}, ()))
    assert out["server_connections", ("idle", "other", "other", "other")] == 1
    assert out["server_connections", ("idle", FOLDED, FOLDED, FOLDED)] == 2


def test_the_fold_value_is_no_name_a_server_or_the_configuration_can_give():
    # PostgreSQL refuses empty role and database names, an empty Redis client name is no name, and
    # the configuration refuses empty names: nothing configured can be labelled as the fold.
    assert FOLDED == ""
    with pytest.raises(ConfigError, match="census"):
        validate(
            {
                "targets": [
                    {"name": "t", "kind": "postgres", "url": "postgresql://u@h/d", "census": {"users": [""]}}
                ]
            }
        )
