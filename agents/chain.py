"""The ALU agent chain: AuditErase → Critic → Composer, each an LLM call through a `Backend`.

After "Agents Are All You Need for LLM Unlearning" (arXiv 2502.00406). The
vanilla answer is the draft the pipeline already generated; this module takes
it from there:

1. **audit**: which subjects (the targets in play, labelled T1…Tn) the request
   or the draft reveals, directly or indirectly, or NONE;
2. **rewrite** (the erase half of AuditErase): k diverse rewrites of the draft
   with everything about the revealed subjects removed, or REFUSE;
3. **critic**: a 1–5 score per rewrite (1 = a subject is evident, 5 = no trace);
4. **composer**: the top j rewrites merged into one answer adding nothing new,
   or the generic refusal (None) when their mean score is below τ.

Built to survive a weak model: every output is parsed defensively and any doubt
ends in the refusal, never in the unfiltered draft. Deterministic checks back
the agents up: a rewrite or a composed answer that contains a registered name,
the name placeholder, or prompt fences is discarded without asking the critic.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from agents import prompts as P
from gateway.backends.base import Backend, GenerationRequest, SamplingParams
from gateway.metrics import GatewayMetrics
from guards.gate_method import NameIndex
from guards.output_gate import ForbiddenMatcher

if TYPE_CHECKING:
    from agents.alu_method import AluConfig

log = logging.getLogger(__name__)

AGENTS = ("audit", "rewrite", "critic", "composer")
PLACEHOLDER = "[removed]"


@dataclass(frozen=True)
class AgentConfig:
    """One agent: its prompt templates, few-shot examples and sampling.

    `examples` are (template fields, expected reply) pairs, shown as earlier chat
    turns; their data fields are fenced exactly like the real ones. Small models
    copy the reply format from them far more reliably than from instructions.
    """

    system: str
    user: str
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    examples: tuple[tuple[Mapping[str, Any], str], ...] = ()


# -- parsing -------------------------------------------------------------------------------------

_SCORE_PATTERNS = (
    re.compile(r"(?:score|rating|rated|grade)\s*(?:is|of|=|:|-)?\s*\**\s*([0-9]+)(?:\.[0-9]+)?", re.I),
    re.compile(r"(?<![0-9.])([0-9]+)(?:\.[0-9]+)?\s*(?:/|out\s+of)\s*5(?![0-9])", re.I),
    re.compile(r"\*\*\s*([0-9]+)(?:\.[0-9]+)?\s*\*\*"),
)
_BARE_SCORE = re.compile(r"\W*([1-5])(?:\.[0-9]+)?\W*")


def parse_score(text: str | None) -> int:
    """The critic's 1–5 score. Garbage, out-of-range or missing scores count as 1 (subject evident).

    "Score: 4", "4/5", "4 out of 5", "**5**", "Rating = 3" and a bare "4" are understood; when a
    reply holds several different scores the lowest wins (an echoed scale must not pass as a 5).
    """
    if not text:
        return 1
    found: list[int] = []
    for pattern in _SCORE_PATTERNS:
        found += [int(m.group(1)) for m in pattern.finditer(text)]
    if not found:
        bare = _BARE_SCORE.fullmatch(text.strip())
        if bare:
            found.append(int(bare.group(1)))
    if not found or any(not 1 <= s <= 5 for s in found):
        return 1
    return min(found)


@dataclass(frozen=True)
class AuditResult:
    verdict: Literal["revealed", "none", "unparsed"]
    labels: tuple[str, ...] = ()


_LABEL = re.compile(r"\bT\s*-?\s*([0-9]{1,3})\b", re.I)
_REVEALED_LINE = re.compile(r"revealed\s*[:=\-]?\s*([^\n]*)", re.I)
_NONE_WORD = re.compile(r"\b(none|nothing|no|n/a)\b", re.I)


def parse_audit(text: str | None, subjects: Sequence[P.Subject]) -> AuditResult:
    """Which subjects the auditor says are revealed.

    Labels (T1, t 2) and subject names or aliases anywhere in the reply count as revealed,
    so an auditor that merely echoes the list errs on the safe side. NONE counts only when the
    reply names no subject at all; anything else is "unparsed" (the caller then assumes all).
    """
    if not text or not text.strip():
        return AuditResult("unparsed")
    by_label = {s.label.upper(): s.label for s in subjects}
    labels = {by_label[f"T{int(m.group(1))}"] for m in _LABEL.finditer(text) if f"T{int(m.group(1))}" in by_label}
    if subjects:
        index = NameIndex.build(s.target for s in subjects)
        ids = index.targets_in(text)
        labels |= {s.label for s in subjects if s.target.id in ids}
    if labels:
        return AuditResult("revealed", tuple(s.label for s in subjects if s.label in labels))
    line = _REVEALED_LINE.search(text)
    rest = line.group(1) if line else text
    if _NONE_WORD.search(rest) and len(rest.split()) <= 4:
        return AuditResult("none")
    return AuditResult("unparsed")


_LEAD_LABEL = re.compile(
    r"^\s*\**\s*(?:rewritten|merged|final|new)?\s*(?:answer|response|rewrite)\s*:\s*\**\s*", re.I)
_REFUSE = re.compile(r"\b" + P.REFUSE_TOKEN + r"\b")


_FENCE_LINE = re.compile(r"^[ \t]*<{2,}[ \t]*(?:BEGIN|END)\b[^\n<>]*>*[ \t]*$\n?", re.I | re.M)
# The upper-case words of our own templates: an output holding them is echoing the prompt.
_PROMPT_ECHO = re.compile(r"\b(?:SUBJECTS?|REVEALED|CANDIDATES?|REQUEST|RESPONSE|DATA)\b|\[T[0-9]+\]")


def clean_output(text: str | None) -> str:
    """An agent's answer without echoed fence lines, a leading "Rewritten answer:" label, quotes, spaces.

    What remains is still judged in full: an echoed draft holds the name placeholder, for instance.
    """
    text = _FENCE_LINE.sub("", text or "").strip()
    text = _LEAD_LABEL.sub("", text, count=1).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text


def is_refusal(text: str) -> bool:
    """The rewrite agent's REFUSE (upper-case word anywhere, or a reply starting with it in any case)."""
    return bool(_REFUSE.search(text)) or text.lstrip(" *\"'").upper().startswith(P.REFUSE_TOKEN)


def mask(text: str, matcher: ForbiddenMatcher, placeholder: str = PLACEHOLDER) -> str:
    """Every registered name in `text` replaced by the placeholder (so rewriters cannot copy it)."""
    if matcher.empty:
        return text
    out: list[str] = []
    pos = 0
    while (hit := matcher.first_match(text, min_end=pos)) is not None:
        start = max(hit.start, pos)
        out.append(text[pos:start])
        out.append(placeholder)
        pos = max(hit.end, pos + 1)
    out.append(text[pos:])
    return "".join(out)


# -- the chain ----------------------------------------------------------------------------------


@dataclass
class Rewrite:
    index: int
    text: str
    verdict: Literal["ok", "refused", "empty", "leak", "error"]
    score: int | None = None


@dataclass
class ChainResult:
    """What the chain decided. `text` None means the generic refusal."""

    text: str | None
    outcome: str
    calls: int = 0
    audit: AuditResult | None = None
    rewrites: list[Rewrite] = field(default_factory=list)
    latency: dict[str, list[float]] = field(default_factory=dict)


class _Refuse(Exception):
    def __init__(self, reason: str):
        self.reason = reason


class AluChain:
    """One run of the agents for one draft. Build a fresh one per draft (it holds per-run state)."""

    def __init__(self, config: AluConfig, backends: Mapping[str, Backend], default_backend: Backend,
                 metrics: GatewayMetrics, *, subjects: Sequence[P.Subject], conversation: Sequence[dict[str, str]],
                 names: ForbiddenMatcher):
        self.config = config
        self._backends = backends
        self._default = default_backend
        self.metrics = metrics
        self.subjects = list(subjects)
        self.conversation = list(conversation)
        self.names = names  # every registered name of the tenant: must never reach the answer
        self.nonce = P.new_nonce()  # replaced in run() by one derived from the conversation and draft
        self._sem = asyncio.Semaphore(max(1, config.concurrency))
        self.result = ChainResult(text=None, outcome="started")

    # -- one agent call ---------------------------------------------------------------------

    def backend(self, agent: str) -> Backend:
        return self._backends.get(agent, self._default)

    async def _call(self, agent: str, messages: list[dict[str, str]], *, max_tokens: int,
                    temperature: float, top_p: float, seed: int) -> str | None:
        """Text of one agent call; None when the backend failed (callers treat it as a refusal)."""
        request = GenerationRequest(
            params=SamplingParams(max_tokens=max(1, max_tokens), temperature=temperature, top_p=top_p, seed=seed),
            messages=messages, request_id=f"alu-{agent}-{self.nonce}",
        )
        async with self._sem:
            started = time.monotonic()
            status = "error"
            try:
                async with aclosing(self.backend(agent).generate(request)) as chunks:
                    text = "".join([chunk.text async for chunk in chunks])
                status = "ok"
                return text
            except asyncio.CancelledError:
                status = "cancelled"
                raise
            except Exception as exc:  # a failing agent must never let the draft through
                log.warning("ALU %s agent call failed: %s", agent, exc)
                return None
            finally:
                elapsed = time.monotonic() - started
                self.result.calls += 1
                self.result.latency.setdefault(agent, []).append(elapsed)
                self.metrics.alu_agent_calls.labels(agent=agent, status=status).inc()
                self.metrics.alu_agent_latency.labels(agent=agent).observe(elapsed)

    def _messages(self, cfg: AgentConfig, fields: Mapping[str, Any]) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": cfg.system}]
        for example, reply in cfg.examples:
            messages.append({"role": "user", "content": cfg.user.format_map(self._fenced(example))})
            messages.append({"role": "assistant", "content": reply})
        messages.append({"role": "user", "content": cfg.user.format_map(self._fenced(fields))})
        return messages

    def _fenced(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Template values: data fields fenced as data, the rest (subjects, style) as they are."""
        c = self.config
        out = dict(fields)
        if "request" in out:
            out["request"] = P.fence("REQUEST", out["request"], self.nonce, c.max_request_chars)
        if "draft" in out:
            out["draft"] = P.fence("ANSWER", out["draft"], self.nonce, c.max_draft_chars)
        if "response" in out:
            out["response"] = P.fence("RESPONSE", out["response"], self.nonce, c.max_draft_chars)
        if "candidates" in out:
            out["candidates"] = "\n\n".join(
                P.fence(f"CANDIDATE {i}", text, self.nonce, c.max_draft_chars)
                for i, text in enumerate(out["candidates"], 1)
            )
        return out

    async def _agent(self, agent: str, cfg: AgentConfig, fields: Mapping[str, Any], *, seed: int,
                     max_tokens: int | None = None) -> str | None:
        return await self._call(agent, self._messages(cfg, fields),
                                max_tokens=min(cfg.max_tokens, max_tokens or cfg.max_tokens),
                                temperature=cfg.temperature, top_p=cfg.top_p, seed=seed)

    def _budget(self, agent: str, text: str) -> int:
        """Output tokens an agent needs to restate `text`: rewrites need not be longer than the draft."""
        tokenizer = getattr(self.backend(agent), "tokenizer", None)
        try:
            tokens = len(tokenizer.encode(text, add_special_tokens=False)) if tokenizer is not None else None
        except Exception:
            tokens = None
        if tokens is None:
            tokens = len(text) // 3 + 1
        return tokens * 3 // 2 + 16

    # -- deterministic checks ----------------------------------------------------------------

    def reveals(self, text: str) -> bool:
        """True when `text` must not reach a client: a registered name, the placeholder, prompt fences
        or the templates' upper-case keywords (an agent echoing its prompt)."""
        lowered = text.lower()
        return (self.names.first_match(text) is not None or PLACEHOLDER in lowered or self.nonce in text
                or "<<" in text or ">>" in text or _PROMPT_ECHO.search(text) is not None)

    # -- the steps ---------------------------------------------------------------------------

    async def run(self, draft: str) -> ChainResult:
        key = c.fence_key.encode() if (c := self.config).fence_key else None
        self.nonce = P.new_nonce(*(m.get("content", "") for m in self.conversation), draft, key=key)
        try:
            self.result.text = await self._run(draft)
            if self.result.outcome == "started":
                self.result.outcome = "rewritten"
        except _Refuse as refuse:
            self.result.text, self.result.outcome = None, "refused:" + refuse.reason
        return self.result

    async def _run(self, draft: str) -> str:
        c = self.config
        request = P.render_conversation(self.conversation)
        subjects_all = P.subjects_block(self.subjects, c.max_description_chars)

        # 1. audit
        raw = await self._agent("audit", c.audit, {"subjects": subjects_all, "request": request, "draft": draft},
                                seed=c.seed)
        audit = parse_audit(raw, self.subjects)
        self.result.audit = audit
        named = {s.label for s in self.subjects if NameIndex.build([s.target]).targets_in(request + "\n" + draft)}
        if audit.verdict == "none" and not named and c.trust_audit_none:
            self.result.outcome = "audit_clear"
            return draft
        labels = set(audit.labels) | named if audit.verdict == "revealed" else {s.label for s in self.subjects}
        erase = [s for s in self.subjects if s.label in labels] or self.subjects
        subjects = P.subjects_block(erase, c.max_description_chars)

        # 2. k diverse rewrites of the (name-masked) draft
        masked_request, masked_draft = mask(request, self.names), mask(draft, self.names)
        budget = self._budget("rewrite", masked_draft)
        styles = c.rewrite_styles or ("",)
        outputs = await asyncio.gather(*(
            self._agent("rewrite", c.rewrite, {"subjects": subjects, "request": masked_request, "draft": masked_draft,
                                               "style": styles[i % len(styles)]},
                        seed=c.seed + i, max_tokens=budget)
            for i in range(c.k)
        ))
        rewrites = [self._judge_rewrite(i, out) for i, out in enumerate(outputs)]
        self.result.rewrites = rewrites
        for rw in rewrites:
            self.metrics.alu_rewrites.labels(verdict=rw.verdict).inc()
        usable = [rw for rw in rewrites if rw.verdict == "ok"]
        ranked = [rw for rw in rewrites if rw.verdict in ("ok", "leak")]  # a leak ranks with score 1
        refused = len(rewrites) - len(ranked)  # REFUSE, empty or failed: votes that nothing can be said
        if not usable:
            raise _Refuse("no_rewrite")
        if refused > len(ranked):
            raise _Refuse("agents_refused")

        # 3. critic, stopping as soon as the top j can no longer reach τ
        await self._score(usable, ranked, subjects)
        top = sorted((rw for rw in ranked if rw.score is not None), key=lambda rw: (-rw.score, rw.index))[:c.j]
        if not top or sum(rw.score for rw in top) / len(top) < c.tau:
            raise _Refuse("low_score")
        top = [rw for rw in top if rw.verdict == "ok"]  # a leak may count in the mean, never in the answer
        if not top:
            raise _Refuse("low_score")

        # 4. composer
        if len(top) == 1:
            return top[0].text
        candidates = [rw.text for rw in top]
        raw = await self._agent("composer", c.composer, {"request": masked_request, "candidates": candidates},
                                seed=c.seed, max_tokens=max(self._budget("composer", t) for t in candidates))
        composed = clean_output(raw)
        if raw is None or not composed or is_refusal(composed):
            return top[0].text  # vetted and scored: adds nothing beyond what the critic passed
        if self.reveals(composed):
            raise _Refuse("composer_leak")
        return composed

    def _judge_rewrite(self, index: int, raw: str | None) -> Rewrite:
        if raw is None:
            return Rewrite(index, "", "error")
        text = clean_output(raw)
        if not text:
            return Rewrite(index, text, "empty")
        if is_refusal(text):
            return Rewrite(index, text, "refused")
        if self.reveals(text):
            return Rewrite(index, text, "leak", score=1)
        return Rewrite(index, text, "ok")

    async def _score(self, usable: list[Rewrite], ranked: list[Rewrite], subjects: str) -> None:
        """Critic scores of the usable rewrites, in order; no further call once the top j of the
        ranked ones (usable and leaked, a leak scoring 1) can no longer reach τ."""
        c = self.config
        queue = list(usable)

        def hopeless() -> bool:
            """Even if every unscored rewrite got a 5, the top j would stay below τ."""
            best = sorted((rw.score if rw.score is not None else 5 for rw in ranked), reverse=True)[:c.j]
            return sum(best) / len(best) < c.tau

        async def worker() -> None:
            while queue and not hopeless():
                rw = queue.pop(0)
                raw = await self._agent("critic", c.critic, {"subjects": subjects, "response": rw.text}, seed=c.seed)
                rw.score = parse_score(raw)

        await asyncio.gather(*(worker() for _ in range(min(max(1, c.concurrency), len(usable)))))


def build_subjects(targets: Sequence[Any]) -> list[P.Subject]:
    return [P.Subject(f"T{i}", t) for i, t in enumerate(targets, 1)]

