"""Upstream backend: any OpenAI-compatible server (vLLM, llama.cpp, OpenAI) behind the gateway.

Generation is always streamed from the upstream (`stream: true`, with
`stream_options.include_usage`), whether or not the client asked for a stream, so
the output gate sees tokens as they arrive and a non-stream answer is simply the
collected stream. Closing the iterator (client gone, gate blocked) closes the
httpx stream, and with it the upstream connection: the upstream stops generating.

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

Errors: connection refused → 503, timeouts → 504, upstream 5xx or a malformed
response → 502; upstream 4xx (e.g. context length) keep their status and message,
except credentials/route problems (401/403/404), which are the gateway's
configuration and become 502.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import httpx
import orjson

from gateway.backends.base import BackendError, GenerationChunk, GenerationRequest, TokenLogprob, count_prompt_tokens
from gateway.backends.vllm_plugin import XARGS_KEY

if TYPE_CHECKING:
    from gateway.metrics import GatewayMetrics
    from gateway.settings import Settings

log = logging.getLogger(__name__)

BAN_BIAS = -100.0
"""The strongest bias the OpenAI API accepts; upstreams treat it as a ban."""
_MAX_ERROR_BODY = 64 * 1024
_MAX_MESSAGE = 1000
_BAN_CACHE_SIZE = 32
_MISSING_LOGPROB = -9999.0  # what vLLM reports for -inf


# -- errors ---------------------------------------------------------------------------------


def _unavailable(detail: str) -> BackendError:
    return BackendError(f"The upstream model server is unavailable ({detail}); retry shortly.", status=503,
                        code="upstream_unavailable")


def _timed_out() -> BackendError:
    return BackendError("The upstream model server did not answer in time.", status=504, code="upstream_timeout")


def _bad_upstream(detail: str) -> BackendError:
    return BackendError(f"The upstream model server failed: {detail}.", status=502, code="bad_upstream")


class _EmptyStream(BackendError):
    """The upstream answered a stream request with a stream without a single event."""

    def __init__(self) -> None:
        super().__init__("The upstream model server sent an empty response.", status=502, code="bad_upstream")


def map_transport_error(exc: httpx.HTTPError) -> BackendError:
    """httpx failures → the gateway's errors (503 unreachable, 504 timeout, 502 broken)."""
    if isinstance(exc, httpx.PoolTimeout):
        return _unavailable("all connections to it are busy")
    if isinstance(exc, httpx.TimeoutException):
        return _timed_out()
    if isinstance(exc, httpx.ConnectError):
        return _unavailable("connection refused")
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return _bad_upstream("the connection broke")
    return _bad_upstream(type(exc).__name__)


def _error_fields(body: bytes) -> tuple[str | None, str | None, str | None]:
    """(message, code, param) from an OpenAI, vLLM or FastAPI style error body."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None, None
    if not isinstance(data, dict):
        return None, None, None
    err = data.get("error", data)
    if isinstance(err, str):
        return err[:_MAX_MESSAGE], None, None
    if not isinstance(err, dict):
        return None, None, None
    message = err.get("message")
    if message is None and "detail" in err:  # FastAPI
        detail = err["detail"]
        message = detail if isinstance(detail, str) else "; ".join(
            str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in (detail if isinstance(detail, list) else [detail])
        )
    code, param = err.get("code"), err.get("param")
    return (
        str(message)[:_MAX_MESSAGE] if message else None,
        code if isinstance(code, str) else None,
        param if isinstance(param, str) else None,
    )


def map_status_error(status: int, body: bytes) -> BackendError:
    """An upstream HTTP error → the error the client sees."""
    message, code, param = _error_fields(body)
    if status in (401, 403):
        return _bad_upstream("it rejected the gateway's credentials (check UNLEARN_UPSTREAM_API_KEY)")
    if status == 404:
        return _bad_upstream("it does not serve this route or model")
    if status in (408, 504):
        return _timed_out()
    if status == 429:
        return BackendError(message or "The upstream model server is at capacity; retry shortly.", status=429,
                            code="rate_limit_exceeded")
    if status == 503:
        return _unavailable("HTTP 503")
    if 400 <= status < 500:
        return BackendError(message or f"The upstream model server rejected the request (HTTP {status}).",
                            status=400 if status == 422 else status, code=code or "invalid_request", param=param)
    return _bad_upstream(f"HTTP {status}")


# -- the tokenizer ---------------------------------------------------------------------------


_tokenizers: dict[tuple[str, str], Any] = {}
_tokenizers_lock = threading.Lock()


def load_tokenizer(spec: str, cache_dir: Path) -> Any:
    """A Hugging Face tokenizer from an HF directory or a `.gguf` file (extracted once into `cache_dir`).

    Memoised per process: gateways sharing a process (tests, several apps) load it once.
    """
    key = (str(Path(spec).expanduser().resolve()), str(cache_dir.resolve()))
    with _tokenizers_lock:
        if key not in _tokenizers:
            _tokenizers[key] = _load_tokenizer(spec, cache_dir)
        return _tokenizers[key]


def _load_tokenizer(spec: str, cache_dir: Path) -> Any:
    from transformers import AutoTokenizer

    from gateway.backends.model_files import _fingerprint  # same cache key as the weight conversion

    path = Path(spec).expanduser()
    if path.is_dir() and not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) != 1:
            raise ValueError(f"UNLEARN_UPSTREAM_TOKENIZER: {path} has no tokenizer files and not exactly one .gguf")
        path = ggufs[0]
    if path.is_dir():
        return AutoTokenizer.from_pretrained(path)
    if not (path.is_file() and path.suffix == ".gguf"):
        raise ValueError(f"UNLEARN_UPSTREAM_TOKENIZER: {path} is neither an HF directory nor a .gguf file")
    key = f"{path.stem}-{_fingerprint(path)}"
    for candidate in (cache_dir / key, cache_dir / f"{key}-tokenizer"):  # converted weights carry one too
        if (candidate / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(candidate)
    log.info("extracting the tokenizer of %s into %s (first start only)", path.name, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tokenizer-", dir=cache_dir))
    try:
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, cache_dir / f"{key}-tokenizer")
    except OSError:
        log.warning("could not cache the tokenizer of %s", path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer


# -- bans ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpstreamBans:
    """A request's banned sequences in the forms the upstream understands."""

    sequences: tuple[tuple[int, ...], ...]
    single_ids: frozenset[int]
    logit_bias: dict[str, float]
    bad_words: list[str]
    xargs: str
    single_texts: frozenset[str] = frozenset()  # the decoded text of each banned single token
    source: object = field(default=None, compare=False, repr=False)  # what the cache entry was derived from

    def violated_by(self, token_ids: Sequence[int]) -> bool:
        """Did the output (the upstream's own token ids) contain any banned sequence?"""
        if any(t in self.single_ids for t in token_ids):
            return True
        ids = list(token_ids)
        by_first: dict[int, list[tuple[int, ...]]] = {}
        for seq in self.sequences:
            if len(seq) > 1:
                by_first.setdefault(seq[0], []).append(seq)
        for i, token in enumerate(ids):
            for seq in by_first.get(token, ()):
                if tuple(ids[i : i + len(seq)]) == seq:
                    return True
        return False


@dataclass
class _Seen:
    """What one generation produced, for usage and the ignored-control check."""

    events: int = 0
    deltas: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    exact_ids: bool = False
    completion_tokens: int = 0
    prompt_tokens: int = 0
    usage_completion_tokens: int | None = None


# -- the backend -----------------------------------------------------------------------------


class OpenAIUpstream:
    """Proxies generation to an OpenAI-compatible server; see the module docstring."""

    supports_logits_hooks = False

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
        self._api_key = api_key
        self._tokenizer_spec = tokenizer if isinstance(tokenizer, (str, Path)) else None
        self._tokenizer: Any = None if self._tokenizer_spec else tokenizer
        self._cache_dir = cache_dir
        self._served_name = served_model_name
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self._start_timeout = start_timeout
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._metrics = metrics
        self._client: httpx.AsyncClient | None = None
        self._upstream_model: str | None = None
        self._upstream_models: list[str] = []
        self._discovery: asyncio.Task | None = None
        self._closed = False
        self._active = 0
        self._ban_cache: OrderedDict[int, UpstreamBans] = OrderedDict()
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
        return self._client is not None and not self._closed and self._upstream_model is not None

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
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        self._client = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=self._timeout,
                                         limits=self._limits)
        try:
            await self._discover(time.monotonic() + self._start_timeout)
        except BackendError as exc:
            if not self._served_name:
                await self._client.aclose()
                self._client = None
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
        if self._client is not None:
            await self._client.aclose()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        client = self._client
        if client is None or self._closed:
            raise BackendError("The upstream backend is not started.", status=503, code="model_not_ready")
        bans = self._bans(request.banned_sequences)
        path, body = self.payload(request, bans)
        seen = _Seen()
        self._active += 1
        try:
            try:
                async with aclosing(self._exchange(client, path, body, request, seen, bans is not None)) as chunks:
                    async for chunk in chunks:
                        yield chunk
            except _EmptyStream:
                # llama.cpp answers a streamed request that fails before its first token (context
                # length) with an empty 200 stream; asked again without streaming it says why.
                body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
                async with aclosing(self._exchange(client, path, body, request, seen, bans is not None)) as chunks:
                    async for chunk in chunks:
                        yield chunk
        finally:
            self._active -= 1
            if bans is not None:
                self._check_controls(bans, seen)

    async def _exchange(self, client: httpx.AsyncClient, path: str, body: dict, request: GenerationRequest,
                        seen: _Seen, track: bool) -> AsyncIterator[GenerationChunk]:
        """One upstream call: HTTP errors mapped, the response parsed into chunks as it arrives."""
        outgoing = client.build_request("POST", path, json=body)
        try:
            try:
                response = await client.send(outgoing, stream=True)
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
                # A pooled keep-alive connection the upstream had just closed (uvicorn drops idle
                # ones after 5 s): nothing was answered, so send it once more on a fresh one.
                response = await client.send(outgoing, stream=True)
        except httpx.HTTPError as exc:
            raise map_transport_error(exc) from None
        consumer_closed = False
        try:
            if response.status_code >= 400:
                raise map_status_error(response.status_code, await _read_capped(response))
            try:
                chunks = self._chunks(response, request, seen, track, streamed=bool(body.get("stream")))
                async with aclosing(chunks):
                    async for chunk in chunks:
                        yield chunk
            except GeneratorExit:
                consumer_closed = True
                raise
        except httpx.HTTPError as exc:
            if consumer_closed:  # the connection broke while we were closing it anyway
                return
            if body.get("stream") and not seen.events and isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
                raise _EmptyStream() from None  # llama.cpp may also cut such a stream short
            raise map_transport_error(exc) from None
        finally:
            await response.aclose()

    # -- request ----------------------------------------------------------------------

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
        if p.logprobs:
            if chat:
                body["logprobs"], body["top_logprobs"] = True, p.top_logprobs
            else:
                body["logprobs"] = p.top_logprobs
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
        if not sequences:
            return None
        # Keyed by identity: the pipeline hands every request of a target snapshot the same tuple,
        # and the entry keeps it alive, so an id is never reused while cached.
        cached = self._ban_cache.get(id(sequences))
        if cached is not None and cached.source is sequences:
            self._ban_cache.move_to_end(id(sequences))
            return cached
        key = tuple(tuple(int(t) for t in seq) for seq in sequences if len(seq))
        single = frozenset(seq[0] for seq in key if len(seq) == 1)
        words: list[str] = []
        if self.kind == "vllm" and self._tokenizer is not None:
            decoded = self._tokenizer.batch_decode([list(seq) for seq in key])
            words = list(dict.fromkeys(w.strip() for w in decoded if w.strip()))
        bans = UpstreamBans(
            sequences=key,
            single_ids=single,
            logit_bias={str(t): BAN_BIAS for t in sorted(single)},
            bad_words=words,
            xargs=orjson.dumps([list(seq) for seq in key]).decode(),
            single_texts=frozenset(self._tokenizer.decode([t]) for t in single) if self._tokenizer else frozenset(),
            source=sequences,
        )
        self._ban_cache[id(sequences)] = bans
        if len(self._ban_cache) > _BAN_CACHE_SIZE:
            self._ban_cache.popitem(last=False)
        return bans

    # -- response ---------------------------------------------------------------------

    async def _chunks(self, response: httpx.Response, request: GenerationRequest, seen: _Seen,
                      track: bool, *, streamed: bool) -> AsyncIterator[GenerationChunk]:
        chat, want_logprobs = request.messages is not None, request.params.logprobs
        final: GenerationChunk | None = None
        async for event in _events(response):
            seen.events += 1
            if not isinstance(event, dict):
                raise _bad_upstream("malformed response")
            if event.get("error") is not None:
                message, _, _ = _error_fields(orjson.dumps({"error": event["error"]}))
                log.error("upstream error mid-stream: %s", message)
                raise _bad_upstream("it reported an error while generating")
            usage = event.get("usage")
            if isinstance(usage, dict):
                seen.prompt_tokens = _int(usage.get("prompt_tokens"), seen.prompt_tokens)
                seen.usage_completion_tokens = _int(usage.get("completion_tokens"), 0)
            choices = event.get("choices")
            if choices is None and isinstance(usage, dict):
                continue
            if not isinstance(choices, list):
                raise _bad_upstream("malformed response (no choices)")
            for choice in choices:
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    raise _bad_upstream("malformed response (unexpected choice)")
                if final is not None:
                    continue  # nothing may follow the finishing chunk but usage
                chunk = _parse_choice(choice, chat)
                if chunk.token_ids:
                    seen.exact_ids = True
                    seen.token_ids.extend(chunk.token_ids)
                if chunk.text or chunk.token_ids or chunk.logprobs:
                    seen.completion_tokens += max(1, len(chunk.token_ids), len(chunk.logprobs))
                    if track:
                        seen.deltas.append(chunk.text)
                if not want_logprobs:
                    chunk.logprobs = []
                chunk.prompt_tokens, chunk.completion_tokens = seen.prompt_tokens, seen.completion_tokens
                if chunk.finish_reason is not None:
                    final = chunk  # held until the usage that follows it
                elif chunk.text or chunk.logprobs:
                    yield chunk
        if final is None:
            if not seen.events and streamed:
                raise _EmptyStream()
            raise _bad_upstream("the response ended before the answer was finished")
        if seen.usage_completion_tokens is not None:
            final.completion_tokens = seen.usage_completion_tokens
        elif not seen.prompt_tokens:  # no usage from the upstream (llama.cpp): count the prompt here
            seen.prompt_tokens = count_prompt_tokens(self._tokenizer, request)
        final.prompt_tokens = seen.prompt_tokens
        yield final

    def _check_controls(self, bans: UpstreamBans, seen: _Seen) -> None:
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
        assert self._client is not None
        delay = 0.1
        while True:
            timeout = self._timeout
            if deadline is not None:  # no single attempt may outlast the start timeout
                cap = max(0.05, deadline - time.monotonic())
                timeout = httpx.Timeout(min(timeout.read or cap, cap), connect=min(timeout.connect or cap, cap))
            try:
                response = await self._client.get("/models", timeout=timeout)
                if response.status_code >= 400:
                    raise map_status_error(response.status_code, response.content[:_MAX_ERROR_BODY])
                ids = _model_ids(response.content)
                if not ids:
                    raise _bad_upstream("it lists no models")
                self._upstream_models = ids
                self._upstream_model = self._served_name if self._served_name in ids else ids[0]
                return
            except httpx.HTTPError as exc:
                error = map_transport_error(exc)
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
        raise _bad_upstream("its model list is not JSON") from None
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise _bad_upstream("its model list is malformed")
    return [str(m["id"]) for m in items if isinstance(m, dict) and m.get("id")]


async def _read_capped(response: httpx.Response) -> bytes:
    body = bytearray()
    async for part in response.aiter_bytes():
        body += part
        if len(body) >= _MAX_ERROR_BODY:
            break
    return bytes(body[:_MAX_ERROR_BODY])


async def _events(response: httpx.Response) -> AsyncIterator[Any]:
    """Decoded JSON payloads of an SSE stream up to `[DONE]`; a plain JSON body counts as one event.

    Parsed on bytes (no text decoding of whole chunks, no per-line strings for what
    is not a `data:` field), and the body is read to its end after `[DONE]` so the
    keep-alive connection goes back to the pool instead of being closed.
    """
    if "text/event-stream" not in response.headers.get("content-type", ""):
        raw = await response.aread()  # a server that ignored stream:true
        try:
            yield orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise _bad_upstream("malformed response (neither SSE nor JSON)") from None
        return
    data: list[bytes] = []
    buffer = b""
    stream = response.aiter_bytes()
    async for part in stream:
        buffer = buffer + part if buffer else part
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            line = line.rstrip(b"\r")
            if line:
                if line.startswith(b"data:"):
                    data.append(line[6:] if line.startswith(b"data: ") else line[5:])
                continue  # comments (": ping"), event:, id:, retry:
            if not data:
                continue
            payload, data = b"\n".join(data), []
            if payload.strip() == b"[DONE]":
                await _drain(stream)
                return
            yield _event_json(payload)
    tail = buffer.rstrip(b"\r")  # a last line without its newline
    if tail.startswith(b"data:"):
        data.append(tail[6:] if tail.startswith(b"data: ") else tail[5:])
    if data and b"\n".join(data).strip() != b"[DONE]":  # a last event without its blank line
        yield _event_json(b"\n".join(data))


def _event_json(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise _bad_upstream("malformed response (an SSE event is not JSON)") from None


async def _drain(stream: AsyncIterator[bytes], limit: int = _MAX_ERROR_BODY) -> None:
    """Read what follows `[DONE]` (normally nothing) so the connection can be reused; give up past `limit`."""
    seen = 0
    async for part in stream:
        seen += len(part)
        if seen > limit:
            return


_FINISH = {"stop": "stop", "length": "length", "content_filter": "content_filter", "eos": "stop",
           "tool_calls": "stop", "function_call": "stop", "abort": "stop"}


def _parse_choice(choice: dict, chat: bool) -> GenerationChunk:
    if chat:
        part = choice.get("delta") if "delta" in choice else choice.get("message")
        part = part if isinstance(part, dict) else {}
        text = part.get("content")
    else:
        text = choice.get("text")
    if text is not None and not isinstance(text, str):
        raise _bad_upstream("malformed response (content is not text)")
    ids = choice.get("token_ids")
    token_ids = [int(t) for t in ids if isinstance(t, int)] if isinstance(ids, list) else []
    finish = choice.get("finish_reason")
    return GenerationChunk(
        text=text or "",
        token_ids=token_ids,
        logprobs=_logprobs(choice.get("logprobs"), chat),
        finish_reason=_FINISH.get(finish, "stop") if finish else None,
    )


def _logprobs(raw: Any, chat: bool) -> list[TokenLogprob]:
    if not isinstance(raw, dict):
        return []
    out: list[TokenLogprob] = []
    if chat:
        for entry in raw.get("content") or []:
            if not isinstance(entry, dict):
                continue
            token = str(entry.get("token", ""))
            top = tuple(
                (str(alt.get("token", "")), _float(alt.get("logprob")), _bytes(alt.get("bytes"), str(alt.get("token", ""))))
                for alt in entry.get("top_logprobs") or [] if isinstance(alt, dict)
            )
            out.append(TokenLogprob(token, _float(entry.get("logprob")), _bytes(entry.get("bytes"), token), top))
        return out
    tokens = raw.get("tokens") or []
    values = raw.get("token_logprobs") or []
    tops = raw.get("top_logprobs") or []
    for i, token in enumerate(tokens):
        token = str(token)
        alts = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        top = tuple((str(t), _float(lp), list(str(t).encode())) for t, lp in alts.items())
        out.append(TokenLogprob(token, _float(values[i] if i < len(values) else None), list(token.encode()), top))
    return out


def _float(value: Any) -> float:
    try:
        result = float(value)
    except (TypeError, ValueError):
        return _MISSING_LOGPROB
    return result if result == result and result > _MISSING_LOGPROB else _MISSING_LOGPROB


def _bytes(value: Any, token: str) -> list[int]:
    if isinstance(value, list) and all(isinstance(b, int) for b in value):
        return list(value)
    return list(token.encode())


def _int(value: Any, default: int) -> int:
    return int(value) if isinstance(value, (int, float)) else default
