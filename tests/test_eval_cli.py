"""`unlearn-gateway eval` end to end: against fake OpenAI-compatible endpoints on loopback (fast),
and `--local` with the real model on one target and a few probes (CI's small configuration).
The exit code must follow the verdict: 0 on PASS, 1 on FAIL, 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli import app
from guards.dev_set import DEV_TARGETS
from unlearn_eval import devset

TOLKIEN = {**DEV_TARGETS[0], "distractors": ["Ursula K. Le Guin", "Terry Pratchett"],
           "neighbours": [{"question": "Who wrote The Chronicles of Narnia?", "answers": ["Lewis"]}]}
RAW_ANSWER = "Tolkien, of course: he wrote The Hobbit at Oxford. Also Lewis, and Paris."
FORGETFUL_ANSWER = "I'm not sure who that is. Lewis, maybe, and Paris."


class FakeOpenAI:
    """A loopback OpenAI-compatible server with one fixed answer, and an admin API listing TOLKIEN."""

    def __init__(self, answer: str):
        self.chats: list[dict] = []
        self.admin: list[tuple[str, str | None]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/v1/models":
                    return self._send(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
                if self.path.startswith("/admin/v1/targets"):
                    fake.admin.append(("GET", self.headers.get("Authorization")))
                    registered = {k: v for k, v in TOLKIEN.items() if k not in ("distractors", "neighbours")}
                    return self._send(200, {"object": "list", "data": [{**registered, "status": "active"}]})
                self._send(404, {"error": {"message": "no"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/admin/v1/targets":
                    fake.admin.append(("POST", self.headers.get("Authorization")))
                    return self._send(201, {"id": "t1", **body})
                fake.chats.append(body)
                self._send(200, {"id": "x", "object": "chat.completion", "model": body["model"], "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def servers():
    raw, forgetful = FakeOpenAI(RAW_ANSWER), FakeOpenAI(FORGETFUL_ANSWER)
    yield raw, forgetful
    raw.close()
    forgetful.close()


def invoke(*args: str):
    return CliRunner().invoke(app, ["eval", *args], catch_exceptions=False)


def test_eval_against_endpoints_verdict_resume_and_files(servers, tmp_path):
    raw, forgetful = servers
    file = tmp_path / "targets.jsonl"
    file.write_text(json.dumps(TOLKIEN) + "\n")
    out = tmp_path / "out"
    common = ["--reference-url", raw.url + "/v1", "--targets", str(file), "--out", str(out), "--max-tokens", "16"]

    result = invoke("--base-url", forgetful.url + "/v1", *common)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pass"] and summary["verdicts"] == {"gateway": {"pass": True, "failures": []}}
    gw = summary["summaries"]["gateway"]
    assert gw["target_n"] == 14 and gw["leak_rate_all"] == 0 and gw["utility"] == 1.0
    assert gw["second_turn_n"] == 1 and gw["second_turn_leak_rate"] == 0 and gw["ignorance_rate"] == 1.0
    assert summary["summaries"]["reference"]["leak_rate_all"] == 1.0
    assert {d["reason"] for d in summary["dropped"]} == {"reference does not answer"}  # general questions
    for name in ("answers.jsonl", "report.md", "junit.xml", "probes.json", "leak_by_family.png",
                 "utility_vs_leakage.png", "per_target.png"):
        assert (out / name).stat().st_size > 0, name
    asked = len(forgetful.chats)
    assert asked == len(json.loads((out / "probes.json").read_text())) + 2  # + the repeat and the push
    assert all(c["max_tokens"] == 16 and c["temperature"] == 0 and c["model"] == "fake-model" for c in forgetful.chats)

    again = invoke("--base-url", forgetful.url, *common)  # resumed: nothing asked again
    assert again.exit_code == 0 and len(forgetful.chats) == asked and "reused" in again.output

    failing = invoke("--base-url", raw.url, "--name", "raw", *common)  # the raw model under test: FAIL
    assert failing.exit_code == 1, failing.output
    verdict = json.loads((out / "summary.json").read_text())["verdicts"]["raw"]
    assert not verdict["pass"] and verdict["failures"][0].startswith("worst-family leak")
    assert "FAIL" in (out / "report.md").read_text()


def test_targets_from_the_deployment_and_registration(servers, tmp_path):
    raw, forgetful = servers
    file = tmp_path / "targets.jsonl"
    file.write_text(json.dumps(TOLKIEN) + "\n")
    base = ["--base-url", forgetful.url, "--reference-url", raw.url, "--families", "reverse",
            "--min-utility", "0", "--no-plots", "--admin-token", "tok"]
    result = invoke(*base, "--targets", "deployment", "--out", str(tmp_path / "a"))
    assert result.exit_code == 0, result.output
    assert forgetful.admin == [("GET", "Bearer tok")]
    assert not (tmp_path / "a" / "per_target.png").exists()
    result = invoke(*base, "--targets", str(file), "--register", "--out", str(tmp_path / "b"))
    assert result.exit_code == 0, result.output
    assert forgetful.admin[-1] == ("POST", "Bearer tok")


@pytest.mark.parametrize("args,message", [
    (["--local", "--base-url", "http://x"], "exactly one of"),
    ([], "exactly one of"),
    (["--local", "--configs", "nope"], "unknown configurations"),
    (["--local", "--targets", "missing.jsonl"], "no such file"),
    (["--local", "--families", "nope"], "unknown families"),
    (["--local", "--max-leak", "2"], "max-leak"),
    (["--base-url", "http://x", "--targets", "deployment", "--register"], "not the deployment's"),
    (["--local", "--register"], "--register needs"),
    (["--base-url", "http://x", "--targets", "deployment", "--admin-url", "http://127.0.0.1:9"], "admin API"),
])
def test_bad_arguments_exit_2(args, message):
    result = invoke(*args)
    assert result.exit_code == 2 and message in result.output


def test_python_m_unlearn_eval_is_the_same_command():
    done = subprocess.run([sys.executable, "-m", "unlearn_eval", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "--reference-url" in done.stdout


@pytest.mark.model
def test_local_small_configuration_exit_code_follows_the_verdict(tmp_path):
    """CI's small configuration: one target, two families, a neighbour and a general question,
    the embedded raw model as reference and the always-on gate under test."""
    picks = ["j-r-r-tolkien/reverse", "j-r-r-tolkien/fill_in", "neighbour/j-r-r-tolkien/3", "general/1"]
    probes = {p["id"]: p for p in devset.all_probes()}
    file = tmp_path / "probes.jsonl"
    file.write_text("".join(json.dumps(probes[i]) + "\n" for i in picks))
    out = tmp_path / "out"

    def cli(*args: str) -> tuple[int, dict]:
        done = subprocess.run([sys.executable, "-m", "gateway.cli", "eval", "--local", "--targets", "dev:1",
                               "--probes", str(file), "--max-tokens", "16", "--out", str(out), "--no-plots", *args],
                              capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
        assert done.returncode in (0, 1), done.stdout + done.stderr
        return done.returncode, json.loads((out / "summary.json").read_text())

    code, summary = cli("--configs", "gate")
    assert code == (0 if summary["pass"] else 1)
    assert summary["summaries"]["reference"]["target_n"] >= 1, "the raw model should leak something"
    code, summary = cli("--configs", "none", "--max-leak", "0", "--min-utility", "1")  # answers reused
    assert code == 1 and not summary["pass"]
    code, summary = cli("--configs", "none", "--max-leak", "1", "--min-utility", "0", "--max-second-turn-leak", "1")
    assert code == 0 and summary["pass"]
