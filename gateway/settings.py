"""Gateway settings: CLI flags override `UNLEARN_*` environment variables, which override defaults."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_REFUSAL = "I'm sorry, but I can't help with that request."

log = logging.getLogger(__name__)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UNLEARN_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = Field(default=1, ge=1, description="server processes; more than 1 only with the openai backend")
    backend: Literal["local", "openai"] = "local"
    model: str | None = Field(default=None, description="HF model dir or .gguf; default: bundled SmolLM2")
    served_model_name: str | None = None
    upstream_url: str | None = None
    upstream_api_key: SecretStr | None = None
    store: str = "sqlite:///var/unlearn.db"
    cache_dir: Path = Path("var/models")
    admin_token: SecretStr | None = None
    insecure_admin: bool = False
    api_keys: str = Field(default="", description="comma-separated KEY or KEY:TENANT; empty = no client auth")
    metrics_token: SecretStr | None = Field(
        default=None, description="bearer token /metrics requires; with client keys set and no token, /metrics is off")
    fail_open: bool = False
    refusal_text: str = DEFAULT_REFUSAL
    refusal_finish_reason: Literal["stop", "content_filter"] = Field(
        default="stop", description="finish_reason of a refused answer; content_filter is Azure OpenAI's convention")
    metrics_target_ids: bool = Field(
        default=False, description="also count near-leaks per target id (one series per target: opt in)")
    canary_interval: float = Field(default=0.0, ge=0, description="seconds between leakage-canary runs; 0: off")
    canary_budget: int = Field(default=20, ge=1, description="canary probes per run (rotating over targets)")
    canary_max_tokens: int = Field(default=48, ge=1, description="max_tokens of a canary probe's answer")
    max_body_bytes: int = 1_048_576
    max_admin_body_bytes: int = 16_777_216
    default_max_tokens: int = 512
    max_n: int = 8
    max_num_seqs: int = Field(default=8, ge=1, description="sequences the embedded engine decodes as one batch")
    max_queue: int = 64
    threads: int | None = Field(
        default=1, ge=1, description="torch threads of the embedded engine; 1 measured best (bench/bench_engine.py)")
    guard: bool = Field(default=True, description="enable the GUARD plug-in")
    guard_semantic: bool = Field(default=True, description="MiniLM detection and sentence checks")
    guard_semantic_runtime: Literal["onnx", "torch"] = Field(
        default="onnx", description="MiniLM on ONNX Runtime (one thread, exported once into cache_dir) or torch")
    guard_mode: Literal["ban", "penalty"] = "ban"
    guard_refuse_named: bool = Field(default=True, description="refuse up front when a user turn names a target")
    guard_detect_threshold: float = Field(default=0.52, ge=0.0, le=1.0)
    guard_sentence_threshold: float = Field(default=0.52, ge=0.0, le=1.0)
    alu: bool = Field(default=True, description="enable the ALU multi-agent rewrite plug-in")
    alu_k: int = Field(default=5, ge=1, le=32, description="ALU rewrites per draft")
    alu_j: int = Field(default=3, ge=1, le=32, description="ALU rewrites composed into the answer")
    alu_tau: float = Field(default=4.0, ge=1.0, le=5.0, description="ALU minimum mean critic score (1-5)")
    alu_top_n: int = Field(default=3, ge=1, le=64, description="ALU targets in play shown to the agents")
    log_level: str = "info"
    upstream_kind: Literal["openai", "vllm"] = Field(
        default="openai", description="vllm: also send bad_words, return_token_ids and vllm_xargs for the plug-in")
    upstream_tokenizer: str | None = Field(
        default=None, description="HF dir or .gguf of the upstream's model: GUARD bans token ids of this vocab")
    upstream_timeout: float = Field(default=60.0, gt=0, description="seconds to wait for each upstream read")
    upstream_connect_timeout: float = Field(default=5.0, gt=0)
    upstream_start_timeout: float = Field(default=120.0, ge=0, description="wait this long for /v1/models at start")
    upstream_max_connections: int = Field(default=100, ge=1)
    # ULD (uld/): logit-difference decoding with a trained assistant; training jobs run live
    uld: bool = Field(default=True, description="enable the ULD plug-in (targets opt in with methods ['uld'])")
    uld_alpha: float = Field(default=0.75, ge=0.0, description="scores = target - alpha * assistant")
    uld_filter_r: float = Field(default=1e-2, ge=0.0, le=1.0, description="plausibility filter; 0 disables it")
    uld_layers: int | None = Field(default=None, ge=1, description="assistant layers; default num_layers // 4")
    uld_mode: Literal["uld", "whp"] = "uld"
    uld_scope: Literal["all", "in_play"] = "all"
    adapter_dir: Path = Field(default=Path("var/adapters"), description="trained ULD adapters (shared by replicas)")
    uld_worker: bool = Field(default=True, description="train queued ULD jobs on this replica")
    uld_device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
                            description="where ULD assistants train: auto (CUDA if present), cpu, cuda[:N]")
    uld_epochs: int = Field(default=4, ge=1)
    uld_lr: float = Field(default=1e-3, gt=0)
    uld_retain_weight: float = Field(default=5.0, ge=0)
    uld_lora_r: int = Field(default=16, ge=1)
    uld_lora_alpha: int = Field(default=32, ge=1)
    uld_batch_size: int = Field(default=4, ge=1)
    uld_max_examples: int = Field(default=32, ge=1)
    uld_poll_seconds: float = Field(default=1.0, gt=0)
    uld_job_timeout: float = Field(default=3600.0, gt=0, description="a running job silent this long is retried")

    @field_validator("api_keys")
    @classmethod
    def _keys_parse(cls, value: str) -> str:
        parse_api_keys(value)
        return value

    def tenant_by_key(self) -> dict[str, str]:
        return parse_api_keys(self.api_keys)


def parse_api_keys(value: str) -> dict[str, str]:
    """`key1:tenantA,key2` → {"key1": "tenantA", "key2": "default"}."""
    keys: dict[str, str] = {}
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        key, _, tenant = item.partition(":")
        if not key:
            raise ValueError("UNLEARN_API_KEYS has an entry with an empty key")
        keys[key] = tenant or "default"
    return keys
