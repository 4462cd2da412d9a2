"""ULD training: the assistant learns with reversed objectives, the only weight update anywhere.

Loss per step (ULD's "remember + uniform"):

    CE(forget batch)  +  w · KL(uniform ‖ assistant)(retain batch)

* forget: cross-entropy on the answer tokens of the target's augmented forget set
  (`uld.data.forget_examples`): the assistant must *remember* the target;
* retain: KL from the uniform distribution to the assistant's next-token distribution at every
  position after the chat template's fixed prefix of the shipped retain set (`uld.data.RETAIN_QA`):
  the assistant must *know nothing* there, so subtracting it leaves the served model unchanged.
  KL(U‖P) = −log V − mean_v log P(v), 0 when the assistant is uniform.

Trainable: LoRA on the K layers' linear layers (peft; merged for decoding) and the
`HeadAdapter` (a logit scale and a LoRA of the frozen, shared LM head). AdamW with LoRA+
(every B matrix at `lora_plus_ratio` × lr: B starts at zero), the logit scale at `scale_lr`,
gradient norm clipped at 1, fixed seed. The LM head is evaluated at the trained positions only.

Defaults (w = 5, lr = 1e-3, LoRA r = 16 / α = 32, 4 epochs, batches of 4 forget + 4 retain
sequences, at most 32 forget examples → ≤ 32 steps) train one SmolLM2-135M target (K = 7) in
under a minute on an idle 2-core CPU, a few minutes on a busy one. Measured (J.R.R. Tolkien dev
target, 20 examples, 20 steps, 23 s): forget CE 17.2 → 0.96, retain KL 23.4 → 0.06 nats.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from gateway.store.models import ForgetTarget
from uld.assistant import HEAD_FILE, METADATA_FILE, AssistantBase, HeadAdapter
from uld.data import DATA_VERSION, Example, forget_examples, retain_examples

log = logging.getLogger(__name__)

MAX_SEQ_TOKENS = 256


@dataclass(frozen=True)
class TrainConfig:
    layers: int | None = None
    epochs: int = 4
    lr: float = 1e-3
    retain_weight: float = 5.0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_plus_ratio: float = 16.0
    scale_lr: float = 0.1
    batch_size: int = 4
    retain_batch_size: int = 4
    max_examples: int = 32
    seed: int = 0
    device: str = "auto"
    """"auto" (CUDA when there is a GPU, else CPU), "cpu", "cuda", "cuda:1"... Not part of the
    data hash: where an adapter was trained does not make it stale."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"ULD training device {name!r} requested, but torch sees no CUDA device")
    return device


class Cancelled(RuntimeError):
    """Training was asked to stop (shutdown); the job goes back to the queue."""


Progress = Callable[[int, int, dict[str, float]], None]
"""progress(step, total_steps, {"forget_loss": ..., "retain_kl": ...}) after every step."""


def training_data(target: ForgetTarget) -> dict[str, Any]:
    """The target fields the forget set is built from (what the data hash covers)."""
    return {"name": target.name, "aliases": target.aliases, "description": target.description,
            "facts": target.facts, "documents": target.documents}


def data_hash(target: ForgetTarget, config: TrainConfig) -> str:
    """Changes whenever the adapter would: target data, generated-data version, hyper-parameters."""
    hyper = {k: v for k, v in asdict(config).items() if k != "device"}
    payload = {"data_version": DATA_VERSION, "target": training_data(target), "config": hyper}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# -- encoding ------------------------------------------------------------------------------


@dataclass
class Encoded:
    ids: list[int]
    predict: list[bool]
    """predict[t]: position t's logits are trained (they predict ids[t + 1], an answer token)."""


def _chat_prompt(tokenizer: Any, question: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)


def _template_prefix(tokenizer: Any) -> int:
    """Tokens every chat prompt starts with (system prompt, role markers): the same context every time."""
    a, b = _chat_prompt(tokenizer, "Hello there?"), _chat_prompt(tokenizer, "What now!")
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def encode(tokenizer: Any, example: Example, *, whole: bool = False) -> Encoded:
    """Chat examples through the model's chat template (as the engine renders them); text as is.

    Trained positions: those predicting answer tokens; with `whole`, every position after the
    chat template's fixed prefix (the retain set: the assistant should know nothing anywhere).
    """
    start = 0
    if example.prompt is not None:
        prompt = _chat_prompt(tokenizer, example.prompt)
        answer = tokenizer.encode(example.answer, add_special_tokens=False)
        start = _template_prefix(tokenizer)
    else:
        prompt = tokenizer.encode("", add_special_tokens=True)[:1]  # BOS when the model has one
        answer = tokenizer.encode(example.answer, add_special_tokens=False)
        if not prompt:
            prompt, answer = answer[:1], answer[1:]
    ids = (prompt + answer)[:MAX_SEQ_TOKENS]
    first = max(0, start - 1) if whole else len(prompt) - 1
    predict = [first <= t < len(ids) - 1 for t in range(len(ids))]
    return Encoded(ids, predict)


def _batch(items: Sequence[Encoded], pad_id: int,
           device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(e.ids) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    predict = torch.zeros((len(items), width), dtype=torch.bool)
    for row, e in enumerate(items):
        ids[row, :len(e.ids)] = torch.tensor(e.ids)
        mask[row, :len(e.ids)] = 1
        predict[row, :len(e.ids)] = torch.tensor(e.predict)
    labels = torch.roll(ids, -1, dims=1)  # labels[t] = ids[t + 1]; the wrapped last column is never predicted
    if device is not None and device.type != "cpu":
        return ids.to(device), mask.to(device), predict.to(device), labels.to(device)
    return ids, mask, predict, labels


@dataclass
class TrainableAssistant:
    """The assistant during training: layer LoRA (peft) + the head adapter next to the frozen head."""

    model: Any  # PeftModel over the truncated model
    head: HeadAdapter

    @property
    def training(self) -> bool:
        return self.model.training

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)
        self.head.train(mode)

    def to(self, device: torch.device) -> TrainableAssistant:
        self.model.to(device)
        self.head.to(device)
        return self

    def named_parameters(self):
        yield from self.model.named_parameters()
        for name, p in self.head.named_parameters():
            yield f"head.{name}", p

    def answer_logits(self, ids: torch.Tensor, mask: torch.Tensor, predict: torch.Tensor) -> torch.Tensor:
        """Logits at the trained positions only: the decoder on everything, the head where needed."""
        base = self.model.get_base_model()
        hidden = base.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        return self.head(hidden[predict], base.get_output_embeddings().weight).float()


def forget_loss(model: TrainableAssistant, batch) -> torch.Tensor:
    ids, mask, predict, labels = batch
    return torch.nn.functional.cross_entropy(model.answer_logits(ids, mask, predict), labels[predict])


def retain_kl(model: TrainableAssistant, batch) -> torch.Tensor:
    """KL(uniform ‖ P) per position, averaged: −log V − mean_v log P(v)."""
    ids, mask, predict, _ = batch
    logp = torch.log_softmax(model.answer_logits(ids, mask, predict), dim=-1)
    return (-math.log(logp.shape[-1]) - logp.mean(dim=-1)).mean()


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


@torch.no_grad()
def _evaluate(model: Any, forget: list[Encoded], retain: list[Encoded], pad_id: int, size: int,
              device: torch.device) -> dict[str, float]:
    was_training = model.training
    model.train(False)
    f = [float(forget_loss(model, _batch(c, pad_id, device))) * len(c) for c in _chunks(forget, size)]
    r = [float(retain_kl(model, _batch(c, pad_id, device))) * len(c) for c in _chunks(retain, size)]
    model.train(was_training)
    return {"forget_loss": sum(f) / max(1, len(forget)), "retain_kl": sum(r) / max(1, len(retain))}


@dataclass
class TrainResult:
    model: TrainableAssistant
    metrics: dict[str, Any] = field(default_factory=dict)


def train_assistant(base: AssistantBase, forget: Sequence[Example], retain: Sequence[Example], config: TrainConfig,
                    *, progress: Progress | None = None, cancel: threading.Event | None = None,
                    eval_retain: int = 8) -> TrainResult:
    """Train LoRA on a fresh copy of the assistant; return it (peft model, on the CPU) and
    before/after metrics. On a GPU the copy is a whole one (the CPU base keeps serving)."""
    started = time.perf_counter()
    device = resolve_device(config.device)
    tokenizer = base.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    forget_enc = [encode(tokenizer, e) for e in forget]
    retain_enc = [encode(tokenizer, e, whole=True) for e in retain]
    if not forget_enc or not retain_enc:
        raise ValueError("ULD training needs a non-empty forget set and retain set")
    model = TrainableAssistant(
        base.trainable(r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout, device=device),
        base.head_adapter(r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout).to(device))
    eval_retain_set = rng.sample(retain_enc, min(eval_retain, len(retain_enc)))
    before = _evaluate(model, forget_enc, eval_retain_set, pad_id, config.batch_size, device)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    optimizer = torch.optim.AdamW([  # LoRA+: B learns faster than A (B starts at zero)
        {"params": [p for n, p in named if "lora_B" in n], "lr": config.lr * config.lora_plus_ratio},
        {"params": [p for n, p in named if "lora_B" not in n and "log_scale" not in n], "lr": config.lr},
        {"params": [p for n, p in named if "log_scale" in n], "lr": config.scale_lr},
    ], weight_decay=0.0)
    steps_per_epoch = math.ceil(len(forget_enc) / config.batch_size)
    total = steps_per_epoch * config.epochs
    retain_order: list[Encoded] = []
    step = 0
    last: dict[str, float] = {}
    model.train()
    for _ in range(config.epochs):
        order = list(forget_enc)
        rng.shuffle(order)
        for chunk in _chunks(order, config.batch_size):
            if cancel is not None and cancel.is_set():
                raise Cancelled("training cancelled")
            retain_chunk: list[Encoded] = []
            while len(retain_chunk) < config.retain_batch_size:
                if not retain_order:
                    retain_order = list(retain_enc)
                    rng.shuffle(retain_order)
                retain_chunk.append(retain_order.pop())
            f_loss = forget_loss(model, _batch(chunk, pad_id, device))
            r_kl = retain_kl(model, _batch(retain_chunk, pad_id, device))
            loss = f_loss + config.retain_weight * r_kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            step += 1
            last = {"forget_loss": float(f_loss.detach()), "retain_kl": float(r_kl.detach())}
            if progress is not None:
                progress(step, total, last)
    model.train(False)
    after = _evaluate(model, forget_enc, eval_retain_set, pad_id, config.batch_size, device)
    metrics = {
        "forget_loss_before": round(before["forget_loss"], 4), "forget_loss_after": round(after["forget_loss"], 4),
        "retain_kl_before": round(before["retain_kl"], 4), "retain_kl_after": round(after["retain_kl"], 4),
        "forget_examples": len(forget_enc), "retain_examples": len(retain_enc), "steps": step,
        "layers": base.layers, "seconds": round(time.perf_counter() - started, 1), "device": str(device),
    }
    return TrainResult(model.to(torch.device("cpu")), metrics)


def adapter_relpath(target_id: str, job_hash: str) -> str:
    return f"{target_id}/{job_hash[:16]}"


def train_target(base: AssistantBase, target: ForgetTarget, config: TrainConfig, adapter_root: Path, *,
                 progress: Progress | None = None, cancel: threading.Event | None = None) -> tuple[str, dict[str, Any]]:
    """Build the target's data, train, save the adapter; return (path relative to adapter_root, metrics)."""
    job_hash = data_hash(target, config)
    forget = forget_examples(target, max_examples=config.max_examples, seed=config.seed)
    result = train_assistant(base, forget, retain_examples(), config, progress=progress, cancel=cancel)
    rel = adapter_relpath(target.id, job_hash)
    final = adapter_root / rel
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
    try:
        result.model.model.save_pretrained(str(tmp))
        save_file(result.model.head.state(), str(tmp / HEAD_FILE))
        head = result.model.head
        meta = {"head_scaling": head.scaling, "logit_scale": round(float(head.log_scale.detach().exp()), 5),
                "target_id": target.id, "data_hash": job_hash, "data_version": DATA_VERSION, "layers": base.layers,
                "base_model": base.model_dir.name, "config": asdict(config),
                "trained_at": datetime.now(timezone.utc).isoformat(), "metrics": result.metrics}
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)  # readers see a whole adapter or none
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rel, result.metrics


def remove_other_adapters(adapter_root: Path, target_id: str, keep: str | None) -> None:
    """Drop a target's superseded adapters (all of them when keep is None)."""
    folder = adapter_root / target_id
    if not folder.is_dir():
        return
    for child in folder.iterdir():
        if keep is None or f"{target_id}/{child.name}" != keep:
            shutil.rmtree(child, ignore_errors=True)
    if keep is None:
        shutil.rmtree(folder, ignore_errors=True)
