"""ALU as a pipeline plug-in: a multi-agent rewrite of the draft, no weight updates.

"Agents Are All You Need for LLM Unlearning" (arXiv 2502.00406), for serving:

* gated by the shared detection: the chain runs only when a target that lists
  "alu" is in play, so a clean prompt costs exactly the one answering call;
* only the top-N targets in play (by detection score) go into agent prompts:
  10,000 registered targets cost what 10 do;
* the pipeline generates the draft once (the vanilla agent) and hands it to
  this plug-in's rewriter; the composed answer still passes the output gate,
  and the rewriter itself refuses rather than return text holding a name;
* agents may run on another backend than the answering one (`agent_backends`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from agents import prompts as P
from agents.chain import AGENTS, AgentConfig, AluChain, ChainResult, build_subjects
from gateway.backends.base import Backend
from gateway.metrics import GatewayMetrics
from gateway.pipeline.methods import Detection, MethodPlan, RequestContext, Rewriter, UnlearningMethod
from gateway.store.models import ForgetTarget
from guards.gate_method import name_index

log = logging.getLogger(__name__)


def _audit() -> AgentConfig:
    return AgentConfig(P.AUDIT_SYSTEM, P.AUDIT_USER, max_tokens=16, temperature=0.0, examples=P.AUDIT_EXAMPLES)


def _rewrite() -> AgentConfig:
    return AgentConfig(P.REWRITE_SYSTEM, P.REWRITE_USER, max_tokens=192, temperature=0.7, top_p=0.95)


def _critic() -> AgentConfig:
    return AgentConfig(P.CRITIC_SYSTEM, P.CRITIC_USER, max_tokens=8, temperature=0.0, examples=P.CRITIC_EXAMPLES)


def _composer() -> AgentConfig:
    return AgentConfig(P.COMPOSER_SYSTEM, P.COMPOSER_USER, max_tokens=256, temperature=0.0)


@dataclass(frozen=True)
class AluConfig:
    """k rewrites, the top j composed if their mean critic score reaches τ; top_n targets in prompts.

    Agent `max_tokens` are ceilings: rewrites and the composed answer are also capped at about
    1.5× the text they restate. `concurrency` bounds parallel agent calls per request (1 suits the
    embedded engine, which decodes round-robin anyway; raise it for a batching upstream).
    `trust_audit_none`: the paper returns the draft when the auditor finds no target; off by
    default because detection already put a target in play and a weak auditor says NONE at random.
    Agent sampling is seeded (`seed`, +i for the i-th rewrite) and fence nonces are keyed hashes of
    the inputs, so a request gets the same answer again within a process; set `fence_key` (a
    secret) to make that hold across restarts and replicas.
    """

    k: int = 5
    j: int = 3
    tau: float = 4.0
    top_n: int = 3
    audit: AgentConfig = field(default_factory=_audit)
    rewrite: AgentConfig = field(default_factory=_rewrite)
    critic: AgentConfig = field(default_factory=_critic)
    composer: AgentConfig = field(default_factory=_composer)
    rewrite_styles: tuple[str, ...] = P.REWRITE_STYLES
    trust_audit_none: bool = False
    concurrency: int = 1
    seed: int = 0
    fence_key: str | None = None
    timeout_s: float | None = 300.0
    max_request_chars: int = 1500
    max_draft_chars: int = 2000
    max_description_chars: int = 240

    def __post_init__(self) -> None:
        if self.k < 1 or self.j < 1 or self.top_n < 1:
            raise ValueError("ALU needs k >= 1, j >= 1 and top_n >= 1")
        if not 1.0 <= self.tau <= 5.0:
            raise ValueError("ALU tau must lie between 1 and 5 (the critic's scale)")


class AluMethod(UnlearningMethod):
    """Opt-in (`default = False`): a target gets ALU only when its `methods` name "alu", because one
    ALU answer costs about 2k + 2 LLM calls instead of one."""

    name = "alu"
    default = False

    def __init__(self, config: AluConfig | None = None, backend: Backend | None = None, *,
                 metrics: GatewayMetrics | None = None, agent_backends: Mapping[str, Backend] | None = None):
        """`backend` runs the agents (normally the serving backend); `agent_backends` overrides it per agent."""
        self.config = config or AluConfig()
        unknown = set(agent_backends or ()) - set(AGENTS)
        if unknown:
            raise ValueError(f"unknown ALU agent(s) {sorted(unknown)}; agents: {list(AGENTS)}")
        if backend is None and set(agent_backends or ()) != set(AGENTS):
            raise ValueError("ALU needs a backend for its agents")
        self.backend = backend
        self.agent_backends = dict(agent_backends or {})
        self.metrics = metrics or GatewayMetrics()
        self.last_result: ChainResult | None = None  # the most recent run (tests and debugging)

    # -- planning -------------------------------------------------------------------------

    def plan(self, ctx: RequestContext, detection: Detection) -> MethodPlan | None:
        targets = self.in_play(ctx, detection, limit=self.config.top_n)
        if not targets:
            return None  # clean prompt: no rewriter, the answer streams untouched, zero extra calls
        return MethodPlan(rewriter=self.rewriter(ctx, targets))

    def rewriter(self, ctx: RequestContext, targets: list[ForgetTarget]) -> Rewriter:
        names = name_index(ctx.targets).matcher  # every registered name of the tenant

        async def rewrite(draft: str) -> str | None:
            chain = AluChain(self.config, self.agent_backends, self.backend, self.metrics,
                             subjects=build_subjects(targets), conversation=ctx.conversation, names=names)
            result = await self._run(chain, draft)
            self.last_result = result
            self.metrics.alu_requests.labels(outcome=result.outcome.partition(":")[0]).inc()
            if result.text is None:
                self.metrics.alu_refusals.labels(reason=result.outcome.partition(":")[2] or "unknown").inc()
            log.debug("ALU %s after %d agent calls", result.outcome, result.calls)
            return result.text

        return rewrite

    async def _run(self, chain: AluChain, draft: str) -> ChainResult:
        try:
            result = await asyncio.wait_for(chain.run(draft), self.config.timeout_s)
        except TimeoutError:
            result = chain.result
            result.text, result.outcome = None, "refused:timeout"
        except Exception:  # never the unfiltered draft: any failure is the refusal
            log.exception("ALU chain failed")
            result = chain.result
            result.text, result.outcome = None, "refused:error"
        if result.text is not None and chain.reveals(result.text):  # belt and braces over the chain's checks
            result.text, result.outcome = None, "refused:leak"
        return result
