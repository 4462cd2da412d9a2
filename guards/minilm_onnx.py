"""all-MiniLM-L6-v2 on ONNX Runtime, one intra-op thread: GUARD's default sentence encoder.

Why: with every prompt different, each request pays one MiniLM pass. Measured side by side on
this shared, loaded 2-core VM (bench/bench_semantic_runtime.py), one prompt: torch 46 ms p50 on
one thread and 167 ms on its default two, this 11 ms, same vectors to 1e-7. Torch's intra-op pool is process-wide (shared with the
embedded engine) and spins against the event loop on a busy machine; an ORT session owns its
thread count. Batching did not pay (a 64-prompt batch cost 15 ms a prompt: padding), so
requests are encoded as they come.

The graph is exported once from the bundled safetensors with torch's exporter (~15 s) and
cached under the cache dir (`all-MiniLM-L6-v2-onnx/model.onnx`, 90 MB); nothing is downloaded.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ONNX_DIR = "all-MiniLM-L6-v2-onnx"
"""Directory name under the cache dir; change it when the export changes."""
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model (sentence_bert_config.json)
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class OnnxMiniLM:
    """Tokenizer + ONNX session + mean pooling, exactly what sentence-transformers computes."""

    def __init__(self, model_dir: Path, cache_dir: Path) -> None:
        from tokenizers import Tokenizer

        path = Path(cache_dir) / ONNX_DIR / "model.onnx"
        if not path.is_file():
            _export(model_dir, path)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._tokenizer.enable_padding()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised mean-pooled embeddings, float32 ``(len(texts), 384)``."""
        batch = self._tokenizer.encode_batch(list(texts))
        feeds = {
            "input_ids": np.array([e.ids for e in batch], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in batch], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in batch], dtype=np.int64),
        }
        hidden = self._session.run(None, feeds)[0]
        mask = feeds["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(pooled / norms, dtype=np.float32)


def _export(model_dir: Path, path: Path) -> None:
    """The bundled BERT encoder to ONNX (dynamic batch and length), written atomically: replicas may race."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()
    sample = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)(["hello world"], return_tensors="pt")

    class Encoder(torch.nn.Module):  # keyword arguments only: BertModel's positional order varies by version
        def __init__(self, bert: Any) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):  # noqa: ANN001
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=".model-", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on opsets and tracing, every first start
            torch.onnx.export(Encoder(model), tuple(sample[k] for k in _INPUTS), staging, input_names=list(_INPUTS),
                              output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                              dynamic_axes={k: {0: "batch", 1: "tokens"} for k in (*_INPUTS, "last_hidden_state")})
        os.chmod(staging, 0o644)  # mkstemp's 0600 would hide it from replicas running as other users
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)
