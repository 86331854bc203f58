"""The sharded Kubernetes example (deploy/kubernetes/sharded): a StatefulSet whose replicas split the
targets of a ConfigMap of target files; checked against the code that reads it. No cluster."""

from __future__ import annotations

from typing import Any, cast

import yaml

from poolwatch.config import load_settings
from poolwatch.sharding import owner
from tests.ops.tools import ROOT

SHARDED = ROOT / "deploy" / "kubernetes" / "sharded"


def manifest(kind: str, name: str | None = None) -> dict[str, Any]:
    for path in sorted(SHARDED.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document.get("kind") == kind and name in (None, document.get("metadata", {}).get("name")):
                return cast("dict[str, Any]", document)
    raise AssertionError(f"no {kind} {name or ''} in {SHARDED}")


def test_every_manifest_is_in_the_kustomization() -> None:
    listed = manifest("Kustomization")["resources"]
    assert sorted(listed) == sorted(p.name for p in SHARDED.glob("*.yaml") if p.name != "kustomization.yaml")


def test_each_pod_of_the_statefulset_monitors_its_share_of_the_target_files(tmp_path) -> None:
    statefulset = manifest("StatefulSet")
    pod = statefulset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    replicas = statefulset["spec"]["replicas"]
    assert int(args[args.index("--shard-count") + 1]) == replicas
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config = yaml.safe_load(manifest("ConfigMap", "poolwatch-shards-config")["data"]["poolwatch.yaml"])
    assert config["target_files"]["directory"] == mounts["targets"]
    assert volumes["targets"]["configMap"]["name"] == "poolwatch-targets"
    # The ConfigMap's files, as kubelet writes them, with the directory and secrets moved here.
    directory = tmp_path / "targets.d"
    directory.mkdir()
    for name, text in manifest("ConfigMap", "poolwatch-targets")["data"].items():
        (directory / name).write_text(text.replace(mounts["secrets"], str(tmp_path)))
    (tmp_path / "orders-password").write_text("x\n")
    config["target_files"]["directory"] = str(directory)
    path = tmp_path / "poolwatch.yaml"
    path.write_text(yaml.safe_dump(config))
    name = statefulset["metadata"]["name"]
    shares = [
        {
            t.name
            for t in load_settings(
                str(path), environ={"HOSTNAME": f"{name}-{i}"}, shard_count=replicas
            ).targets
        }
        for i in range(replicas)
    ]
    everything = {t.name for t in load_settings(str(path), environ={}).targets}
    assert everything == {"orders", "orders-replica", "cache"}
    assert sorted(n for share in shares for n in share) == sorted(everything)
    assert all(owner(n, replicas) == i for i, share in enumerate(shares) for n in share)


def test_prometheus_scrapes_every_replica_under_the_poolwatch_job() -> None:
    service = manifest("Service")
    labels = manifest("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= labels.items()
    assert manifest("StatefulSet")["spec"]["serviceName"] == service["metadata"]["name"]
    monitor = manifest("ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    # The alert rules select job="poolwatch": the job label comes from the kustomization's labels.
    pairs = manifest("Kustomization")["labels"][0]["pairs"]
    assert pairs[monitor["jobLabel"]] == "poolwatch"
