"""The llama.cpp peer (`python -m llama_cpp.server` on the bundled SmolLM2 GGUF) with a chosen chat format.

A missing package fails the tests, never skips them (`make upstream-peer` installs it).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from gateway.backends.model_files import default_gguf
from gateway_server import free_port

MODEL = "SmolLM2-135M-Instruct"


@contextmanager
def start_llama_server(workdir: Path, chat_format: str | None = None) -> Iterator[str]:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.fail("llama-cpp-python[server] is not installed: run `make upstream-peer`", pytrace=False)
    port = free_port()
    log_path = workdir / "server.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(default_gguf()), "--model_alias", MODEL,
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--seed", "0"]
    if chat_format:
        cmd += ["--chat_format", chat_format]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}",
                            pytrace=False)
            try:
                if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server not ready in 180 s:\n{log_path.read_text()[-3000:]}", pytrace=False)
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
