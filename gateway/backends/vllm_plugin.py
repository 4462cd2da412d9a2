"""vLLM plug-in: GUARD's forbidden-sequence ban applied inside vLLM, per request.

Deploy (vLLM with the V1 model runner, the `vllm.v1.sample.logits_processor` interface)::

    pip install unlearn-gateway          # or put this repository on vLLM's PYTHONPATH
    vllm serve HuggingFaceTB/SmolLM2-135M-Instruct \\
        --logits-processors gateway.backends.vllm_plugin:UnlearnLogitsProcessor

and run the gateway with `UNLEARN_BACKEND=openai UNLEARN_UPSTREAM_KIND=vllm`. The
gateway then sends every request's forbidden token sequences (GUARD's trie, in the
served model's token ids) as ``vllm_xargs = {"unlearn_banned_sequences": "[[ids...], ...]"}``;
vLLM hands them to this processor as ``SamplingParams.extra_args``. The value is a JSON
string because `vllm_xargs` only carries flat values; offline users of `vllm.LLM`
may pass the list of lists directly.

Semantics are those of `guards.token_trie.TrieRestriction` in ``ban`` mode: a
token is banned when it would complete a forbidden sequence given the tokens
before it (the prompt's tail counts, so a prompt ending in "J.R.R." cannot be
continued with " Tolkien"); single-token sequences are banned at every step.
Requests without the argument are untouched. There is no prefix penalty: vLLM
applies this in its batch, where a hard ban is what a processor does cheaply.

The module imports without vLLM (then a minimal local `LogitsProcessor`,
`BatchUpdate` and `MoveDirectionality` stand in, mirroring vLLM's), so the
gateway can import `XARGS_KEY` and the tests can drive the batch bookkeeping.
It depends only on torch: nothing from the gateway is imported into vLLM.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum, auto
from typing import Any

import torch

XARGS_KEY = "unlearn_banned_sequences"
"""The `vllm_xargs` / `SamplingParams.extra_args` key the gateway fills."""

_TABLE_CACHE_SIZE = 64

try:  # pragma: no cover - exercised only where vLLM is installed
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

    HAVE_VLLM = True
except ImportError:
    HAVE_VLLM = False

    class MoveDirectionality(Enum):  # type: ignore[no-redef]
        UNIDIRECTIONAL = auto()  # one-way move i1 -> i2
        SWAP = auto()  # two-way swap i1 <-> i2

    @dataclass(frozen=True)
    class BatchUpdate:  # type: ignore[no-redef]
        """Mirror of vLLM's: apply `removed`, then `added`, then `moved`."""

        batch_size: int
        removed: Sequence[int]
        added: Sequence[tuple[int, Any, list[int] | None, list[int]]]  # (index, params, prompt ids, output ids)
        moved: Sequence[tuple[int, int, Any]]  # (index 1, index 2, MoveDirectionality)

    class LogitsProcessor:  # type: ignore[no-redef]
        """Mirror of vLLM's abstract base class (V1 model runner)."""

        @classmethod
        def validate_params(cls, sampling_params: Any) -> None:
            return None

        def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
            raise NotImplementedError

        def apply(self, logits: torch.Tensor) -> torch.Tensor:
            raise NotImplementedError

        def is_argmax_invariant(self) -> bool:
            raise NotImplementedError

        def update_state(self, batch_update: BatchUpdate | None) -> None:
            raise NotImplementedError


# -- the ban table ---------------------------------------------------------------------------


class BanTable:
    """Forbidden sequences as {prefix: ids that would complete it}; immutable, shared by requests.

    A decode step looks up the context's suffixes of each prefix length present
    (a handful of dict lookups), so its cost does not depend on the number of
    sequences. Same bans as an Aho-Corasick walk, without the automaton.
    """

    __slots__ = ("completions", "prefix_lengths", "max_prefix", "num_sequences")

    def __init__(self, sequences: Sequence[Sequence[int]]):
        by_prefix: dict[tuple[int, ...], set[int]] = {}
        count = 0
        for seq in sequences:
            ids = tuple(int(t) for t in seq)
            if not ids:
                continue
            if any(t < 0 for t in ids):
                raise ValueError("token ids must be non-negative")
            by_prefix.setdefault(ids[:-1], set()).add(ids[-1])
            count += 1
        self.completions = {prefix: tuple(sorted(ids)) for prefix, ids in by_prefix.items()}
        self.prefix_lengths = tuple(sorted({len(p) for p in by_prefix}))
        self.max_prefix = self.prefix_lengths[-1] if self.prefix_lengths else 0
        self.num_sequences = count

    def banned_after(self, context: Sequence[int]) -> list[int]:
        """Ids that would complete a forbidden sequence right after `context` (its tail suffices)."""
        found: list[int] = []
        n = len(context)
        for k in self.prefix_lengths:
            if k > n:
                break
            ids = self.completions.get(tuple(context[n - k :]) if k else ())
            if ids:
                found.extend(ids)
        return list(dict.fromkeys(found)) if len(self.prefix_lengths) > 1 else found


def parse_sequences(value: Any) -> list[list[int]]:
    """The xargs value: a JSON string (what the gateway sends) or a list of lists of token ids."""
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"{XARGS_KEY} must be JSON: {exc}") from None
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(seq, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in seq)
        for seq in value
    ):
        raise ValueError(f"{XARGS_KEY} must be a list of lists of non-negative token ids")
    return [list(seq) for seq in value]


def _extra_args(params: Any) -> dict:
    extra = getattr(params, "extra_args", None)
    return extra if isinstance(extra, dict) else {}


@dataclass
class _Row:
    """One request in the persistent batch: its bans and a live view of its tokens."""

    table: BanTable
    prompt_tail: tuple[int, ...]
    output_ids: list[int]  # vLLM's running list of the request's output tokens (a reference)

    def context(self) -> list[int]:
        need = self.table.max_prefix
        if not need:
            return []
        out = self.output_ids[-need:] if self.output_ids else []
        missing = need - len(out)
        return [*self.prompt_tail[max(0, len(self.prompt_tail) - missing) :], *out] if missing > 0 else list(out)


# -- the processor ---------------------------------------------------------------------------


class UnlearnLogitsProcessor(LogitsProcessor):
    """Batch-level vLLM logits processor: per-row forbidden-sequence bans from `extra_args`."""

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        value = _extra_args(sampling_params).get(XARGS_KEY)
        if value is not None:
            parse_sequences(value)

    def __init__(self, vllm_config: Any = None, device: torch.device | str = "cpu", is_pin_memory: bool = False):
        self.device = torch.device(device)
        self.pin_memory = bool(is_pin_memory)
        self.rows: dict[int, _Row] = {}  # persistent-batch index -> state
        self._tables: OrderedDict[Any, BanTable] = OrderedDict()

    def is_argmax_invariant(self) -> bool:
        return False  # a ban can remove the most likely token

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return  # same requests as last step; their output lists grew in place
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for index, params, prompt_ids, output_ids in batch_update.added:
            row = self._new_row(params, prompt_ids, output_ids)
            if row is None:
                self.rows.pop(index, None)  # a new request without bans replaces whatever sat here
            else:
                self.rows[index] = row
        for a, b, direction in batch_update.moved:
            row_a = self.rows.pop(a, None)
            row_b = self.rows.pop(b, None)
            if row_a is not None:
                self.rows[b] = row_a
            if row_b is not None and _is_swap(direction):
                self.rows[a] = row_b

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        rows: list[int] = []
        cols: list[int] = []
        vocab = logits.shape[-1]
        for index, row in self.rows.items():
            if index >= logits.shape[0]:
                continue
            for token in row.table.banned_after(row.context()):
                if token < vocab:
                    rows.append(index)
                    cols.append(token)
        if rows:
            where = torch.tensor([rows, cols], dtype=torch.long, pin_memory=self.pin_memory and logits.is_cuda)
            where = where.to(logits.device, non_blocking=True)
            logits[where[0], where[1]] = float("-inf")
        return logits

    def _new_row(self, params: Any, prompt_ids: list[int] | None, output_ids: list[int]) -> _Row | None:
        value = _extra_args(params).get(XARGS_KEY)
        if value is None:
            return None
        table = self._table(value)
        if not table.num_sequences:
            return None
        tail = tuple(prompt_ids[max(0, len(prompt_ids) - table.max_prefix) :]) if prompt_ids and table.max_prefix else ()
        return _Row(table, tail, output_ids)

    def _table(self, value: Any) -> BanTable:
        """Tables are shared by requests with the same bans (the common case: same tenant, same targets)."""
        key = value if isinstance(value, (str, bytes)) else json.dumps(value)
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = BanTable(parse_sequences(value))
            if len(self._tables) > _TABLE_CACHE_SIZE:
                self._tables.popitem(last=False)
        else:
            self._tables.move_to_end(key)
        return table


def _is_swap(direction: Any) -> bool:
    return getattr(direction, "name", direction) == "SWAP"
