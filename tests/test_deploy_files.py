"""The compose stack and the Grafana dashboard stay in step with the code."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from gateway.metrics import GatewayMetrics

DOCKER = Path(__file__).resolve().parents[1] / "docker"


def test_compose_file_is_valid_for_docker_compose():
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is not installed (.ci/run installs it with apt)", pytrace=False)
    env = {**os.environ, "UNLEARN_ADMIN_TOKEN": "x"}
    result = subprocess.run([binary, "-f", str(DOCKER / "compose.yaml"), "config"], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert {"vllm", "redis", "gateway-a", "gateway-b", "prometheus", "grafana"} <= set(config["services"])
    for replica in ("gateway-a", "gateway-b"):  # replicas must share one Redis store and one upstream
        environment = config["services"][replica]["environment"]
        assert environment["UNLEARN_STORE"].startswith("redis://redis:")
        assert environment["UNLEARN_BACKEND"] == "openai"


def test_compose_refuses_to_start_without_an_admin_token():
    binary = shutil.which("docker-compose") or pytest.fail("docker-compose missing", pytrace=False)
    env = {k: v for k, v in os.environ.items() if k != "UNLEARN_ADMIN_TOKEN"}
    result = subprocess.run([binary, "-f", str(DOCKER / "compose.yaml"), "config"], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode != 0 and "UNLEARN_ADMIN_TOKEN" in result.stderr


def test_dashboard_queries_only_metrics_the_gateway_exports():
    exported = set(re.findall(r"^# TYPE (\S+) (\S+)", GatewayMetrics().render().decode(), re.M))
    names = set()
    for name, kind in exported:
        names.add(name)
        if kind == "counter":
            names.add(name + "_total")
        if kind == "histogram":
            names.update({name + "_bucket", name + "_sum", name + "_count"})
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "unlearn-gateway.json").read_text())
    used = {m for panel in dashboard["panels"] for t in panel["targets"] for m in re.findall(r"unlearn_\w+", t["expr"])}
    assert used, "the dashboard queries nothing"
    assert used <= names, f"dashboard uses metrics the gateway does not export: {sorted(used - names)}"


def test_prometheus_scrapes_both_replicas():
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    targets = config["scrape_configs"][0]["static_configs"][0]["targets"]
    assert sorted(targets) == ["gateway-a:8000", "gateway-b:8000"]
