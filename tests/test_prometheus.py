"""A real Prometheus scrapes real gateways; every dashboard panel and alert expression returns data.

Two gateways share a Redis store (started here): `open` (fail-open, a stand-in engine that
names the target, so the output gate catches near-leaks) and `closed` (fail-closed, the upstream
backend in front of a fake OpenAI server, with SmolLM2's tokenizer so GUARD's bans are
exported). Traffic covers every event kind: plan refusals, gate catches, answers, a 4xx, a canary
run, a store outage (fail-open answers on one, 503s on the other) and a target change. Prometheus
(Debian's package; `.ci/run` installs it) scrapes both every second with the metrics token and
loads `docker/prometheus/alerts.yml`. The leakage panels are drawn to a PNG for a person to see.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
import yaml
from conftest import ADMIN_TOKEN, REPO, admin_headers
from fake_backend import FAKE_MODEL, FakeBackend
from gateway_server import GatewayServer, free_port
from redis_server import RedisServer, redis_binary
from test_upstream import MODEL as UPSTREAM_MODEL
from test_upstream import FakeUpstream

from gateway.backends.model_files import resolve_model_dir
from gateway.settings import Settings

DOCKER = REPO / "docker"
ALERTS = DOCKER / "prometheus" / "alerts.yml"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "unlearn-gateway.json"
PNG = REPO / "var" / "leakage-panels.png"
TOKEN = "scrape-token"
NAME = "Zorblax Quintavern"
VARIABLES = {"$tenant": ".*", "$method": ".*"}


class CountingBackend(FakeBackend):
    """FakeBackend with the embedded engine's public counters, so the engine panels have data."""

    queued = 0
    running = 0

    def __init__(self, text: str):
        super().__init__(text)
        self.generated_tokens = 0

    async def generate(self, request):
        async for chunk in super().generate(request):
            self.generated_tokens += 1
            yield chunk


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (.ci/run installs Debian's prometheus package)", pytrace=False)
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("prometheus")
    redis = RedisServer(redis_binary())
    redis.start()
    common = {"store": redis.url(0), "admin_token": ADMIN_TOKEN, "metrics_token": TOKEN, "guard_semantic": False,
              "alu": False, "uld": False}
    upstream = FakeUpstream("ok").__enter__()
    servers = {
        "open": GatewayServer(Settings(fail_open=True, **common),
                              backend=CountingBackend(f"It was {NAME}, of course.")).start(),
        "closed": GatewayServer(Settings(backend="openai", upstream_url=upstream.url, upstream_timeout=30.0,
                                         upstream_tokenizer=str(resolve_model_dir(None, REPO / "var" / "models")),
                                         **common)).start(),
    }
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{
            "job_name": "unlearn-gateway", "metrics_path": "/metrics",
            "authorization": {"type": "Bearer", "credentials": TOKEN},
            "static_configs": [{"targets": [f"127.0.0.1:{s.port}" for s in servers.values()]}],
        }],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp / "prometheus.log").open("wb")
    proc = subprocess.Popen([_binary("prometheus"), f"--config.file={tmp / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: proc.poll() is None and httpx.get(url + "/-/ready", timeout=2).status_code == 200,
              "Prometheus did not become ready", lambda: (tmp / "prometheus.log").read_text()[-2000:])
        _wait(lambda: _query(url, 'count(up{job="unlearn-gateway"} == 1)') == [2.0], "the gateways were not scraped")
        yield {"prometheus": url, "redis": redis, "started": time.time(), **servers}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for server in servers.values():
            server.stop()
        upstream.__exit__(None, None, None)
        redis.close()


def _wait(ready, message: str, details=lambda: "", timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ready():
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{message}\n{details()}", pytrace=False)
        time.sleep(0.25)


def _query(url: str, expr: str) -> list[float]:
    answer = httpx.get(url + "/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", (expr, answer)
    return [float(r["value"][1]) for r in answer["data"]["result"]]


def _chat(server: GatewayServer, prompt: str, model: str = FAKE_MODEL, **extra) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", timeout=30, json={
        "model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 16, **extra})


@pytest.fixture(scope="module")
def traffic(stack: dict) -> dict:
    """Every event kind once or more, spread over a few scrapes; then a few more scrapes."""
    opened, closed, redis = stack["open"], stack["closed"], stack["redis"]
    created = httpx.post(opened.url + "/admin/v1/targets", headers=admin_headers(), timeout=30, json={
        "name": NAME, "facts": [f"{NAME} invented the quintoscope"]})
    assert created.status_code == 201, created.text
    for _ in range(3):
        assert _chat(opened, "Tell me a story.").status_code == 200  # the gate catches the name: a near-leak
        assert _chat(opened, f"Who is {NAME}?").status_code == 200  # refused at plan
        assert _chat(opened, "What is a quintoscope?", stream=True).status_code == 200  # cue term in play
        answered = _chat(closed, "What is the capital of France?", model=UPSTREAM_MODEL)
        assert answered.status_code == 200, answered.text
        assert _chat(opened, "hi", n=1000).status_code == 400
        time.sleep(1.2)
    canary = httpx.post(opened.url + "/admin/v1/canary:run", headers=admin_headers(), timeout=120)
    assert canary.status_code == 200 and canary.json()["leaked_before_gate"] >= 1, canary.text
    time.sleep(1.2)
    redis.stop()
    try:
        for _ in range(3):
            assert _chat(opened, "Tell me a story.").status_code == 200  # fail-open: served, and counted
            assert _chat(closed, "Anything?", model=UPSTREAM_MODEL).status_code == 503  # fail-closed
            time.sleep(1.2)
    finally:
        redis.start()
    for server in (opened, closed):  # reads succeed again
        _chat(server, "Tell me a story.", model=FAKE_MODEL if server is opened else UPSTREAM_MODEL)
    time.sleep(3)
    return stack


def _panels() -> list[dict]:
    return json.loads(DASHBOARD.read_text())["panels"]


def _substitute(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def test_every_dashboard_panel_returns_data(traffic: dict):
    url = traffic["prometheus"]
    empty = []
    for panel in _panels():
        for target in panel["targets"]:
            if not _query(url, _substitute(target["expr"])):
                empty.append(f"{panel['title']}: {target['expr']}")
    dashboard = json.loads(DASHBOARD.read_text())
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation and not _query(url, _substitute(annotation["expr"])):
            empty.append(f"annotation {annotation['name']}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    for variable in dashboard["templating"]["list"]:  # Grafana's label_values(metric, label)
        metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["query"]["query"]).groups()
        values = httpx.get(f"{url}/api/v1/label/{label}/values", params={"match[]": metric}).json()["data"]
        assert values, f"variable {variable['name']} has no values"


def test_leakage_figures_are_what_the_traffic_did(traffic: dict):
    url = traffic["prometheus"]
    near = _query(url, 'sum(unlearn_near_leaks_total{method="output_gate"})')
    assert near and near[0] >= 3  # three gate catches before the outage, more during it
    assert _query(url, 'sum(unlearn_interventions_total{stage="plan",method="guard",action="refused"})') == [3.0]
    assert _query(url, "sum(unlearn_fail_open_answers_total)")[0] >= 3  # the first read after the restart may fail too
    assert _query(url, 'sum(unlearn_http_requests_total{status="503"})')[0] >= 3
    assert _query(url, 'sum(unlearn_targets_in_play_total{kind="cue_term"})')[0] >= 3
    assert _query(url, "max_over_time(max(unlearn_store_staleness_seconds)[1m:1s])")[0] > 0
    assert _query(url, 'sum(unlearn_canary_probes_total{outcome="caught_by_gate"})')[0] >= 1
    assert _query(url, "max(unlearn_canary_leaked_to_client)") == [0.0]


def _alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_alert_rules_pass_promtool():
    result = subprocess.run([_binary("promtool"), "check", "rules", str(ALERTS)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_expression_returns_data_and_fail_open_fires(traffic: dict):
    url = traffic["prometheus"]
    loaded = httpx.get(url + "/api/v1/rules").json()["data"]["groups"]
    health = {rule["name"]: rule["health"] for group in loaded for rule in group["rules"]}
    assert set(health) == {rule["alert"] for rule in _alert_rules()} and set(health.values()) == {"ok"}, health
    for rule in _alert_rules():
        measure = re.fullmatch(r"(.*?)\s*(?:>|<|>=|<=|==|!=)\s*[0-9.]+\s*", rule["expr"].strip(), re.S)
        assert measure, f"{rule['alert']}: expected `measure <op> threshold`"
        assert _query(url, measure[1]), f"{rule['alert']}: {measure[1]} returns no data"
    assert _query(url, next(r["expr"] for r in _alert_rules() if r["alert"] == "UnlearnFailOpenServing"))


def test_leakage_panels_render_to_png(traffic: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    url = traffic["prometheus"]
    panels = [p for p in _panels() if re.search(r"leak|changed or refused|fail-open", p["title"], re.I)]
    figure, axes = plt.subplots(len(panels), 1, figsize=(10, 3.2 * len(panels)), squeeze=False)
    start, end = traffic["started"], time.time()
    drawn = 0
    for ax, panel in zip(axes[:, 0], panels):
        for target in panel["targets"]:
            answer = httpx.get(url + "/api/v1/query_range", timeout=10, params={
                "query": _substitute(target["expr"]), "start": start, "end": end, "step": "1s"}).json()
            for series in answer["data"]["result"]:
                xs = [float(t) - start for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                label = re.sub(r"\{\{(\w+)\}\}", lambda m: series["metric"].get(m[1], ""), target["legendFormat"])
                ax.plot(xs, ys, label=label)
                drawn += 1
        ax.set_title(panel["title"])
        ax.set_xlabel("seconds since the stack started")
        ax.legend(fontsize="small", loc="upper left")
    figure.tight_layout()
    PNG.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(PNG, dpi=80)
    plt.close(figure)
    print(f"leakage panels drawn to {PNG}")
    assert drawn >= len(panels) and PNG.stat().st_size > 10_000
