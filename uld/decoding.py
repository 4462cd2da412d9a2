"""ULD decoding: combine the served model's next-token scores with the assistants' (a LogitsHook).

ULD (Ji et al., NeurIPS 2024) trains a small *assistant* to remember exactly what must be
forgotten and to know nothing else; subtracting its logits from the served model's removes
the forget knowledge and leaves the rest alone (on everything else the assistant is flat, and a
flat vector changes no softmax):

    scores = target_logits - alpha * assistant_logits      (on the plausible tokens)

With several ULD targets (one assistant each, trained and hot-loaded per target) the assistant
term is, per candidate token, the *most* any assistant favours it over its own mean on the
candidates: max_k (a_k - mean(a_k)). For one assistant that is its logits up to a constant,
i.e. the paper's formula (the same softmax). A sum would add up every assistant's off-topic
deviations from flat: with the 7 dev targets it turned every answer into noise (eval: 0 % of
neighbour and general questions answered), while the max keeps each target's own push.

Plausibility filter (the "relative top" rule of the reference implementation): a token stays a
candidate when its target log-prob is within log(r) of the best one, or when it is among the
top int(r * V) tokens; every other token gets -inf. With r = 1e-2 and SmolLM2's 49,152-token
vocabulary at least 491 tokens remain candidates, so the subtraction never promotes a token the
served model finds implausible, yet it can always move away from the forgotten answer.

Because masked tokens end at -inf anyway, the assistant's LM head is evaluated only on the
candidate tokens (a gather of a few hundred rows instead of the whole vocabulary), which keeps
the assistant's cost per token at its transformer layers.

Optional "Who's Harry Potter" mode (Eldan & Russinovich, 2023), v_base - alpha * ReLU(v_reinforced
- v_base), with the same assistant machinery: the assistant *is* a logit difference (what the
forget data adds on top of knowing nothing), so v_reinforced - v_base := log(p_assistant / uniform)
= log_softmax(assistant) + log V, which is 0 where the assistant is flat and positive on the tokens
it learned for the target. Unlike ULD, WHP only pushes those tokens down and never promotes the
tokens the assistant disfavours. Scores are base log-probs minus alpha · max_k ReLU(boost_k).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    from uld.assistant import Assistant

Mode = Literal["uld", "whp"]
NEG_INF = float("-inf")


def plausible(logits: torch.Tensor, r: float, min_keep: int | None = None) -> torch.Tensor:
    """Boolean mask of candidate tokens: within log(r) of the best log-prob, or in the top int(r·V).

    r <= 0 disables the filter (every finite token is a candidate). Tokens an earlier hook
    removed (-inf) are never candidates.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    finite = torch.isfinite(logp)
    if r <= 0:
        return finite
    threshold = logp.max() + math.log(r)
    k = int(r * logits.shape[-1]) if min_keep is None else min_keep
    k = min(k, int(finite.sum()))
    if k > 0:
        kth = torch.topk(logp, k).values[-1]
        threshold = torch.minimum(threshold, kth)
    return (logp >= threshold) & finite


def assistant_term(candidate_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per candidate token, the most any assistant favours it over its own mean on the candidates."""
    centred = [a.float() - a.float().mean() for a in candidate_logits]
    return torch.stack(centred).amax(dim=0)


def uld_combine(target_logits: torch.Tensor, assistant_logits: Sequence[torch.Tensor], alpha: float,
                keep: torch.Tensor) -> torch.Tensor:
    """target − alpha · assistant term on the `keep` tokens, −inf elsewhere (full-vocabulary tensors)."""
    idx = keep.nonzero().squeeze(-1)
    out = torch.full_like(target_logits, NEG_INF, dtype=torch.float32)
    out[idx] = target_logits[idx].float() - alpha * assistant_term([a[idx] for a in assistant_logits])
    return out


def whp_combine(target_logits: torch.Tensor, assistant_logits: Sequence[torch.Tensor], alpha: float,
                keep: torch.Tensor) -> torch.Tensor:
    """log p_base − alpha · max_k ReLU(log p_assistant_k + log V) on the `keep` tokens, −inf elsewhere."""
    base = torch.log_softmax(target_logits.float(), dim=-1)
    log_v = math.log(base.shape[-1])
    boosts = torch.stack([torch.relu(torch.log_softmax(a.float(), dim=-1) + log_v) for a in assistant_logits])
    combined = base - alpha * boosts.amax(dim=0)
    out = torch.full_like(base, NEG_INF)
    out[keep] = combined[keep]
    return out


class UldHook:
    """Per-sequence LogitsHook: runs each assistant alongside the engine with its own KV cache.

    The engine calls it once per decode step with the prompt and the tokens generated so far;
    the hook feeds the assistants whatever they have not seen yet (the whole prompt on the
    first call, then the one new token), so each assistant does one forward per step.
    """

    def __init__(self, assistants: Sequence[Assistant], *, alpha: float = 0.75, filter_r: float = 1e-2,
                 mode: Mode = "uld", min_keep: int | None = None):
        self.assistants = list(assistants)
        self.alpha = alpha
        self.filter_r = filter_r
        self.mode = mode
        self.min_keep = min_keep
        self._states = [a.new_state() for a in self.assistants]
        self._fed = 0

    def _new_ids(self, prompt_ids: Sequence[int], output_ids: Sequence[int]) -> list[int]:
        n_prompt = len(prompt_ids)
        if self._fed < n_prompt:
            new = [*prompt_ids[self._fed:], *output_ids]
        else:
            new = list(output_ids[self._fed - n_prompt:])
        self._fed = n_prompt + len(output_ids)
        return new

    def __call__(self, prompt_ids: Sequence[int], output_ids: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        if not self.assistants:
            return logits
        new = self._new_ids(prompt_ids, output_ids)
        hidden = [a.advance(state, new) for a, state in zip(self.assistants, self._states)]
        keep = plausible(logits, self.filter_r, self.min_keep)
        if self.mode == "whp":
            return whp_combine(logits, [a.logits(h) for a, h in zip(self.assistants, hidden)], self.alpha, keep)
        # Only candidates survive: evaluate the assistants' head on them alone.
        idx = keep.nonzero().squeeze(-1)
        out = torch.full_like(logits, NEG_INF, dtype=torch.float32)
        term = assistant_term([a.logits(h, idx) for a, h in zip(self.assistants, hidden)])
        out[idx] = logits[idx].float() - self.alpha * term
        return out


class ForcedContinuation:
    """A LogitsHook that forces a fixed answer and records its log-probs under the hooks before it.

    Put it last in a request's hooks with `max_tokens = len(answer_ids)`: at step i it records
    log_softmax(scores)[answer_ids[i]] and leaves only that token. Used to measure what ULD does to
    the probability of a known answer (tests, benchmark), through the real engine loop.
    """

    def __init__(self, answer_ids: Sequence[int]):
        self.answer_ids = list(answer_ids)
        self.logprobs: list[float] = []

    def __call__(self, prompt_ids: Sequence[int], output_ids: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        token = self.answer_ids[min(len(output_ids), len(self.answer_ids) - 1)]
        self.logprobs.append(float(torch.log_softmax(logits.float(), dim=-1)[token]))
        forced = torch.full_like(logits, NEG_INF)
        forced[token] = 0.0
        return forced
