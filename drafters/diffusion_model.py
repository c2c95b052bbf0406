"""A small masked diffusion LM in plain torch: the built-in architecture of the diffusion drafter.

Llama-style blocks (RMSNorm, rotary positions, grouped-query attention, SwiGLU MLP) with
**bidirectional** attention and a mask token, in the style of Dream / LLaDA / Open-dCoder:
the input is the context followed by k mask tokens; one forward pass gives a distribution
at every masked slot (one denoising step).

Checkpoints are Hugging Face format directories: ``config.json`` (``model_type``
``"specplug-mdlm"``, ``mask_token_id``, ``vocab_size`` = the target's vocabulary) and
``model.safetensors`` with Llama tensor names (``model.embed_tokens.weight``,
``model.layers.{i}.self_attn.q_proj.weight``, ..., ``model.norm.weight``, optional
``lm_head.weight``). The mask token may lie past the output vocabulary
(``mask_token_id == vocab_size``): the input embedding table then has one extra row and
the LM head still covers exactly ``vocab_size`` tokens. The output head is tied to the
input embedding unless ``tie_word_embeddings`` is false.

Loading validates the config and every tensor's name and shape, and raises
:class:`ModelError` naming what is wrong; checkpoints of other architectures (Dream, LLaDA
with their own code) load only through ``load_diffusion_model(..., trust_remote_code=True)``.
"""

from __future__ import annotations

import json
import os
import pathlib
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ModelError

__all__ = [
    "MODEL_TYPE",
    "DiffusionConfig",
    "MaskedDiffusionLM",
    "load_diffusion_model",
    "save_diffusion_model",
    "init_from_target",
    "count_parameters",
    "read_config",
]

MODEL_TYPE = "specplug-mdlm"
WEIGHTS = "model.safetensors"


@dataclass
class DiffusionConfig:
    vocab_size: int
    mask_token_id: int
    hidden_size: int = 576
    intermediate_size: int = 1536
    num_hidden_layers: int = 4
    num_attention_heads: int = 9
    num_key_value_heads: int = 3
    rms_norm_eps: float = 1e-5
    rope_theta: float = 100000.0
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = True
    shift_logits: bool = True
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    model_type: str = MODEL_TYPE
    architectures: tuple = ("MaskedDiffusionLM",)

    def __post_init__(self):
        ints = (
            "vocab_size",
            "mask_token_id",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
        )
        for name in ints:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "mask_token_id" else 1):
                raise ModelError(f"diffusion config: {name} must be a positive integer, got {v!r}")
        if self.mask_token_id > self.vocab_size:
            raise ModelError(
                f"diffusion config: mask_token_id {self.mask_token_id} must lie in [0, vocab_size "
                f"{self.vocab_size}] (vocab_size itself: one extra input row)"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ModelError(
                f"diffusion config: hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ModelError(
                f"diffusion config: num_attention_heads {self.num_attention_heads} is not a multiple "
                f"of num_key_value_heads {self.num_key_value_heads}"
            )
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise ModelError("diffusion config: the head dimension must be even (rotary positions)")
        self.architectures = tuple(self.architectures)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def input_rows(self) -> int:
        return max(self.vocab_size, self.mask_token_id + 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["architectures"] = list(self.architectures)
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "config.json") -> DiffusionConfig:
        if not isinstance(d, dict):
            raise ModelError(f"{where} must hold a JSON object")
        if d.get("model_type") != MODEL_TYPE:
            raise ModelError(f"{where}: model_type is {d.get('model_type')!r}, not {MODEL_TYPE!r}")
        known = {f.name for f in fields(cls)}
        missing = [k for k in ("vocab_size", "mask_token_id") if k not in d]
        if missing:
            raise ModelError(
                f"{where} lacks {missing}: a masked diffusion checkpoint must name its "
                f"vocabulary size and mask token id"
            )
        try:
            return cls(**{k: v for k, v in d.items() if k in known})
        except TypeError as e:
            raise ModelError(f"{where}: {e}") from None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype) * self.weight


def _rope(positions: torch.Tensor, dim: int, theta: float, dtype):
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim))
    ang = positions.float()[..., None] * inv  # [L, dim/2]
    emb = torch.cat([ang, ang], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate(x, cos, sin):
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        self.nh, self.nkv, self.d = cfg.num_attention_heads, cfg.num_key_value_heads, d
        self.q_proj = nn.Linear(h, self.nh * d, bias=False)
        self.k_proj = nn.Linear(h, self.nkv * d, bias=False)
        self.v_proj = nn.Linear(h, self.nkv * d, bias=False)
        self.o_proj = nn.Linear(self.nh * d, h, bias=False)

    def forward(self, x, cos, sin, mask):
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.nh, self.d).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.nkv, self.d).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.nkv, self.d).transpose(1, 2)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        rep = self.nh // self.nkv
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=False)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, self.nh * self.d))


class MLP(nn.Module):
    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class MaskedDiffusionLM(nn.Module):
    """``forward(input_ids [B, L], key_mask [B, L] bool or None, logits_from=None) -> logits``.

    ``logits_from``: compute logits only for positions >= this index (the masked tail),
    which keeps the LM head (the dominant cost at a 49k vocabulary) to the k slots.
    The input table is split in two parameters, the vocabulary rows and the mask row(s),
    so training can freeze the (target-initialised) vocabulary embedding.
    """

    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Parameter(torch.empty(cfg.vocab_size, cfg.hidden_size))
        self.extra_embed = nn.Parameter(torch.empty(cfg.input_rows - cfg.vocab_size, cfg.hidden_size))
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Parameter(torch.empty(cfg.vocab_size, cfg.hidden_size))
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02):
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=std)

    @property
    def head_weight(self) -> torch.Tensor:
        return self.embed_tokens if self.lm_head is None else self.lm_head

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        v = self.config.vocab_size
        if self.extra_embed.shape[0] == 0:
            return F.embedding(ids, self.embed_tokens)
        extra = ids >= v
        x = F.embedding(ids.clamp(max=v - 1), self.embed_tokens)
        e = F.embedding((ids - v).clamp(min=0, max=self.extra_embed.shape[0] - 1), self.extra_embed)
        return torch.where(extra[..., None], e, x)

    def hidden(self, input_ids, key_mask=None):
        b, n = input_ids.shape
        x = self.embed(input_ids)
        pos = torch.arange(n, device=input_ids.device)
        cos, sin = _rope(pos, self.config.head_dim, self.config.rope_theta, x.dtype)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.norm(x)

    def forward(self, input_ids, key_mask=None, logits_from: int | None = None):
        """Logits of the token at each slot ``>= logits_from`` (all slots if None).

        With ``shift_logits`` (Dream-style, keeps an AR-initialised model's semantics) the
        distribution of slot t is read from the hidden state at t - 1, so slot 0 has none
        and ``logits_from`` must be >= 1.
        """
        h = self.hidden(input_ids, key_mask)
        shift = int(self.config.shift_logits)
        start = shift if logits_from is None else int(logits_from)
        if start < shift:
            raise ValueError("with shift_logits the first slot with logits is 1")
        h = h[:, start - shift : h.shape[1] - shift]
        return h @ self.head_weight.t()

    def slot_logits(self, input_ids, key_mask, slots):
        """Logits of the tokens at positions ``slots`` [B, S] only (the drafter's k slots, the
        trainer's masked targets), so the LM head runs on S rows per sequence. With
        ``shift_logits`` slot t is read from the hidden state at t - 1."""
        h = self.hidden(input_ids, key_mask)
        src = slots - int(self.config.shift_logits)
        return torch.gather(h, 1, src[..., None].expand(-1, -1, h.shape[-1])) @ self.head_weight.t()

    # ------------------------------------------------------------------ state dict in HF names
    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        out = {
            "model.embed_tokens.weight": torch.cat([self.embed_tokens, self.extra_embed]).detach(),
            "model.norm.weight": self.norm.weight.detach(),
        }
        for i, layer in enumerate(self.layers):
            for name, t in layer.state_dict().items():
                out[f"model.layers.{i}.{name}"] = t.detach()
        if self.lm_head is not None:
            out["lm_head.weight"] = self.lm_head.detach()
        return {k: v.contiguous() for k, v in out.items()}

    def expected_shapes(self) -> dict[str, tuple]:
        return {k: tuple(v.shape) for k, v in self.hf_state_dict().items()}

    def load_hf_state_dict(self, tensors: dict[str, torch.Tensor], where: str = "checkpoint") -> None:
        want = self.expected_shapes()
        missing = sorted(set(want) - set(tensors))
        unexpected = sorted(set(tensors) - set(want))
        if missing or unexpected:
            raise ModelError(
                f"{where} does not match its config: missing tensors {missing[:4]}"
                f"{' ...' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}"
                f"{' ...' if len(unexpected) > 4 else ''}"
            )
        for k, shape in want.items():
            if tuple(tensors[k].shape) != shape:
                raise ModelError(f"{where}: tensor {k} has shape {tuple(tensors[k].shape)}, the config implies {shape}")
            if not torch.isfinite(tensors[k]).all():
                raise ModelError(f"{where}: tensor {k} holds NaN or infinite values")
        v = self.config.vocab_size
        with torch.no_grad():
            emb = tensors["model.embed_tokens.weight"]
            self.embed_tokens.copy_(emb[:v])
            self.extra_embed.copy_(emb[v:])
            self.norm.weight.copy_(tensors["model.norm.weight"])
            for i, layer in enumerate(self.layers):
                layer.load_state_dict({n: tensors[f"model.layers.{i}.{n}"] for n in layer.state_dict()})
            if self.lm_head is not None:
                self.lm_head.copy_(tensors["lm_head.weight"])


def read_config(path: str | os.PathLike) -> dict:
    """config.json of a checkpoint directory as a dict; ModelError for a missing or malformed one."""
    d = pathlib.Path(path).expanduser()
    if not d.exists():
        raise ModelError(
            f"diffusion drafter checkpoint {d} does not exist; train one with "
            f"`specplug train-drafter --kind diffusion --out {d}`"
        )
    if not d.is_dir():
        raise ModelError(f"diffusion drafter checkpoint {d} is not a directory")
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise ModelError(f"{d} is not a Hugging Face model directory (no config.json)")
    try:
        return json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{cfg_path} is not valid JSON: {e}") from None


def save_diffusion_model(model: MaskedDiffusionLM, out_dir: str | os.PathLike, extra_files: dict | None = None):
    """config.json + model.safetensors, written to temporary names and renamed (atomic per file)."""
    from safetensors.torch import save_file

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{WEIGHTS}.tmp"
    save_file(
        {k: v.cpu().float().contiguous() for k, v in model.hf_state_dict().items()}, str(tmp), metadata={"format": "pt"}
    )
    os.replace(tmp, out / WEIGHTS)
    for name, data in {"config.json": model.config.to_dict(), **(extra_files or {})}.items():
        t = out / f".{name}.tmp"
        t.write_text(json.dumps(data, indent=2), encoding="utf-8")
        os.replace(t, out / name)


class _RemoteWrapper(nn.Module):
    """A trust_remote_code masked diffusion model (Dream, LLaDA) behind our forward signature."""

    def __init__(self, model, vocab_size: int, mask_token_id: int):
        super().__init__()
        self.inner = model
        self.config = DiffusionConfig(
            vocab_size=vocab_size,
            mask_token_id=mask_token_id,
            hidden_size=8,
            intermediate_size=8,
            num_hidden_layers=1,
            num_attention_heads=1,
            num_key_value_heads=1,
        )

    def forward(self, input_ids, key_mask=None, logits_from=None):
        out = self.inner(input_ids=input_ids, attention_mask=None if key_mask is None else key_mask.long())
        logits = out.logits if hasattr(out, "logits") else out[0]
        logits = logits[..., : self.config.vocab_size]
        return logits if logits_from is None else logits[:, logits_from:]

    def slot_logits(self, input_ids, key_mask, slots):
        """Full logits from the model's own code, gathered at ``slots`` [B, S]."""
        full = self.forward(input_ids, key_mask)
        return torch.gather(full, 1, slots[..., None].expand(-1, -1, full.shape[-1]))


def load_diffusion_model(path: str | os.PathLike, device="cpu", dtype=torch.float32, trust_remote_code: bool = False):
    """(model in eval mode, its DiffusionConfig) from a local checkpoint directory."""
    d = pathlib.Path(path).expanduser()
    raw = read_config(d)
    if not isinstance(raw, dict):
        raise ModelError(f"{d / 'config.json'} must hold a JSON object")
    if raw.get("model_type") != MODEL_TYPE:
        if not trust_remote_code:
            raise ModelError(
                f"{d} holds a {raw.get('model_type')!r} model, not the built-in {MODEL_TYPE!r} "
                f"architecture; loading its own code needs the explicit option "
                f"trust_remote_code=true (this runs Python code from that directory)"
            )
        return _load_remote(d, raw, device, dtype)
    cfg = DiffusionConfig.from_dict(raw, str(d / "config.json"))
    weights = d / WEIGHTS
    if not weights.is_file():
        raise ModelError(f"{d} has no {WEIGHTS}")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelError(f"cannot read {weights}: {e}") from None
    model = MaskedDiffusionLM(cfg)
    model.load_hf_state_dict(tensors, str(weights))
    model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return model, cfg


def _load_remote(d: pathlib.Path, raw: dict, device, dtype):
    mask = raw.get("mask_token_id")
    vocab = raw.get("vocab_size")
    if not isinstance(mask, int) or not isinstance(vocab, int):
        raise ModelError(
            f"{d / 'config.json'} must name integer mask_token_id and vocab_size (got {mask!r}, {vocab!r})"
        )
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(d, trust_remote_code=True, local_files_only=True, dtype=dtype)
    except (OSError, ValueError, KeyError, ImportError) as e:
        raise ModelError(f"cannot load the remote-code diffusion model at {d}: {e}") from None
    cfg_vocab = int(vocab)
    wrapped = _RemoteWrapper(model, cfg_vocab, int(mask)).to(device).eval().requires_grad_(False)
    return wrapped, wrapped.config


def init_from_target(target, layers: list[int], mask_token_id: int | None = None) -> MaskedDiffusionLM:
    """A drafter whose embeddings, final norm and chosen blocks are copied from a Llama-style target.

    ``target`` is a transformers causal LM (LlamaForCausalLM and relatives with the same
    tensor names). The mask token gets an extra input row (id = vocab_size) initialised to
    the mean embedding.
    """
    tc = target.config
    vocab = int(target.get_input_embeddings().weight.shape[0])
    rope = getattr(tc, "rope_theta", None)
    if rope is None:
        rope = (getattr(tc, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    if head_dim * tc.num_attention_heads != tc.hidden_size:
        raise ModelError("target head_dim * heads != hidden size: not supported by the built-in architecture")
    eos = tc.eos_token_id if isinstance(tc.eos_token_id, int) else None
    cfg = DiffusionConfig(
        vocab_size=vocab,
        mask_token_id=vocab if mask_token_id is None else int(mask_token_id),
        hidden_size=tc.hidden_size,
        intermediate_size=tc.intermediate_size,
        num_hidden_layers=len(layers),
        num_attention_heads=tc.num_attention_heads,
        num_key_value_heads=getattr(tc, "num_key_value_heads", tc.num_attention_heads),
        rms_norm_eps=float(tc.rms_norm_eps),
        rope_theta=float(rope),
        max_position_embeddings=int(min(tc.max_position_embeddings, 4096)),
        tie_word_embeddings=True,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    model = MaskedDiffusionLM(cfg)
    sd = target.state_dict()
    n_layers = tc.num_hidden_layers
    with torch.no_grad():
        emb = sd["model.embed_tokens.weight"].float()
        model.embed_tokens.copy_(emb)
        if model.extra_embed.shape[0]:
            model.extra_embed.copy_(emb.mean(0, keepdim=True).expand_as(model.extra_embed))
        model.norm.weight.copy_(sd["model.norm.weight"].float())
        for i, src in enumerate(layers):
            if not 0 <= src < n_layers:
                raise ModelError(f"init layer {src} out of range: the target has {n_layers} layers")
            prefix = f"model.layers.{src}."
            model.layers[i].load_state_dict({n: sd[prefix + n].float() for n in model.layers[i].state_dict()})
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
