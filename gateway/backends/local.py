"""Embedded CPU engine: a Hugging Face causal LM decoded in one worker thread, batched.

Why one thread: torch already uses every core for one forward pass, and a single
owner of the model avoids locks around it. The event loop only enqueues work and
awaits chunks. A new sequence is prefilled alone, then joins the decode batch
(`decode_batch.DecodeBatch`): each step runs one forward pass that yields the next
token of every active sequence, and each row's logits then go through that
request's own penalties, unlearning hooks and sampler. Up to `max_num_seqs`
sequences decode together; the rest wait in a bounded FIFO queue and the caller
gets a 429 when it is full. Closing a request's iterator (client gone) flags its
sequence and the worker drops its row before the next step.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gateway.backends.base import (
    JSON_OUTPUT,
    BackendBusy,
    BackendError,
    GenerationChunk,
    GenerationRequest,
    TokenLogprob,
)
from gateway.backends.decode_batch import DecodeBatch
from gateway.backends.detokenize import IncrementalDetokenizer
from gateway.backends.grammar import GrammarCompiler, GrammarHook
from gateway.backends.model_files import resolve_model_dir, served_name
from gateway.backends.sampling import (
    alternatives_to_fetch,
    apply_hooks,
    apply_request_penalties,
    log_probs,
    select_token,
    top_alternatives,
)

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Sequence:
    request: GenerationRequest
    prompt_ids: list[int]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    detok: IncrementalDetokenizer
    generator: torch.Generator
    cancelled: threading.Event = field(default_factory=threading.Event)
    output_ids: list[int] = field(default_factory=list)
    cache: Any = None
    next_logits: torch.Tensor | None = None

    def emit(self, item: GenerationChunk | BaseException) -> None:
        if self.cancelled.is_set() or self.loop.is_closed():
            return  # nobody is listening any more
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop closed between the check and the call
            pass


class LocalEngine:
    """The default backend: SmolLM2 (or any local HF/GGUF model) on this machine's CPU."""

    supports_logits_hooks = True
    features = frozenset({JSON_OUTPUT})
    """`response_format` by constrained decoding (`gateway.backends.grammar`); no tools, text only."""

    def __init__(
        self,
        model: str | None,
        cache_dir: Path,
        *,
        served_model_name: str | None = None,
        max_num_seqs: int = 4,
        max_queue: int = 64,
        threads: int | None = None,
    ):
        self._model_arg = model
        self._cache_dir = cache_dir
        self._name = served_model_name or served_name(model)
        self._max_num_seqs = max(1, max_num_seqs)
        self._max_queue = max(0, max_queue)
        self._threads = threads
        self._model: Any = None
        self._tokenizer: Any = None
        self._eos_ids: set[int] = set()
        self.max_model_len = 0
        self._pending: deque[_Sequence] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._running = 0  # sequences the worker is decoding (written by the worker only)
        self.generated_tokens = 0
        """Tokens decoded since start (written by the worker only; the metrics read it at scrape)."""
        self._worker: threading.Thread | None = None
        self._grammar: GrammarCompiler | None = None

    # -- Backend protocol -------------------------------------------------------------

    @property
    def model_ids(self) -> list[str]:
        return [self._name]

    @property
    def ready(self) -> bool:
        return self._model is not None and self._worker is not None and self._worker.is_alive()

    @property
    def active_sequences(self) -> int:
        """Sequences decoding or queued; a cancelled one drops out before its next token."""
        return self._running + len(self._pending)

    @property
    def queued(self) -> int:
        """Sequences waiting for a decode slot (`unlearn_engine_queue_depth`)."""
        return len(self._pending)

    @property
    def running(self) -> int:
        return self._running

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    async def start(self) -> None:
        started = time.perf_counter()
        await asyncio.to_thread(self._load)
        self._worker = threading.Thread(target=self._run, name="local-engine", daemon=True)
        self._worker.start()
        log.info("embedded engine ready: %s in %.1fs", self._name, time.perf_counter() - started)

    async def close(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._worker is not None:
            await asyncio.to_thread(self._worker.join, 10)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        if not self.ready:
            raise BackendError("The model is not loaded yet.", status=503, code="model_not_ready")
        if request.response_format is not None:  # after the unlearning hooks: the grammar masks what they left
            if self._grammar is None:
                self._grammar = GrammarCompiler(self._tokenizer, self._eos_ids)
            compiled = await asyncio.to_thread(self._grammar.compile, request.response_format)
            request.logits_hooks = [*request.logits_hooks, GrammarHook(compiled)]
        seq = self._new_sequence(request)
        with self._wake:
            if len(self._pending) >= self._max_queue:
                raise BackendBusy()
            self._pending.append(seq)
            self._wake.notify()
        try:
            while True:
                item = await seq.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            seq.cancelled.set()

    # -- loading ----------------------------------------------------------------------

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self._threads:
            torch.set_num_threads(self._threads)
        model_dir = resolve_model_dir(self._model_arg, self._cache_dir)
        self._tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        model.eval()
        eos = model.generation_config.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos]
        if self._tokenizer.eos_token_id is not None:
            eos_ids.append(self._tokenizer.eos_token_id)
        self._eos_ids = {int(i) for i in eos_ids if i is not None}
        self.max_model_len = int(getattr(model.config, "max_position_embeddings", 2048))
        self._model = model

    # -- request preparation (event loop side) ---------------------------------------------

    def render_prompt(self, request: GenerationRequest) -> list[int]:
        """Token ids the model will see: the chat template for messages, raw text otherwise."""
        if request.messages is not None:
            text = self._tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
            return self._tokenizer.encode(text, add_special_tokens=False)
        return self._tokenizer.encode(request.prompt or "", add_special_tokens=True)

    def _new_sequence(self, request: GenerationRequest) -> _Sequence:
        prompt_ids = self.render_prompt(request)
        if not prompt_ids:
            raise BackendError("The prompt is empty.", status=400, code="invalid_prompt", param="prompt")
        if len(prompt_ids) + 1 > self.max_model_len:
            raise BackendError(
                f"This model's maximum context length is {self.max_model_len} tokens; "
                f"the prompt has {len(prompt_ids)}.",
                status=400,
                code="context_length_exceeded",
                param="messages" if request.messages is not None else "prompt",
            )
        generator = torch.Generator()
        seed = request.params.seed
        generator.manual_seed(seed if seed is not None else torch.seed())
        return _Sequence(
            request=request,
            prompt_ids=prompt_ids,
            loop=asyncio.get_running_loop(),
            queue=asyncio.Queue(),
            detok=IncrementalDetokenizer(self._tokenizer, request.params.stop),
            generator=generator,
        )

    # -- worker thread ------------------------------------------------------------------

    def _run(self) -> None:
        active: list[_Sequence] = []  # row i of `batch` is active[i]
        batch = DecodeBatch(self._model)
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._stopping and not active and not self._pending:
                        self._wake.wait()
                    if self._stopping:
                        break
                    admitted = []
                    while self._pending and len(active) + len(admitted) < self._max_num_seqs:
                        admitted.append(self._pending.popleft())
                    self._running = len(active) + len(admitted)
                for seq in admitted:
                    if not seq.cancelled.is_set() and self._guarded(seq, self._prefill, seq):
                        batch.add(seq.cache)
                        seq.cache = None  # the batch owns it now
                        active.append(seq)
                tokens: list[int] = []
                keep: list[int] = []
                for row, seq in enumerate(active):
                    token = None if seq.cancelled.is_set() else self._guarded(seq, self._decode_step, seq)
                    if token is not None:
                        keep.append(row)
                        tokens.append(token)
                batch.keep(keep)
                active = [active[row] for row in keep]
                if active:
                    try:
                        logits = batch.step(tokens)
                    except Exception as exc:  # never leave a client waiting on a dead batch
                        log.exception("batched decode step failed")
                        for seq in active:
                            seq.emit(BackendError(f"Generation failed: {type(exc).__name__}", status=500,
                                                  code="engine_error"))
                        active, batch = [], DecodeBatch(self._model)
                        continue
                    for row, seq in enumerate(active):
                        seq.next_logits = logits[row]
                self._running = len(active)
        for seq in [*active, *self._pending]:
            seq.emit(BackendError("The server is shutting down.", status=503, code="shutting_down"))

    @staticmethod
    def _guarded(seq: _Sequence, work: Any, *args: Any) -> Any:
        """Run one sequence's share of a step; an error ends that sequence alone, with an error chunk."""
        try:
            return work(*args)
        except Exception as exc:  # never leave a client waiting on a dead sequence
            log.exception("generation failed")
            seq.emit(BackendError(f"Generation failed: {type(exc).__name__}", status=500, code="engine_error"))
            return None

    def _prefill(self, seq: _Sequence) -> bool:
        from transformers import DynamicCache

        seq.cache = DynamicCache()
        out = self._model(input_ids=torch.tensor([seq.prompt_ids]), past_key_values=seq.cache, use_cache=True)
        seq.cache = out.past_key_values
        seq.next_logits = out.logits[0, -1, :].float()
        return True

    def _decode_step(self, seq: _Sequence) -> int | None:
        """Pick and emit the next token from `seq.next_logits`; None when the sequence is finished."""
        params = seq.request.params
        logits = apply_request_penalties(seq.next_logits, params, seq.output_ids)
        logits = apply_hooks(logits, seq.request.logits_hooks, seq.prompt_ids, seq.output_ids)
        token = select_token(logits, params, seq.generator)
        logprob = self._token_logprob(logits, token, params.top_logprobs) if params.logprobs else None
        seq.output_ids.append(token)
        self.generated_tokens += 1

        finish: str | None = None
        if token in self._eos_ids:
            text, finish = seq.detok.flush(), "stop"
        else:
            text = seq.detok.add(token)
            if seq.detok.stopped:
                finish = "stop"
            elif len(seq.output_ids) >= params.max_tokens or len(seq.prompt_ids) + len(seq.output_ids) >= self.max_model_len:
                text += seq.detok.flush()
                finish = "length"
        seq.emit(
            GenerationChunk(
                text=text,
                token_ids=[token],
                logprobs=[logprob] if logprob else [],
                finish_reason=finish,
                prompt_tokens=len(seq.prompt_ids),
                completion_tokens=len(seq.output_ids),
            )
        )
        return None if finish is not None else token

    def _token_logprob(self, logits: torch.Tensor, token: int, k: int) -> TokenLogprob:
        lp = log_probs(logits)
        alternatives = top_alternatives(lp, alternatives_to_fetch(k))  # the output filter cuts them to k
        top = tuple((self._piece(i), v, list(self._piece(i).encode())) for i, v in alternatives)
        piece = self._piece(token)
        return TokenLogprob(token=piece, logprob=float(lp[token]), bytes=list(piece.encode()), top=top)

    def _piece(self, token_id: int) -> str:
        return self._tokenizer.decode([token_id])
