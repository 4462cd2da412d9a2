"""The compose stack and the Grafana dashboard stay in step with the code."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from gateway.metrics import GatewayMetrics

DOCKER = Path(__file__).resolve().parents[1] / "docker"


def _compose_config() -> dict:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is not installed (.ci/run installs it with apt)", pytrace=False)
    env = {**os.environ, "UNLEARN_ADMIN_TOKEN": "x", "UNLEARN_METRICS_TOKEN": "m"}
    result = subprocess.run([binary, "-f", str(DOCKER / "compose.yaml"), "config"], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def _mounts(service: dict) -> dict[str, str]:
    """source -> target of a service's volumes (docker-compose prints them as `source:target[:mode]`)."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            out[volume["source"]] = volume["target"]
        else:
            source, target = volume.split(":")[:2]
            out[source] = target
    return out


def test_compose_file_is_valid_for_docker_compose():
    config = _compose_config()
    assert {"vllm", "redis", "gateway-a", "gateway-b", "nginx", "prometheus", "grafana"} <= set(config["services"])
    for replica in ("gateway-a", "gateway-b"):  # replicas must share one Redis store and one upstream
        environment = config["services"][replica]["environment"]
        assert environment["UNLEARN_STORE"].startswith("redis://redis:")
        assert environment["UNLEARN_BACKEND"] == "openai"


def test_compose_images_are_pinned_and_every_service_has_a_healthcheck():
    for name, service in _compose_config()["services"].items():
        image = service.get("image", "")
        assert image and ":" in image and not image.endswith(":latest"), f"{name}: unpinned image {image!r}"
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_vllm_is_reachable_only_through_the_gateway():
    config = _compose_config()
    vllm = config["services"]["vllm"]
    assert "ports" not in vllm and set(vllm["networks"]) == {"internal"}
    assert config["networks"]["internal"].get("internal") is True
    published = {name for name, s in config["services"].items() if s.get("ports")}
    assert published == {"nginx", "prometheus", "grafana"}, published  # the gateways too sit behind nginx
    for name in published:
        assert name == "nginx" or "gateway" not in name
    nginx = (DOCKER / "nginx" / "nginx.conf").read_text()
    assert "server gateway-a:8000" in nginx and "server gateway-b:8000" in nginx
    assert re.search(r"location = /metrics \{ return 404; \}", nginx), "clients must not read /metrics"


def test_gateways_share_the_served_models_tokenizer():
    config = _compose_config()
    vllm = config["services"]["vllm"]
    assert any("logits-processors=gateway.backends.vllm_plugin:UnlearnLogitsProcessor" in arg for arg in vllm["command"])
    model_arg = next(arg.split("=", 1)[1] for arg in vllm["command"] if arg.startswith("--model="))
    served = next(arg.split("=", 1)[1] for arg in vllm["command"] if arg.startswith("--served-model-name="))
    vllm_volumes = _mounts(vllm)
    for replica in ("gateway-a", "gateway-b"):
        service = config["services"][replica]
        environment = service["environment"]
        assert environment["UNLEARN_UPSTREAM_TOKENIZER"] == model_arg  # the very files vLLM loads
        assert environment["UNLEARN_SERVED_MODEL_NAME"] == served
        assert environment["UNLEARN_UPSTREAM_KIND"] == "vllm"
        volumes = _mounts(service)
        assert volumes.get("models") == vllm_volumes.get("models") == "/models"


def test_state_lives_in_volumes_and_redis_appends_only():
    config = _compose_config()
    redis = config["services"]["redis"]
    assert "--appendonly" in redis["command"] and "yes" in redis["command"]
    for name, target in (("redis", "/data"), ("prometheus", "/prometheus"), ("grafana", "/var/lib/grafana")):
        mounts = _mounts(config["services"][name])
        assert mounts.get(f"{name}-data") == target, f"{name} keeps its data outside a named volume"
        assert f"{name}-data" in config["volumes"]


@pytest.mark.parametrize("secret", ["UNLEARN_ADMIN_TOKEN", "UNLEARN_METRICS_TOKEN"])
def test_compose_refuses_to_start_without_its_secrets(secret):
    binary = shutil.which("docker-compose") or pytest.fail("docker-compose missing", pytrace=False)
    env = {**os.environ, "UNLEARN_ADMIN_TOKEN": "x", "UNLEARN_METRICS_TOKEN": "m"}
    del env[secret]
    result = subprocess.run([binary, "-f", str(DOCKER / "compose.yaml"), "config"], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode != 0 and secret in result.stderr


def test_prometheus_scrapes_the_gateways_with_the_metrics_token():
    config = _compose_config()
    prometheus = config["services"]["prometheus"]
    scrape = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in scrape["scrape_configs"] if j["job_name"] == "unlearn-gateway")
    token_file = job["authorization"]["credentials_file"]
    assert f"> {token_file}" in " ".join(prometheus["command"])
    assert prometheus["environment"]["UNLEARN_METRICS_TOKEN"] == "m"
    for replica in ("gateway-a", "gateway-b"):
        assert config["services"][replica]["environment"]["UNLEARN_METRICS_TOKEN"] == "m"
    canaries = [r for r in ("gateway-a", "gateway-b")
                if float(config["services"][r]["environment"].get("UNLEARN_CANARY_INTERVAL", 0)) > 0]
    assert canaries == ["gateway-a"], "exactly one replica runs the leakage canary"


DASHBOARD = DOCKER / "grafana" / "dashboards" / "unlearn-gateway.json"


def _exported_names() -> set[str]:
    """Every series name the gateway can export: its registry with every source attached."""
    metrics = GatewayMetrics(target_ids=True)
    metrics.initialise(tenants=["default"], methods=["output_gate"])
    snapshots = SimpleNamespace(loaded=None, store_ok=True, last_store_success=1.0)
    metrics.live.watch(engine=SimpleNamespace(queued=0, running=0, generated_tokens=0), snapshots=snapshots,
                       job_methods=["uld"])
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)", metrics.render().decode(), re.M):
        names.add(name)
        if kind == "counter":
            names.add(name + "_total")
        if kind == "histogram":
            names.update({name + "_bucket", name + "_sum", name + "_count"})
    return names


def _dashboard_exprs(dashboard: dict) -> list[str]:
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]] + [
        a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]


def test_dashboard_queries_only_metrics_the_gateway_exports():
    dashboard = json.loads(DASHBOARD.read_text())
    used = {m for expr in _dashboard_exprs(dashboard) for m in re.findall(r"\b(?:unlearn|process)_\w+", expr)}
    assert used, "the dashboard queries nothing"
    exported = _exported_names()
    assert used <= exported, f"dashboard uses metrics the gateway does not export: {sorted(used - exported)}"


def test_dashboard_structure_and_datasources():
    dashboard = json.loads(DASHBOARD.read_text())
    sources = yaml.safe_load((DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uids = {d["uid"] for d in sources["datasources"] if d["type"] == "prometheus"}
    provider = yaml.safe_load((DOCKER / "grafana" / "provisioning" / "dashboards" / "unlearn.yml").read_text())
    mounted = {target for source, target in _mounts(_compose_config()["services"]["grafana"]).items()
               if Path(source).resolve() == DASHBOARD.parent.resolve()}
    assert {p["options"]["path"] for p in provider["providers"]} <= mounted
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"tenant", "method"} <= set(variables)
    for v in variables.values():
        assert v["datasource"]["uid"] in uids and v["allValue"] == ".*"
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": panel["datasource"]["uid"]}
        assert panel["datasource"]["uid"] in uids, panel["title"]
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and 0 <= grid["x"] and grid["x"] + grid["w"] <= 24
        assert panel["targets"], f"{panel['title']} queries nothing"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
    exprs = " ".join(_dashboard_exprs(dashboard))
    for needed in ("unlearn_near_leaks_total", "unlearn_protected_answers_total", "unlearn_fail_open_answers_total",
                   "unlearn_targets_in_play_total", "unlearn_store_staleness_seconds", "unlearn_method_jobs",
                   "unlearn_time_to_first_token_seconds_bucket", 'status=~"4.."', 'status=~"5.."'):
        assert needed in exprs, f"the dashboard shows no {needed}"
    assert 'tenant=~"$tenant"' in exprs and 'method=~"$method"' in exprs


def test_prometheus_scrapes_both_replicas_and_vllm_and_loads_the_alerts():
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert sorted(jobs["unlearn-gateway"]) == ["gateway-a:8000", "gateway-b:8000"]
    assert jobs["vllm"] == ["vllm:8000"]
    targets = set(_mounts(_compose_config()["services"]["prometheus"]).values())
    assert set(config["rule_files"]) <= targets, "the alert rules file is not mounted where Prometheus loads it"
