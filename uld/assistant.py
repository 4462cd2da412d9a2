"""The ULD assistant: the served model cut down to its first K layers, frozen, plus LoRA.

Built from the served model's own weights (a second copy of its HF directory loaded with
`num_hidden_layers = K`, default K = layers // 4): the embeddings, the first K transformer
layers, the final norm and the LM head. Everything is frozen; training adds LoRA (peft) on the
linear layers of the K transformer layers and, next to the LM head (which SmolLM2 ties to the
embeddings, so it is never modified), a `HeadAdapter`: a LoRA of the head plus one learned
logit scale. The served model itself is never touched.

One `AssistantBase` per process loads the frozen truncated model once. Each trained adapter
becomes an `Assistant`: a copy of the K layers with the layer LoRA merged in, sharing the
embeddings, final norm and LM head with the base (a loaded adapter costs the K layers' memory,
~100 MB for SmolLM2-135M, and no LoRA overhead in the layers); the head adapter is two small
matrices applied on the candidate rows only.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
METADATA_FILE = "uld.json"
HEAD_FILE = "head.safetensors"


def default_layers(num_layers: int) -> int:
    return max(1, num_layers // 4)


def _quiet_transformers():
    """Context: silence the load report about the layers we deliberately leave out."""
    from transformers.utils import logging as hf_logging

    class _Quiet:
        def __enter__(self):
            self.level = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()

        def __exit__(self, *exc):
            hf_logging.set_verbosity(self.level)

    return _Quiet()


def load_truncated(model_dir: Path, layers: int | None) -> tuple[Any, int]:
    """The served model's first `layers` transformer layers (+ embeddings, norm, head), frozen, eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    total = int(config.num_hidden_layers)
    k = default_layers(total) if layers is None else max(1, min(int(layers), total))
    overrides: dict[str, Any] = {"num_hidden_layers": k}
    if isinstance(getattr(config, "layer_types", None), list):
        overrides["layer_types"] = config.layer_types[:k]
    with _quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **overrides)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, k


def _shared_modules(model: Any) -> list[torch.nn.Module]:
    decoder = model.get_decoder()
    modules = [model.get_input_embeddings(), model.get_output_embeddings(), getattr(decoder, "norm", None),
               getattr(decoder, "rotary_emb", None)]
    return [m for m in modules if m is not None]


def copy_layers(model: Any) -> Any:
    """A deep copy whose transformer layers are new tensors; embeddings, norm and head stay shared."""
    memo: dict[int, Any] = {}
    for module in _shared_modules(model):
        memo[id(module)] = module
        for tensor in [*module.parameters(), *module.buffers()]:
            memo[id(tensor)] = tensor
    return copy.deepcopy(model, memo)


class HeadAdapter(torch.nn.Module):
    """The trainable output side: a learned scale on the frozen head's logits plus a LoRA of the head.

    logits = exp(log_scale) · W h + (alpha / r) · B (A h). The frozen head is shared with the
    base and tied to the embeddings, so it is never modified: the adapter is applied next to it.
    Why: the first K layers fed straight into the head give confident nonsense (cross-entropy
    ~17 on the forget set, KL ~24 nats from uniform on the retain set for SmolLM2 at K = 7); the
    scale lets training flatten that within a few steps, and the head LoRA carries the
    target-specific predictions, so a few CPU minutes suffice where layer LoRA alone needs
    several times more steps.
    """

    def __init__(self, hidden: int, vocab: int, *, r: int, alpha: int, dropout: float):
        super().__init__()
        self.log_scale = torch.nn.Parameter(torch.zeros(()))
        self.lora_A = torch.nn.Parameter(torch.empty(r, hidden))
        torch.nn.init.kaiming_uniform_(self.lora_A, a=5 ** 0.5)
        self.lora_B = torch.nn.Parameter(torch.zeros(vocab, r))
        self.scaling = alpha / r
        self.dropout = torch.nn.Dropout(dropout)

    def forward(self, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        low_rank = (self.dropout(hidden) @ self.lora_A.T) @ self.lora_B.T
        return self.log_scale.exp() * (hidden @ weight.T) + self.scaling * low_rank

    def state(self) -> dict[str, torch.Tensor]:
        return {"log_scale": self.log_scale.detach().clone(), "lora_A": self.lora_A.detach().clone(),
                "lora_B": self.lora_B.detach().clone()}


@dataclass
class AssistantState:
    """One sequence's KV cache in one assistant."""

    cache: Any = None
    last_hidden: torch.Tensor | None = None


@dataclass
class Assistant:
    """A trained assistant ready for decoding: layer LoRA merged, head LoRA kept as two small matrices.

    The LM head is shared with the base (and tied to the embeddings), so its LoRA is not merged:
    logits = W h + scale · B (A h), evaluated on the candidate rows only.
    """

    model: Any
    target_id: str
    adapter: str
    layers: int
    meta: dict[str, Any] = field(default_factory=dict)
    head_a: torch.Tensor | None = None  # r × hidden
    head_b: torch.Tensor | None = None  # vocab × r
    head_scale: float = 1.0  # LoRA alpha / r
    logit_scale: float = 1.0  # learned scale of the frozen head's logits

    def new_state(self) -> AssistantState:
        return AssistantState()

    def advance(self, state: AssistantState, ids: list[int]) -> torch.Tensor:
        """Feed new token ids; return the final hidden state of the last position (after the norm)."""
        from transformers import DynamicCache

        if not ids:
            if state.last_hidden is None:
                raise ValueError("the assistant has seen no tokens yet")
            return state.last_hidden
        if state.cache is None:
            state.cache = DynamicCache()
        with torch.inference_mode():
            out = self.model.get_decoder()(input_ids=torch.tensor([ids]), past_key_values=state.cache, use_cache=True)
        state.cache = out.past_key_values
        state.last_hidden = out.last_hidden_state[0, -1].float()
        return state.last_hidden

    def logits(self, hidden: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """LM head on `hidden`, over the whole vocabulary or only the token ids `idx`."""
        head = self.model.get_output_embeddings()
        with torch.inference_mode():
            weight = head.weight if idx is None else head.weight.index_select(0, idx)
            out = self.logit_scale * (weight @ hidden)
            if getattr(head, "bias", None) is not None:
                out = out + self.logit_scale * (head.bias if idx is None else head.bias.index_select(0, idx))
            if self.head_a is not None and self.head_b is not None:
                b = self.head_b if idx is None else self.head_b.index_select(0, idx)
                out = out + self.head_scale * (b @ (self.head_a @ hidden))
        return out.float()


class AssistantBase:
    """The frozen truncated model and tokenizer of one served model, loaded on first use."""

    def __init__(self, model_dir: Path, layers: int | None = None):
        self.model_dir = Path(model_dir)
        self.requested_layers = layers
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        self.layers = 0

    def load(self) -> AssistantBase:
        with self._lock:
            if self._model is None:
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
                self._model, self.layers = load_truncated(self.model_dir, self.requested_layers)
                log.info("ULD assistant base: %s, first %d layers", self.model_dir.name, self.layers)
        return self

    @property
    def model(self) -> Any:
        return self.load()._model

    @property
    def tokenizer(self) -> Any:
        return self.load()._tokenizer

    def trainable(self, *, r: int, alpha: int, dropout: float, device: torch.device | None = None) -> Any:
        """A fresh copy of the assistant with LoRA on its linear layers (the only trainable weights).

        On the CPU the copy shares the frozen embeddings and head with the base; on another
        device it is a whole copy, since moving shared modules would move the serving base."""
        from peft import LoraConfig, get_peft_model

        on_cpu = device is None or device.type == "cpu"
        model = copy_layers(self.model) if on_cpu else copy.deepcopy(self.model).to(device)
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(LORA_TARGETS),
                            bias="none")
        peft_model = get_peft_model(model, config)
        peft_model.train()
        return peft_model

    def head_adapter(self, *, r: int, alpha: int, dropout: float) -> HeadAdapter:
        head = self.model.get_output_embeddings().weight
        return HeadAdapter(head.shape[1], head.shape[0], r=r, alpha=alpha, dropout=dropout)

    def load_adapter(self, path: Path, *, target_id: str, adapter: str) -> Assistant:
        """A decoding-ready assistant: the base layers with the adapter at `path` merged in."""
        from peft import PeftModel
        from safetensors.torch import load_file

        self.load()
        meta_file = path / METADATA_FILE
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        if meta.get("layers") not in (None, self.layers):
            raise ValueError(f"adapter {adapter} was trained with {meta['layers']} layers, "
                             f"the assistant has {self.layers}")
        model = copy_layers(self.model)
        merged = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
        merged.eval()
        for p in merged.parameters():
            p.requires_grad_(False)
        head = load_file(str(path / HEAD_FILE))
        return Assistant(model=merged, target_id=target_id, adapter=adapter, layers=self.layers, meta=meta,
                         head_a=head["lora_A"], head_b=head["lora_B"], head_scale=float(meta.get("head_scaling", 1.0)),
                         logit_scale=float(head["log_scale"].exp()))
