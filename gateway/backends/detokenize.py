"""Incremental detokenisation with stop strings, for token-by-token streaming.

Byte-level BPE tokens can end mid-character, and a stop string can arrive split
over several tokens. Text is therefore released only once it is whole and can
no longer be the beginning of a stop string.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas (vLLM's prefix/read offset scheme)."""

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()):
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self._stop = [s for s in stop if s]
        self._pending = ""  # decoded but held back: could be the start of a stop string
        self.stopped = False

    def add(self, token_id: int) -> str:
        """Feed one token; return the text that may be released now."""
        self._ids.append(token_id)
        prefix_text = self._tokenizer.decode(self._ids[self._prefix_offset : self._read_offset])
        full_text = self._tokenizer.decode(self._ids[self._prefix_offset :])
        if len(full_text) <= len(prefix_text) or full_text.endswith("\ufffd"):
            return ""  # an incomplete UTF-8 sequence: wait for the next token
        delta = full_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        return self._apply_stop(delta)

    def flush(self) -> str:
        """End of generation: release whatever is held (it did not become a stop string)."""
        out, self._pending = self._pending, ""
        return out

    def _apply_stop(self, delta: str) -> str:
        if not self._stop:
            return delta
        text = self._pending + delta
        cut = min((i for i in (text.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._pending = ""
            return text[:cut]
        hold = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(text)), hold, -1):
                if text.endswith(s[:n]):
                    hold = n
                    break
        self._pending = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold]
