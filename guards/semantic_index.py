"""All passage vectors of a target set, scored against a conversation's unit vectors.

Two ways to score, chosen by size when the index is built (once per target snapshot):

* exact: one stacked float32 matrix, one matrix product per request. Up to
  `EXACT_MAX_ROWS` passages it costs well under a millisecond.
* compressed scan, then exact re-rank: at 100,000 targets (~300k-700k passages) the
  float matrix is hundreds of MB and one product costs tens of milliseconds, memory
  bound. A faiss ``IndexPQFastScan`` keeps a 24-byte product-quantised code per passage
  and scans *all* of them with SIMD lookup tables (~0.3 ms); the `CANDIDATES` best
  passages per query unit are then scored exactly against the float matrix and
  thresholded. Unlike an inverted file, no bucket of passages is ever skipped, so a
  near passage is missed only if more than `CANDIDATES` others look nearer to the same
  unit; scores are exact. `bench/bench_detection.py` reports the recall.

Rows of one target are contiguous and `owners` maps a row to its target, so a hit on
any passage is a hit on its target.

BLAS runs single-threaded in a process that builds an index (`_single_threaded_blas`): the
products here are one to 32 query rows, where OpenBLAS's worker threads cost far more than
they save, and on a busy 2-core machine they spin against the event loop -- measured here
(bench/bench_detection.py, 1 query x 4k passages): 9.4 ms per product with OpenBLAS's
default 2 threads against 0.43 ms with one.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from functools import cache

import numpy as np

EXACT_MAX_ROWS = 20_000
"""Passages up to which every request scores all of them exactly (~0.4 ms per 10k rows here)."""
CANDIDATES = 64
"""Passages per query unit that the compressed scan hands to the exact re-rank."""
HIT_CACHE_SIZE = 8192
"""Unit texts whose hits an index remembers (per snapshot: a target change starts afresh)."""
_PQ_DIMS_PER_CODE = 8  # 384 dims -> 48 sub-quantisers x 4 bits = 24 bytes a passage
_PQ_TRAIN_ROWS = 20_000
_CHUNK_ROWS = 262_144  # bounds the exact (queries x passages) temporary to ~32 MiB for 32 queries


class SemanticIndex:
    """Per-target best cosine of some query vectors, over every stored passage."""

    def __init__(self, entries: Iterable[tuple[str, np.ndarray]], *, exact_max_rows: int = EXACT_MAX_ROWS) -> None:
        _single_threaded_blas()
        ids: list[str] = []
        blocks: list[np.ndarray] = []
        for target_id, vectors in entries:
            matrix = np.asarray(vectors, dtype=np.float32)
            if matrix.size == 0:
                continue  # a target without passages cannot be matched semantically
            width = blocks[0].shape[1] if blocks else matrix.shape[-1]
            if matrix.ndim != 2 or matrix.shape[1] != width:
                raise ValueError(f"target {target_id!r}: expected (n, {width}) vectors, got {matrix.shape}")
            ids.append(target_id)
            blocks.append(matrix)
        counts = np.array([b.shape[0] for b in blocks], dtype=np.intp)
        self.ids: tuple[str, ...] = tuple(ids)
        #: row -> position in ``ids`` of the target owning that passage.
        self.owners = np.repeat(np.arange(len(ids), dtype=np.intp), counts)
        self._starts = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.intp) if ids else counts
        matrix = np.ascontiguousarray(np.vstack(blocks)) if blocks else np.zeros((0, 0), np.float32)
        self.rows, self.dim = matrix.shape
        self._matrix = matrix
        self._codes = _build_codes(matrix) if self.rows > exact_max_rows else None
        self._hit_cache: OrderedDict[tuple[str, float], dict[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def approximate(self) -> bool:
        """True when requests pre-select passages with the compressed scan (large indexes)."""
        return self._codes is not None

    @property
    def nbytes(self) -> int:
        """Memory held by the passage vectors (and their codes)."""
        return self._matrix.nbytes + (self._codes.code_size * self.rows if self._codes is not None else 0)

    def score(self, query_vectors: np.ndarray, threshold: float) -> dict[str, float]:
        """``{target_id: max cosine}`` for the targets scoring at or above ``threshold``."""
        return merge_hits(self.unit_hits(query_vectors, threshold))

    def unit_hits(self, query_vectors: np.ndarray, threshold: float) -> list[dict[str, float]]:
        """Per query row, ``{target_id: max cosine}`` of the targets at or above ``threshold``."""
        queries = _queries(query_vectors)
        if not self.ids or queries.shape[0] == 0:
            return [{} for _ in range(queries.shape[0])]
        if self._codes is None:
            per_target = self._exact_per_target(queries)
            return [{self.ids[i]: float(row[i]) for i in np.flatnonzero(row >= threshold)} for row in per_target]
        _, candidates = self._codes.search(queries, min(CANDIDATES, self.rows))
        hits: list[dict[str, float]] = []
        for query, rows in zip(queries, candidates):
            rows = rows[rows >= 0]
            exact = self._matrix[rows] @ query
            found: dict[str, float] = {}
            for row, value in zip(rows[exact >= threshold].tolist(), exact[exact >= threshold].tolist()):
                target_id = self.ids[self.owners[row]]
                found[target_id] = max(value, found.get(target_id, -2.0))
            hits.append(found)
        return hits

    def cached_hits(self, keys: list[str], threshold: float) -> list[dict[str, float] | None]:
        """`unit_hits` remembered for these unit texts (None where not), for this index's snapshot:
        a conversation re-sends its earlier turns with every request."""
        with self._lock:
            found = [self._hit_cache.get((key, threshold)) for key in keys]
            for key, hit in zip(keys, found):
                if hit is not None:
                    self._hit_cache.move_to_end((key, threshold))
        return found

    def remember_hits(self, keys: list[str], hits: list[dict[str, float]], threshold: float) -> None:
        with self._lock:
            for key, hit in zip(keys, hits):
                self._hit_cache[(key, threshold)] = hit
            while len(self._hit_cache) > HIT_CACHE_SIZE:
                self._hit_cache.popitem(last=False)

    def _row_end(self, target_end: int) -> int:
        return int(self._starts[target_end]) if target_end < len(self._starts) else self.rows

    def best_scores(self, query_vectors: np.ndarray) -> np.ndarray:
        """Max cosine per target (aligned with ``self.ids``) over all queries and passages, exhaustively
        (calibration and tests; requests use `score`)."""
        queries = _queries(query_vectors)
        if not self.ids or queries.shape[0] == 0:
            return np.full(len(self.ids), -1.0, dtype=np.float32)
        return self._exact_per_target(queries).max(axis=0)

    def _exact_per_target(self, queries: np.ndarray) -> np.ndarray:
        """(queries, targets): each query's best cosine over each target's passages, every row scored."""
        per_target = np.empty((queries.shape[0], len(self.ids)), dtype=np.float32)
        for lo, hi in _target_chunks(self._starts, self.rows):
            sims = queries @ self._matrix[self._starts[lo]:self._row_end(hi)].T
            per_target[:, lo:hi] = np.maximum.reduceat(sims, self._starts[lo:hi] - self._starts[lo], axis=1)
        return per_target


def merge_hits(hits: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per-unit hits to per-target best scores."""
    merged: dict[str, float] = {}
    for hit in hits:
        for target_id, value in hit.items():
            if value > merged.get(target_id, -2.0):
                merged[target_id] = value
    return merged


def top_hits(scores: dict[str, float], limit: int) -> dict[str, float]:
    """The `limit` best-scoring targets (ties: the smaller id), so the work a match causes stays bounded."""
    if len(scores) <= limit:
        return scores
    return dict(sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:limit])


def _target_chunks(starts: np.ndarray, rows: int) -> list[tuple[int, int]]:
    """Target ranges [lo, hi) whose passages total about `_CHUNK_ROWS` rows (bounds the temporary)."""
    chunks, lo = [], 0
    while lo < len(starts):
        hi = int(np.searchsorted(starts, starts[lo] + _CHUNK_ROWS, side="left"))
        hi = max(hi, lo + 1)
        chunks.append((lo, hi))
        lo = hi
    return chunks


def _queries(query_vectors: np.ndarray) -> np.ndarray:
    queries = np.ascontiguousarray(query_vectors, dtype=np.float32)
    return queries[None, :] if queries.ndim == 1 else queries


@cache
def _single_threaded_blas() -> None:
    """One BLAS thread for the whole process, once (see the module doc; like faiss's setting below,
    process-wide: the indexes' small products are the process's only BLAS work that matters)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def _build_codes(matrix: np.ndarray):
    """Product-quantised codes of every row, laid out for faiss's SIMD fast scan (inner product)."""
    import faiss

    rows, dim = matrix.shape
    index = faiss.IndexPQFastScan(dim, dim // _PQ_DIMS_PER_CODE, 4, faiss.METRIC_INNER_PRODUCT)
    sample = matrix[np.random.default_rng(0).choice(rows, min(rows, _PQ_TRAIN_ROWS), replace=False)]
    index.train(sample)
    index.add(matrix)
    # Requests scan with 1-32 query units: OpenMP threads cost more than they save.
    # (Process-wide in faiss; this module is its only user.)
    faiss.omp_set_num_threads(1)
    return index
