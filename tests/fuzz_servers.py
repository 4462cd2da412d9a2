"""Gateways for the fuzzers: the embedded engine on a tiny random model, and the upstream path.

The fuzzers look for 5xx, not for good answers, so the engine runs a two-layer, 16-wide Llama with
random weights and SmolLM2's real tokenizer and chat template: every line of the engine path
(tokenising, sampling with seeds, logit_bias, logprobs, stop strings, GUARD's token bans) runs for
real at a fraction of the model's cost, and a 128-token context bounds every answer.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from conftest import ADMIN_TOKEN, admin_headers
from gateway_server import GatewayServer, free_port

from gateway.backends.local import LocalEngine
from gateway.backends.model_files import resolve_model_dir
from gateway.settings import Settings

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = "tiny-random-smollm2"
UPSTREAM_MODEL = "fake-model"  # what bench/fake_upstream.py serves
TARGETS = [{"name": "Zorblax Quintavern", "aliases": ["Zorblax"], "facts": ["Zorblax invented the quintaphone"]},
           {"name": "The Hobbit", "description": "a novel by J.R.R. Tolkien"}]


def tiny_model_dir(folder: Path) -> Path:
    """A random-weight Llama with SmolLM2's tokenizer, written once per run."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    source = resolve_model_dir(None, REPO / "var" / "models")  # the converted SmolLM2 (tokenizer, template)
    config = AutoConfig.from_pretrained(source)
    config.update({"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "num_key_value_heads": 1, "head_dim": 8, "max_position_embeddings": 128})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    target = folder / TINY_MODEL
    model.save_pretrained(target)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        if (source / name).exists():
            shutil.copy(source / name, target / name)
    return target


@pytest.fixture(scope="session")
def tiny_engine(tmp_path_factory) -> Iterator[LocalEngine]:
    engine = LocalEngine(str(tiny_model_dir(tmp_path_factory.mktemp("tiny"))), REPO / "var" / "models",
                         max_num_seqs=4, threads=1)
    asyncio.run(engine.start())
    yield engine
    asyncio.run(engine.close())


def fuzz_settings(store: Path, **overrides) -> Settings:
    """GUARD's token bans and gate on, its MiniLM off; ALU/ULD off (they multiply model calls); n ≤ 3."""
    values = {"store": f"sqlite:///{store}", "admin_token": ADMIN_TOKEN, "guard_semantic": False, "alu": False,
              "uld": False, "default_max_tokens": 16, "max_n": 3, **overrides}
    return Settings(**values)


def register_targets(server: GatewayServer) -> None:
    with server.client() as client:
        for target in TARGETS:
            response = client.post("/admin/v1/targets", headers=admin_headers(), json=target)
            assert response.status_code == 201, response.text


@pytest.fixture(scope="module")
def engine_gateway(tiny_engine, tmp_path_factory) -> Iterator[GatewayServer]:
    server = GatewayServer(fuzz_settings(tmp_path_factory.mktemp("fuzz-local") / "t.db"), backend=tiny_engine)
    server.start()
    register_targets(server)
    yield server
    server.stop()


class FakeUpstreamServer:
    """`bench/fake_upstream.py` (fixed tokens, no model) on a free loopback port, in a thread."""

    def __init__(self, tokens: int = 8):
        import sys

        sys.path.insert(0, str(REPO / "bench"))
        from fake_upstream import make_app

        self.port = free_port()
        self._server = uvicorn.Server(uvicorn.Config(make_app(tokens), host="127.0.0.1", port=self.port,
                                                     log_level="warning"))
        self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve()), daemon=True)

    def __enter__(self) -> FakeUpstreamServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("fake upstream did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def upstream_gateway(tmp_path_factory) -> Iterator[GatewayServer]:
    with FakeUpstreamServer() as upstream:
        settings = fuzz_settings(tmp_path_factory.mktemp("fuzz-upstream") / "t.db", backend="openai",
                                 upstream_url=f"http://127.0.0.1:{upstream.port}/v1", upstream_start_timeout=10)
        server = GatewayServer(settings).start()
        register_targets(server)
        yield server
        server.stop()
