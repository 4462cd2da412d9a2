"""Next-token selection for the embedded engine: request penalties, hooks, logprobs, sampling.

Order matters and is fixed here so every backend path behaves alike:
model logits → logit_bias and presence/frequency penalties → unlearning hooks →
logprobs (so banned tokens can never show up in them) → temperature/top-p → pick.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch

from gateway.backends.base import LogitsHook, SamplingParams


def apply_request_penalties(logits: torch.Tensor, params: SamplingParams, output_ids: Sequence[int]) -> torch.Tensor:
    if params.logit_bias:
        ids = torch.tensor(list(params.logit_bias.keys()), dtype=torch.long)
        bias = torch.tensor(list(params.logit_bias.values()), dtype=logits.dtype)
        logits = logits.clone()
        logits[ids] += bias
    if output_ids and (params.presence_penalty or params.frequency_penalty):
        counts = Counter(output_ids)
        ids = torch.tensor(list(counts.keys()), dtype=torch.long)
        freq = torch.tensor(list(counts.values()), dtype=logits.dtype)
        logits = logits.clone()
        logits[ids] -= params.frequency_penalty * freq + params.presence_penalty
    return logits


def apply_hooks(
    logits: torch.Tensor, hooks: Sequence[LogitsHook], prompt_ids: Sequence[int], output_ids: Sequence[int]
) -> torch.Tensor:
    for hook in hooks:
        logits = hook(prompt_ids, output_ids, logits)
    return logits


def select_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """Greedy at temperature 0, otherwise nucleus sampling with the request's own RNG."""
    if params.temperature <= 0.0:
        return int(torch.argmax(logits))
    scaled = logits / params.temperature
    probs = torch.softmax(scaled, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        drop = cumulative - sorted_probs >= params.top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    if not torch.isfinite(probs).all() or float(probs.sum()) <= 0.0:
        return int(torch.argmax(logits))
    return int(torch.multinomial(probs, 1, generator=generator))


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1)


LOGPROB_MARGIN = 8
"""Alternatives fetched beyond `top_logprobs`: the output filter drops those that would complete a
forbidden string and refills from these, so the count a client sees never depends on its targets."""


def _margin(cap: int | None) -> int:
    """The margin a backend can afford under its cap (an API limit on alternatives), at least 1."""
    return LOGPROB_MARGIN if cap is None else max(1, min(LOGPROB_MARGIN, cap // 3))


def alternatives_to_fetch(requested: int, cap: int | None = None) -> int:
    """How many alternatives a backend should produce for `requested` ones (0 stays 0), at most `cap`."""
    if requested <= 0:
        return 0
    wanted = requested + _margin(cap)
    return wanted if cap is None else max(requested, min(wanted, cap))


def alternatives_shown(requested: int, cap: int | None = None) -> int:
    """How many alternatives the client gets: `requested`, less what the cap leaves of the margin.

    Under a cap (an upstream allows 20, OpenAI's legacy completions 5) a request near it has no room
    to refill dropped alternatives; showing what was fetched would make the count depend on what the
    filter dropped, i.e. on which targets exist. So the count shown is fixed by the request alone:
    every entry has exactly this many, with or without targets (fewer than asked only near the cap).
    """
    if requested <= 0 or cap is None:
        return requested
    return max(1, min(requested, cap - _margin(cap)))


def top_alternatives(logprobs: torch.Tensor, k: int) -> list[tuple[int, float]]:
    """Top-k (token id, logprob) pairs, never including tokens a hook removed (-inf)."""
    if k <= 0:
        return []
    values, ids = torch.topk(logprobs, k)
    return [(int(i), float(v)) for v, i in zip(values, ids) if torch.isfinite(v)]
