"""Prometheus metrics, one registry per app instance (tests run several apps in one process).

With several server processes (`--workers`), `PROMETHEUS_MULTIPROC_DIR` is set before
they start: every process writes its values there and `/metrics`, whichever process
answers it, reports the sum over all of them (prometheus-client's multiprocess mode).

Leakage metrics (README, *Metrics*): label values are bounded by configuration, never by
traffic: `tenant` comes from `UNLEARN_API_KEYS`, `method`/`stage`/`kind` from fixed sets, and a
target id only with `UNLEARN_METRICS_TARGET_IDS`. Series with known labels start at zero
(`initialise`), so `rate()` sees the first event. What is read from live objects (the engine's
queue, the store's staleness, job states) is collected at scrape time (`LiveCollector`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.metrics_live import LiveCollector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
COUNT_BUCKETS = (0, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 50000)
STAGE_ACTIONS = {"plan": ("refused",), "decode": ("changed",), "gate": ("refused",), "rewrite": ("changed", "refused")}
"""Where an answer was changed or refused: refused up front, steered while decoding (a hook changed
the most likely token), caught by the last-line output gate, or rewritten (ALU)."""
DETECTION_KINDS = {1.0: "name", 0.9: "cue_term", 0.8: "misspelling"}
"""GUARD's fixed detection scores (`guards.guard_method`: names 1.0, CUE_SCORE, FUZZY_SCORE); any
other score is a MiniLM cosine. tests/test_leakage_metrics.py keeps the two in step."""
SEMANTIC = "semantic"
OUTCOMES = ("answered", "refused")
CANARY_OUTCOMES = ("clean", "caught_by_gate", "leaked_to_client", "error")


def detection_kind(score: float) -> str:
    return DETECTION_KINDS.get(score, SEMANTIC)


class GatewayMetrics:
    def __init__(self, *, target_ids: bool = False) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.live = LiveCollector()
        r.register(self.live)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
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
        self.store_resets = Counter(
            "unlearn_store_resets", "Times the target store was seen reset or rolled back (new epoch, lower version)",
            registry=r)
        self.store_reset_pending = Gauge(
            "unlearn_store_reset_pending", "1 while requests fail closed on a reset store no operator accepted yet",
            registry=r, multiprocess_mode="max")
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

        # -- leakage (per tenant, method, stage) --------------------------------------------------
        self.targets_in_play = Counter(
            "unlearn_targets_in_play", "Targets detection put in play, summed over requests, by detection kind",
            ["tenant", "kind"], registry=r)
        self.interventions = Counter(
            "unlearn_interventions", "Answers a method changed or refused, by pipeline stage",
            ["tenant", "stage", "method", "action"], registry=r)
        self.near_leaks = Counter(
            "unlearn_near_leaks",
            "Answers the last-line output gate refused: each method protecting the answer let a leak through it",
            ["tenant", "method"], registry=r)
        self.protected_answers = Counter(
            "unlearn_protected_answers",
            "Finished answers (choices) a method protected: the leakage rate's denominator",
            ["tenant", "method"], registry=r)
        self.answers = Counter(
            "unlearn_answers", "Finished answers (choices) by outcome", ["tenant", "outcome"], registry=r)
        self.banned_sequences = Histogram(
            "unlearn_banned_sequences", "Forbidden token sequences enforced while decoding one answer (GUARD)",
            ["tenant"], buckets=COUNT_BUCKETS, registry=r)
        self.fail_open_answers = Counter(
            "unlearn_fail_open_answers", "Answers sent while the target store was unreadable (fail-open mode)",
            ["tenant"], registry=r)
        self.pipeline_stage = Histogram(
            "unlearn_pipeline_stage_seconds", "Time the pipeline added before decoding, by stage (detect, plan)",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram(
            "unlearn_time_to_first_token_seconds", "From the request's planning to its first released text",
            buckets=LATENCY_BUCKETS, registry=r)
        self.near_leaks_by_target = Counter(
            "unlearn_near_leaks_by_target", "Near-leaks by target in play (UNLEARN_METRICS_TARGET_IDS only)",
            ["tenant", "target"], registry=r) if target_ids else None
        # -- leakage canary (gateway/canary.py) ----------------------------------------------------
        self.canary_probes = Counter(
            "unlearn_canary_probes", "Canary probes by outcome (clean, caught_by_gate, leaked_to_client, error)",
            ["tenant", "outcome"], registry=r)
        self.canary_leaks = Counter(
            "unlearn_canary_leaks", "Canary probes whose draft (before_gate) or answer (to_client) held a leak term, "
            "by the probed target's methods", ["tenant", "method", "stage"], registry=r)
        self.canary_leaked_to_client = Gauge(
            "unlearn_canary_leaked_to_client", "Probe answers of the last canary run that leaked to the client",
            registry=r, multiprocess_mode="max")
        self.canary_last_run = Gauge(
            "unlearn_canary_last_run_timestamp_seconds", "When the last canary run finished", registry=r,
            multiprocess_mode="max")
        # -- store and targets ---------------------------------------------------------------------
        self.snapshot_rebuild = Histogram(
            "unlearn_snapshot_rebuild_seconds", "Time to bring the target snapshot up to a new store version",
            buckets=LATENCY_BUCKETS, registry=r)
        self.target_set_version = Gauge(
            "unlearn_target_set_version", "Store version of the targets this replica enforces", registry=r,
            multiprocess_mode="max")
        self.job_duration = Histogram(
            "unlearn_method_job_seconds", "Duration of a method's background job (ULD training), by outcome",
            ["method", "outcome"], buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600), registry=r)

    def initialise(self, *, tenants: Iterable[str], methods: Iterable[str]) -> None:
        """Create every series whose labels are known up front at zero: `rate()` then sees the
        first event (a series born at 1 has no earlier sample to differ from)."""
        methods = list(methods)
        for stage in ("plan", "gate", "rewrite"):
            self.refusals.labels(stage=stage)
        for tenant in tenants:
            for kind in (*DETECTION_KINDS.values(), SEMANTIC):
                self.targets_in_play.labels(tenant, kind)
            for outcome in OUTCOMES:
                self.answers.labels(tenant, outcome)
            self.fail_open_answers.labels(tenant)
            for outcome in CANARY_OUTCOMES:
                self.canary_probes.labels(tenant, outcome)
            for method in methods:
                self.near_leaks.labels(tenant, method)
                for stage in ("before_gate", "to_client"):
                    self.canary_leaks.labels(tenant, method, stage)
                self.protected_answers.labels(tenant, method)
                for stage, actions in STAGE_ACTIONS.items():
                    for action in actions:
                        self.interventions.labels(tenant, stage, method, action)
        for method in methods:
            for outcome in ("ready", "failed"):
                self.job_duration.labels(method, outcome)

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
