"""Structured outputs on the embedded engine: xgrammar's token mask as one more logits hook.

xgrammar (what vLLM uses) compiles a JSON schema, or plain JSON for `json_object`,
into a matcher that says, before each token, which tokens keep the output valid.
`GrammarHook` runs after the unlearning hooks (GUARD's bans), so a token is
possible only if both allow it: bans and the grammar hold together. If they
leave nothing (the only valid continuation is banned), the hook allows only the
end of the answer: the answer stops short rather than write a banned token, and
the output gate still checks what was written.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

import torch

from gateway.backends.base import BackendError


class GrammarCompiler:
    """Compiles `response_format`s against one tokenizer; xgrammar is imported on first use."""

    def __init__(self, tokenizer: Any, stop_ids: Sequence[int]):
        self._tokenizer = tokenizer
        self._stop_ids = sorted(stop_ids)  # the engine's own end-of-answer tokens: the grammar ends with them
        self._compiler: Any = None
        self._lock = threading.Lock()

    def _ensure(self) -> Any:
        with self._lock:
            if self._compiler is None:
                import xgrammar

                info = xgrammar.TokenizerInfo.from_huggingface(self._tokenizer, vocab_size=len(self._tokenizer),
                                                               stop_token_ids=self._stop_ids or None)
                self._compiler = xgrammar.GrammarCompiler(info, max_threads=1)
            return self._compiler

    def compile(self, response_format: dict[str, Any]) -> Any:
        """A compiled grammar, or a 400 naming `response_format` when the schema cannot be compiled."""
        compiler = self._ensure()
        if response_format.get("type") == "json_object":  # any JSON object (xgrammar's builtin JSON allows arrays)
            return compiler.compile_json_schema(json.dumps({"type": "object"}), strict_mode=False)
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") or {"type": "object"}
        try:
            return compiler.compile_json_schema(json.dumps(schema), strict_mode=True)
        except Exception as exc:  # noqa: BLE001  xgrammar reports a schema it cannot use in several ways
            raise BackendError(f"'response_format.json_schema.schema' cannot be used for constrained decoding: "
                               f"{exc}", status=400, code="invalid_request", param="response_format") from None


class GrammarHook:
    """Masks every token the grammar forbids; one per sequence (the matcher is its state)."""

    def __init__(self, compiled: Any):
        import xgrammar

        self._xgr = xgrammar
        self._matcher = xgrammar.GrammarMatcher(compiled)
        self._vocab = compiled.tokenizer_info.vocab_size
        self._stop_ids = list(compiled.tokenizer_info.stop_token_ids)
        self._mask = xgrammar.allocate_token_bitmask(1, self._vocab)
        self._consumed = 0

    def __call__(self, prompt_ids: Sequence[int], output_ids: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        for token in output_ids[self._consumed:]:
            self._matcher.accept_token(int(token))
        self._consumed = len(output_ids)
        out = logits.clone()
        if self._matcher.is_terminated():
            return self._only_stop(out)
        self._matcher.fill_next_token_bitmask(self._mask)
        view = out[: self._vocab].unsqueeze(0)
        self._xgr.apply_token_bitmask_inplace(view, self._mask)
        out[self._vocab:] = float("-inf")
        if not torch.isfinite(out).any():  # the grammar's every continuation is banned: end here
            return self._only_stop(out)
        return out

    def _only_stop(self, logits: torch.Tensor) -> torch.Tensor:
        out = torch.full_like(logits, float("-inf"))
        out[self._stop_ids] = 0.0
        return out
