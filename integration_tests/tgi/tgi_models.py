"""Model directories TGI's server can load with its pinned transformers (4.51).

specplug's default model (SmolLM2-135M-Instruct, converted by ``specplug.adapters.hf.models``)
is saved by the project's transformers 5.x: its ``config.json`` holds ``rope_parameters``
(4.51 reads ``rope_theta`` and would silently fall back to 10000) and its tokenizer config
names ``TokenizersBackend`` (unknown to 4.51). :func:`tgi_model_dir` writes a 4.51-readable
copy beside the cache (``<cache>/tgi/<name>``, weights linked, not copied); :func:`tiny_model_dir` saves a small random
Llama with the same tokenizer. Run in TGI's environment (``tgi_router.tgi_env``).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil


def _v4_config(src: dict) -> dict:
    cfg = dict(src)
    rope = cfg.pop("rope_parameters", None)
    if rope is not None:
        cfg["rope_theta"] = rope.get("rope_theta", 10000.0)
        if rope.get("rope_type", "default") != "default":
            cfg["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    return cfg


def _save_tokenizer(src: pathlib.Path, dst: pathlib.Path) -> None:
    from transformers import PreTrainedTokenizerFast

    meta = json.loads((src / "tokenizer_config.json").read_text())
    special = {k: meta[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token") if meta.get(k)}
    tok = PreTrainedTokenizerFast(tokenizer_file=str(src / "tokenizer.json"), **special)
    template = src / "chat_template.jinja"
    if template.is_file():
        tok.chat_template = template.read_text()
    tok.save_pretrained(dst)


def tgi_model_dir(src: str | os.PathLike) -> pathlib.Path:
    """A copy of the Hugging Face directory ``src`` that transformers 4.51 reads correctly."""
    src = pathlib.Path(src).resolve()
    dst = src.parent.parent / "tgi" / src.name  # <cache>/models/<digest> -> <cache>/tgi/<digest>
    if (dst / "config.json").is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for f in src.iterdir():
        if f.suffix == ".safetensors":
            (tmp / f.name).symlink_to(f)
    if (src / "generation_config.json").is_file():
        shutil.copy(src / "generation_config.json", tmp)
    (tmp / "config.json").write_text(json.dumps(_v4_config(json.loads((src / "config.json").read_text())), indent=2))
    _save_tokenizer(src, tmp)
    os.replace(tmp, dst)
    return dst


def tiny_model_dir(tokenizer_src: str | os.PathLike, out: str | os.PathLike, seed: int = 0) -> pathlib.Path:
    """A random 2-layer Llama (fp32; an init wide enough that greedy output varies and repeats, as drafters need) saved in
    ``out`` with the tokenizer of ``tokenizer_src``'s 4.51 copy."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = pathlib.Path(out)
    if (out / "config.json").is_file():
        return out
    tok = AutoTokenizer.from_pretrained(tgi_model_dir(tokenizer_src))
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        initializer_range=0.05,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        rope_theta=10000.0,
    )
    model = LlamaForCausalLM(cfg).eval()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    os.replace(tmp, out)
    return out
