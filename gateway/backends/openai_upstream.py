"""Upstream backend: any OpenAI-compatible server (vLLM, llama.cpp, OpenAI) behind the gateway.

Generation is always streamed from the upstream (`stream: true`, with
`stream_options.include_usage`), whether or not the client asked for a stream, so
the output gate sees tokens as they arrive and a non-stream answer is simply the
collected stream. Closing the iterator (client gone, gate blocked) closes the
upstream connection: the upstream stops generating.

Unlearning on an upstream
-------------------------
The upstream cannot run the gateway's Python logits hooks (`supports_logits_hooks`
is False). `RequestPlan.run` therefore exports the hooks' forbidden token
sequences into `GenerationRequest.banned_sequences` (ids of the local
`tokenizer`, which must be the upstream model's tokenizer), and this backend
translates them into controls the upstream enforces itself:

* `logit_bias` {id: -100} for every *single-token* sequence (OpenAI, vLLM and
  llama.cpp all honour it). Only single-token sequences can be banned this way:
  biasing the last token of a multi-token sequence would ban it everywhere
  ("kien" after anything), biasing the first would ban common words;
* with `UNLEARN_UPSTREAM_KIND=vllm` also `bad_words` (each sequence decoded to a
  string; vLLM re-tokenises it and bans the token that would complete it) and
  `vllm_xargs.unlearn_banned_sequences` (the exact id sequences, as a JSON string)
  for the `gateway.backends.vllm_plugin:UnlearnLogitsProcessor` plug-in, which runs
  GUARD's trie inside vLLM. vLLM is also asked for `return_token_ids`.

Whatever the upstream does, the output gate still runs on everything it returns.
After each generation the backend checks whether a banned single-token id was
emitted anyway (the upstream's own token ids when it returns them, otherwise each
streamed delta compared with the banned tokens' texts: upstreams stream one token
per delta) and, if so, counts `unlearn_upstream_ignored_controls` and logs a warning.

HTTP, pooling and the error mapping (503 / 504 / 502, upstream 4xx kept) live in
`gateway.backends.upstream_http`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import orjson

from gateway.backends.base import (
    CONTENT_PARTS,
    JSON_OUTPUT,
    TOOLS,
    BackendError,
    GenerationChunk,
    GenerationRequest,
    count_prompt_tokens,
)
from gateway.backends.model_files import load_tokenizer
from gateway.backends.http_client import ConnectionBroken, HTTPClientError
from gateway.backends.upstream_http import (
    MAX_ERROR_BODY,
    EmptyStream,
    UpstreamHTTP,
    bad_upstream,
    map_status_error,
    map_transport_error,
)
from gateway.backends.upstream_bans import BanTranslator, UpstreamBans
from gateway.backends.upstream_stream import StreamRecord, upstream_chunks
from gateway.backends.sampling import alternatives_to_fetch
from gateway.backends.vllm_plugin import XARGS_KEY

if TYPE_CHECKING:
    from gateway.metrics import GatewayMetrics
    from gateway.settings import Settings

log = logging.getLogger(__name__)

# -- the backend -----------------------------------------------------------------------------


class OpenAIUpstream:
    """Proxies generation to an OpenAI-compatible server; see the module docstring."""

    supports_logits_hooks = False
    features = frozenset({TOOLS, CONTENT_PARTS, JSON_OUTPUT})
    """Passed through to the upstream: tools, image/audio parts, `response_format` (see `payload`)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        kind: Literal["openai", "vllm"] = "openai",
        tokenizer: str | Any | None = None,
        cache_dir: Path = Path("var/models"),
        served_model_name: str | None = None,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        start_timeout: float = 120.0,
        max_connections: int = 100,
        metrics: GatewayMetrics | None = None,
    ):
        if kind not in ("openai", "vllm"):
            raise ValueError(f"upstream kind must be 'openai' or 'vllm', not {kind!r}")
        self.base_url = normalise_base_url(base_url)
        self.kind = kind
        self._tokenizer_spec = tokenizer if isinstance(tokenizer, (str, Path)) else None
        self._tokenizer: Any = None if self._tokenizer_spec else tokenizer
        self._cache_dir = cache_dir
        self._served_name = served_model_name
        self._start_timeout = start_timeout
        self._http = UpstreamHTTP(self.base_url, api_key=api_key, timeout=timeout, connect_timeout=connect_timeout,
                                  max_connections=max_connections)
        self._metrics = metrics
        self._started = False
        self._upstream_model: str | None = None
        self._upstream_models: list[str] = []
        self._discovery: asyncio.Task | None = None
        self._closed = False
        self._active = 0
        self._ban_translator = BanTranslator(kind)
        self.ignored_controls = 0
        """Generations in which the upstream emitted a banned token (also the Prometheus counter)."""

    @classmethod
    def from_settings(cls, settings: Settings, *, metrics: GatewayMetrics | None = None) -> OpenAIUpstream:
        if not settings.upstream_url:
            raise ValueError("the openai backend needs UNLEARN_UPSTREAM_URL (--upstream)")
        return cls(
            settings.upstream_url,
            api_key=settings.upstream_api_key.get_secret_value() if settings.upstream_api_key else None,
            kind=settings.upstream_kind,
            tokenizer=settings.upstream_tokenizer,
            cache_dir=settings.cache_dir,
            served_model_name=settings.served_model_name,
            timeout=settings.upstream_timeout,
            connect_timeout=settings.upstream_connect_timeout,
            start_timeout=settings.upstream_start_timeout,
            max_connections=settings.upstream_max_connections,
            metrics=metrics,
        )

    # -- Backend protocol -------------------------------------------------------------

    @property
    def model_ids(self) -> list[str]:
        if self._served_name:
            return [self._served_name]
        return [self._upstream_model] if self._upstream_model else []

    @property
    def ready(self) -> bool:
        return self._started and not self._closed and self._upstream_model is not None

    @property
    def tokenizer(self) -> Any | None:
        return self._tokenizer

    @property
    def active_requests(self) -> int:
        """Upstream streams open right now (a closed client iterator drops out at once)."""
        return self._active

    @property
    def upstream_models(self) -> list[str]:
        return list(self._upstream_models)

    async def start(self) -> None:
        started = time.perf_counter()
        if self._tokenizer_spec:
            self._tokenizer = await asyncio.to_thread(load_tokenizer, str(self._tokenizer_spec), self._cache_dir)
        else:
            log.warning("UNLEARN_UPSTREAM_TOKENIZER is not set: GUARD cannot ban tokens on the upstream; "
                        "only the output gate protects its answers")
        self._http.open()
        self._started = True
        try:
            await self._discover(time.monotonic() + self._start_timeout)
        except BackendError as exc:
            if not self._served_name:
                await self._http.close()
                self._started = False
                raise RuntimeError(
                    f"upstream {self.base_url} did not list its models within {self._start_timeout:g} s ({exc}); "
                    "set UNLEARN_SERVED_MODEL_NAME to start without it") from None
            log.error("upstream %s not reachable at start (%s); serving %r, retrying in the background",
                      self.base_url, exc, self._served_name)
            self._discovery = asyncio.create_task(self._discover(None))
            return
        log.info("upstream %s ready: serving %s as %s in %.1fs", self.base_url, self._upstream_model,
                 self.model_ids[0], time.perf_counter() - started)

    async def close(self) -> None:
        self._closed = True
        if self._discovery is not None:
            self._discovery.cancel()
            await asyncio.gather(self._discovery, return_exceptions=True)
        await self._http.close()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        if not self._started or self._closed:
            raise BackendError("The upstream backend is not started.", status=503, code="model_not_ready")
        bans = self._bans(request.banned_sequences)
        path, body = self.payload(request, bans)
        seen = StreamRecord()
        self._active += 1
        try:
            try:
                async with aclosing(self._exchange(path, body, request, seen, bans is not None)) as chunks:
                    async for chunk in chunks:
                        yield chunk
            except EmptyStream:
                # llama.cpp answers a streamed request that fails before its first token (context
                # length) with an empty 200 stream; asked again without streaming it says why.
                body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
                async with aclosing(self._exchange(path, body, request, seen, bans is not None)) as chunks:
                    async for chunk in chunks:
                        yield chunk
        finally:
            self._active -= 1
            if bans is not None:
                self._check_controls(bans, seen)

    async def _exchange(self, path: str, body: dict, request: GenerationRequest, seen: StreamRecord,
                        track: bool) -> AsyncIterator[GenerationChunk]:
        """One upstream call: HTTP errors mapped, the response parsed into chunks as it arrives."""
        async with self._http.post(path, body) as response:
            consumer_closed = False
            try:
                if response.status >= 400:
                    raise map_status_error(response.status, await response.read(MAX_ERROR_BODY))
                try:
                    chunks = upstream_chunks(
                        response, seen, chat=request.messages is not None, want_logprobs=request.params.logprobs,
                        track=track, streamed=bool(body.get("stream")),
                        count_prompt=lambda: count_prompt_tokens(self._tokenizer, request))
                    async with aclosing(chunks):
                        async for chunk in chunks:
                            yield chunk
                except GeneratorExit:
                    consumer_closed = True
                    raise
            except HTTPClientError as exc:
                if consumer_closed:  # the connection broke while we were closing it anyway
                    return
                if body.get("stream") and not seen.events and isinstance(exc, ConnectionBroken):
                    raise EmptyStream() from None  # llama.cpp may also cut such a stream short
                raise map_transport_error(exc) from None

    # -- request ----------------------------------------------------------------------

    def logprob_cap(self, request: GenerationRequest) -> int:
        """The most alternatives the upstream returns per token: 20 on chat (OpenAI and vLLM); on the
        legacy completions endpoint OpenAI allows 5, vLLM its max_logprobs (20 by default)."""
        return 20 if request.messages is not None or self.kind == "vllm" else 5

    def payload(self, request: GenerationRequest, bans: UpstreamBans | None = None) -> tuple[str, dict]:
        """The upstream path and JSON body of one generation."""
        p = request.params
        chat = request.messages is not None
        body: dict[str, Any] = {
            "model": self._upstream_model or self._served_name,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": p.max_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
        }
        if chat:
            body["messages"] = request.messages
            for key in ("tools", "tool_choice", "parallel_tool_calls", "response_format"):
                value = getattr(request, key)
                if value is not None:
                    body[key] = value
        else:
            body["prompt"] = request.prompt or ""
        if p.seed is not None:
            body["seed"] = p.seed
        if p.stop:
            body["stop"] = list(p.stop)
        if p.presence_penalty:
            body["presence_penalty"] = p.presence_penalty
        if p.frequency_penalty:
            body["frequency_penalty"] = p.frequency_penalty
        if p.logprobs:  # a margin of extra alternatives: the output filter refills from them and cuts to k
            fetch = alternatives_to_fetch(p.top_logprobs, self.logprob_cap(request))
            if chat:
                body["logprobs"], body["top_logprobs"] = True, fetch
            else:
                body["logprobs"] = fetch
        bias = {str(token): float(value) for token, value in p.logit_bias.items()}
        if bans is not None:
            bias.update(bans.logit_bias)  # a ban wins over the client's own bias for that token
        if bias:
            body["logit_bias"] = bias
        if self.kind == "vllm":
            body["return_token_ids"] = True
            if bans is not None:
                if bans.bad_words:
                    body["bad_words"] = bans.bad_words
                body["vllm_xargs"] = {XARGS_KEY: bans.xargs}
        return ("/chat/completions" if chat else "/completions"), body

    def _bans(self, sequences: Sequence[Sequence[int]]) -> UpstreamBans | None:
        return self._ban_translator.bans(sequences, self._tokenizer)

    # -- response ---------------------------------------------------------------------

    def _check_controls(self, bans: UpstreamBans, seen: StreamRecord) -> None:
        """Count generations where the upstream emitted a banned token despite the controls."""
        try:
            if seen.exact_ids:
                ignored = bans.violated_by(seen.token_ids)
            elif bans.single_texts and seen.deltas:
                ignored = any(delta in bans.single_texts for delta in seen.deltas)
            else:
                return
        except Exception:  # never let bookkeeping break a response
            log.exception("checking the upstream's controls failed")
            return
        if ignored:
            self.ignored_controls += 1
            if self._metrics is not None:
                self._metrics.upstream_ignored_controls.inc()
            if self.ignored_controls == 1 or self.ignored_controls % 100 == 0:
                log.warning("the upstream emitted a token the gateway had banned (%d times so far): it ignores "
                            "logit_bias%s; the output gate still filtered the answer", self.ignored_controls,
                            " or bad_words" if self.kind == "vllm" else "")

    # -- model discovery --------------------------------------------------------------

    async def _discover(self, deadline: float | None) -> None:
        """GET /models until it answers (or the deadline passes: the last error is raised)."""
        delay = 0.1
        while True:
            # no single attempt may outlast the start timeout
            cap = max(0.05, deadline - time.monotonic()) if deadline is not None else None
            try:
                status, body = await self._http.get("/models", timeout=cap)
                if status >= 400:
                    raise map_status_error(status, body)
                ids = _model_ids(body)
                if not ids:
                    raise bad_upstream("it lists no models")
                self._upstream_models = ids
                self._upstream_model = self._served_name if self._served_name in ids else ids[0]
                return
            except BackendError as exc:
                error = exc
            if deadline is not None and time.monotonic() + delay >= deadline:
                raise error
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


# -- helpers ---------------------------------------------------------------------------------


def normalise_base_url(url: str) -> str:
    """`http://host:8000` → `http://host:8000/v1`; a URL with a path is used as given."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"upstream URL must be http(s)://host[:port][/path], not {url!r}")
    return url if parts.path not in ("", "/") else url + "/v1"


def _model_ids(body: bytes) -> list[str]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise bad_upstream("its model list is not JSON") from None
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise bad_upstream("its model list is malformed")
    return [str(m["id"]) for m in items if isinstance(m, dict) and m.get("id")]
