"""`unlearn-gateway serve --workers N`: several processes behind one port, one store, one /metrics.

The CLI is started for real (uvicorn's multi-process supervisor) in front of a small
OpenAI-compatible fake that answers "Paris it is.". Each request uses a fresh
connection, so requests land on different processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import ADMIN_TOKEN, admin_headers
from gateway.settings import DEFAULT_REFUSAL
from gateway_server import free_port
from test_upstream import FakeUpstream, chat_body

CLI = str(Path(sys.executable).with_name("unlearn-gateway"))
REQUESTS = 12


def _env() -> dict[str, str]:
    return {**os.environ, "UNLEARN_ADMIN_TOKEN": ADMIN_TOKEN, "UNLEARN_ALU": "false", "UNLEARN_ULD": "false",
            "UNLEARN_GUARD_SEMANTIC": "false", "HF_HUB_OFFLINE": "1"}


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "metrics").mkdir()
    with FakeUpstream("ok") as fake:
        port = free_port()
        proc = subprocess.Popen(
            [CLI, "serve", "--backend", "openai", "--upstream", fake.url, "--port", str(port), "--workers", "2",
             "--store", f"sqlite:///{tmp_path / 'targets.db'}", "--log-level", "warning"],
            env={**_env(), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}, cwd=tmp_path)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                assert proc.poll() is None, "the gateway exited during start-up"
                try:
                    if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the gateway did not become ready"
                time.sleep(0.3)
            while len(_metric_pids(tmp_path)) < 2:  # the other process may still be starting
                assert proc.poll() is None and time.monotonic() < deadline, "the second process did not start"
                time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _metric_pids(tmp_path: Path) -> set[str]:
    """The processes that have written metrics (each does when its app is built)."""
    return {f.stem.rsplit("_", 1)[1] for f in (tmp_path / "metrics").glob("counter_*.db")}


def _answers(url: str) -> list[str]:
    """REQUESTS chat answers, each on its own connection."""
    out = []
    for _ in range(REQUESTS):
        response = httpx.post(url + "/v1/chat/completions", json=chat_body(), timeout=30)
        assert response.status_code == 200, response.text
        out.append(response.json()["choices"][0]["message"]["content"])
    return out


def _counted_requests(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("unlearn_http_requests_total{") and 'route="/v1/chat/completions"' in line)


def test_workers_share_targets_and_report_one_set_of_metrics(two_workers: str, tmp_path: Path) -> None:
    assert len(_metric_pids(tmp_path)) == 2  # two serving processes, each writing its own metric values
    assert _answers(two_workers) == ["Paris it is."] * REQUESTS
    registered = httpx.post(two_workers + "/admin/v1/targets", json={"name": "Paris", "methods": ["guard"]},
                            headers=admin_headers(), timeout=60)
    assert registered.status_code == 201, registered.text
    # Whichever process answers, the target registered through one of them is enforced at once.
    assert _answers(two_workers) == [DEFAULT_REFUSAL] * REQUESTS
    # Every process's requests are in the one /metrics, whichever process serves the scrape (a
    # request is counted just after its response went out: allow that moment).
    deadline = time.monotonic() + 5
    while _counted_requests(two_workers) != 2 * REQUESTS:
        assert time.monotonic() < deadline, _counted_requests(two_workers)
        time.sleep(0.1)
    for _ in range(4):
        assert _counted_requests(two_workers) == 2 * REQUESTS


def test_workers_need_the_upstream_backend(tmp_path: Path) -> None:
    result = subprocess.run([CLI, "serve", "--backend", "local", "--workers", "2"], env=_env(), cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "--workers" in result.stderr
