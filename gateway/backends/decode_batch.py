"""One forward pass per decode step for every active sequence of the embedded engine.

Decoding one sequence at a time leaves a CPU mostly idle on a small model: the
per-call overhead (Python, kernel launches, the LM head's matrix) is paid once per
sequence and token. Here the active sequences' KV caches are stacked into one
left-padded batch, and a step feeds one token per row with an attention mask that
hides each row's padding and explicit positions (RoPE is already applied to the
cached keys, so padding never shifts a row's positions).

A sequence is prefilled alone (prompts differ in length) and then joins the batch:
the shorter side is padded on the left. A finished or cancelled row leaves with a
row selection, and columns that became padding for every row are trimmed, so the
batch never holds more than its longest live sequence.
"""

from __future__ import annotations

from typing import Any

import torch


def _pad_left(tensor: torch.Tensor, columns: int, dim: int) -> torch.Tensor:
    if columns <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = columns
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class DecodeBatch:
    """Left-padded KV caches of the rows being decoded, plus their attention mask."""

    def __init__(self, model: Any):
        self._model = model
        self.cache: Any = None
        self.mask = torch.zeros((0, 0), dtype=torch.long)

    def __len__(self) -> int:
        return int(self.mask.shape[0])

    def add(self, cache: Any) -> None:
        """Append a prefilled single-row cache (a `DynamicCache` of batch 1) as the last row."""
        length = cache.get_seq_length()
        row_mask = torch.ones((1, length), dtype=torch.long)
        if self.cache is None or len(self) == 0:
            self.cache, self.mask = cache, row_mask
            return
        width = int(self.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, length - width, 2), _pad_left(theirs.keys, width - length, 2)])
            mine.values = torch.cat(
                [_pad_left(mine.values, length - width, 2), _pad_left(theirs.values, width - length, 2)])
        self.mask = torch.cat([_pad_left(self.mask, length - width, 1), _pad_left(row_mask, width - length, 1)])

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows (in this order) and drop columns that are padding for all of them."""
        if len(rows) == len(self):
            return
        if not rows:
            self.cache, self.mask = None, torch.zeros((0, 0), dtype=torch.long)
            return
        index = torch.tensor(rows, dtype=torch.long)
        self.mask = self.mask.index_select(0, index)
        live = self.mask.any(dim=0).nonzero()
        start = int(live[0]) if len(live) else 0
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]

    def step(self, tokens: list[int]) -> torch.Tensor:
        """Feed one token per row; returns the next-token logits, one float32 row per sequence."""
        positions = self.mask.sum(dim=1, keepdim=True)  # real tokens so far = the new token's position
        self.mask = torch.cat([self.mask, torch.ones((len(self), 1), dtype=torch.long)], dim=1)
        out = self._model(input_ids=torch.tensor(tokens, dtype=torch.long)[:, None], attention_mask=self.mask,
                          position_ids=positions, past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        return out.logits[:, -1, :].float()
