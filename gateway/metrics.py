"""Prometheus metrics, one registry per app instance (tests run several apps in one process).

With several server processes (`--workers`), `PROMETHEUS_MULTIPROC_DIR` is set before
they start: every process writes its values there and `/metrics`, whichever process
answers it, reports the sum over all of them (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "unlearn_http_requests", "HTTP requests by route and status", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "unlearn_http_request_duration_seconds", "Time to the response's first byte",
            ["route"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.completion_tokens = Counter("unlearn_completion_tokens", "Tokens generated", registry=r)
        self.prompt_tokens = Counter("unlearn_prompt_tokens", "Prompt tokens processed", registry=r)
        self.detections = Counter(
            "unlearn_requests_with_targets_in_play", "Requests where detection found a forget target", registry=r
        )
        self.refusals = Counter(
            "unlearn_refusals", "Answers replaced by the generic refusal, by pipeline stage", ["stage"], registry=r
        )
        self.store_errors = Counter("unlearn_store_errors", "Target store reads that failed", registry=r)
        self.upstream_ignored_controls = Counter(
            "unlearn_upstream_ignored_controls",
            "Upstream answers that contained a token the gateway had banned (logit_bias ignored); the gate still ran",
            registry=r,
        )
        # Every process reads the same store: the most recently set value is the current one.
        self.targets_active = Gauge("unlearn_targets_active", "Active forget targets (all tenants)", registry=r,
                                    multiprocess_mode="mostrecent")
        self.alu_requests = Counter(
            "unlearn_alu_requests", "Drafts the ALU agent chain handled, by outcome", ["outcome"], registry=r
        )
        self.alu_agent_calls = Counter(
            "unlearn_alu_agent_calls", "LLM calls made by ALU agents", ["agent", "status"], registry=r
        )
        self.alu_agent_latency = Histogram(
            "unlearn_alu_agent_duration_seconds", "Duration of one ALU agent call", ["agent"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.alu_rewrites = Counter(
            "unlearn_alu_rewrites", "Rewrites produced by the ALU AuditErase agent, by verdict", ["verdict"], registry=r
        )
        self.alu_refusals = Counter(
            "unlearn_alu_refusals", "ALU answers replaced by the generic refusal, by reason", ["reason"], registry=r
        )

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
