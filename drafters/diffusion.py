"""The diffusion drafter: a masked diffusion LM drafts k tokens in one denoising step.

Per step and request: the last ``window`` committed tokens (root included) followed by k
mask tokens go through the drafter model in one bidirectional forward pass (batched over
the step's requests; the model has its own device and dtype and shares no KV with the
target). Each masked slot's distribution becomes a lattice row; causal-consistency path
search (beam search mixing the model's log-probabilities with an n-gram proxy of the
request's own context) picks ``beams`` paths, merged into one draft tree (or the best path
as a chain, ``mode="chain"``; TGI takes the best chain of the tree either way). The draft
length k of each request follows DiffuSpec's adaptive draft length rule.

See :mod:`.diffusion_lattice` for the lattice, the search and the ADL rule, and
:mod:`.diffusion_model` for the built-in architecture and checkpoint checks.
"""

from __future__ import annotations

import json
import pathlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from .automaton_drafter import AutomatonDrafter, check_budgets
from .diffusion_lattice import AdaptiveLength, NgramProxy, argmax_path, beam_search, build_lattice
from .errors import ConfigError, ModelError
from .feedback import Feedback
from .options import Option, resolve_options
from .tree import DraftTree

__all__ = ["DiffusionDrafter", "check_vocabulary", "load_drafter_model"]

_DTYPES = ("float32", "bfloat16", "float16")
_MODEL_CACHE: OrderedDict[tuple, tuple] = OrderedDict()
_MODEL_CACHE_SIZE = 2


def load_drafter_model(path: str, device: str = "cpu", dtype: str = "float32", trust_remote_code: bool = False):
    """(model, config), cached per (path, mtime, device, dtype): a benchmark creating several
    drafters loads the checkpoint once. At most two models are held."""
    import torch  # torch and the model module load only with a drafter model (not a cycle)

    from .diffusion_model import load_diffusion_model

    p = pathlib.Path(path).expanduser()
    weights = p / "model.safetensors"
    stamp = weights.stat().st_mtime_ns if weights.is_file() else 0
    key = (str(p.resolve()) if p.exists() else str(p), stamp, device, dtype, bool(trust_remote_code))
    hit = _MODEL_CACHE.get(key)
    if hit is not None:
        _MODEL_CACHE.move_to_end(key)
        return hit
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"option 'device' of algorithm 'diffusion': unknown device {device!r}; use 'cpu' or 'cuda[:N]'"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("option 'device' of algorithm 'diffusion' asks for CUDA, but torch sees no GPU; use 'cpu'")
    out = load_diffusion_model(p, device=dev, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code)
    _MODEL_CACHE[key] = out
    while len(_MODEL_CACHE) > _MODEL_CACHE_SIZE:
        _MODEL_CACHE.popitem(last=False)
    return out


def check_vocabulary(model_path: str, drafter_vocab: int, target_vocab: int, target_tokenizer=None) -> None:
    """Raise ModelError naming the mismatch unless drafter and target share one vocabulary.

    Sizes must be equal; when the target's tokenizer is given and the checkpoint ships a
    tokenizer too, their token -> id maps must be identical (first differing entries named).
    """
    if int(drafter_vocab) != int(target_vocab):
        raise ModelError(
            f"vocabulary mismatch: the diffusion drafter at {model_path} has vocab_size "
            f"{drafter_vocab}, the target model has {target_vocab}; train a drafter for this "
            f"target (`specplug train-drafter --kind diffusion --target ...`)"
        )
    if target_tokenizer is None:
        return
    d = pathlib.Path(model_path).expanduser()
    if not ((d / "tokenizer.json").is_file() or (d / "tokenizer_config.json").is_file()):
        return
    try:
        own: Any
        if (d / "tokenizer.json").is_file():  # read directly: the directory's config is not a causal LM's
            from transformers import PreTrainedTokenizerFast

            own = PreTrainedTokenizerFast(tokenizer_file=str(d / "tokenizer.json"))
        else:
            from transformers import AutoTokenizer

            own = AutoTokenizer.from_pretrained(d, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exception subclasses
        raise ModelError(f"cannot read the tokenizer shipped with the diffusion drafter at {d}: {e}") from None
    a, b = own.get_vocab(), target_tokenizer.get_vocab()
    if a != b:
        only_d = sorted(set(a) - set(b))[:3]
        only_t = sorted(set(b) - set(a))[:3]
        moved = sorted(t for t in set(a) & set(b) if a[t] != b[t])[:3]
        raise ModelError(
            f"vocabulary mismatch between the diffusion drafter at {d} ({len(a)} tokens) and the "
            f"target's tokenizer ({len(b)} tokens): only in the drafter {only_d}, only in the target "
            f"{only_t}, different ids for {moved}"
        )


class DiffusionDrafter(AutomatonDrafter):
    name = "diffusion"
    DEFAULT_BUDGET: ClassVar[int] = 64
    OPTIONS: ClassVar[tuple[Option, ...]] = (
        Option(
            "model_path",
            str,
            "",
            "local masked diffusion checkpoint directory (HF format; required): "
            "`specplug train-drafter --kind diffusion` makes one",
        ),
        Option("device", str, "cpu", "device of the drafter model (its own; no KV shared with the target)"),
        Option("dtype", str, "float32", "dtype of the drafter model", choices=_DTYPES),
        Option(
            "trust_remote_code",
            bool,
            False,
            "allow checkpoints of other architectures (Dream, LLaDA) to run their own Python code from model_path",
        ),
        Option(
            "tau", float, 0.8, "lattice: per position keep the smallest top set with this cumulative mass", 0.01, 1.0
        ),
        Option("cap", int, 15, "lattice: most tokens per position (EOS exempt)", 1, 64),
        Option("beams", int, 3, "path search beam width (paths merged into the tree)", 1, 32),
        Option("lam", float, 0.5, "path score: lam * log p_dlm + (1 - lam) * log p_causal (context n-gram)", 0.0, 1.0),
        Option("k_min", int, 20, "shortest draft length (masked slots)", 1, 256),
        Option("k_max", int, 30, "longest draft length (masked slots); the fixed k when adaptive is off", 1, 256),
        Option(
            "adaptive", bool, True, "adaptive draft length (EMA of generated and accepted length); false: k = k_max"
        ),
        Option("rho", float, 0.5, "ADL: EMA weight of the previous value", 0.0, 0.99),
        Option("delta", int, 10, "ADL: extra slots when the accepted length reaches the generated length", 0, 256),
        Option(
            "path_search",
            str,
            "beam",
            "'beam' (causal-consistency search) or 'argmax' (per-position argmax, the ablation)",
            choices=("beam", "argmax"),
        ),
        Option("mode", str, "tree", "'tree' (beams merged) or 'chain' (the best path)", choices=("tree", "chain")),
        Option("window", int, 64, "context tokens (the latest) given to the drafter model", 1, 4096),
        Option("proxy_order", int, 4, "order of the context n-gram causal proxy (automaton depth)", 1, 16),
        Option(
            "proxy_beta",
            float,
            1.0,
            "smoothing weight of the n-gram proxy (backs off to shorter contexts)",
            0.001,
            1000.0,
        ),
        Option(
            "max_nodes_per_request",
            int,
            16384,
            "n-gram automaton node cap per request (40 B per node); must be >= 64 * proxy_order",
            64,
            1 << 24,
        ),
        Option(
            "eos_ids",
            str,
            "",
            "comma-separated end-of-sequence ids cutting the lattice (default: the checkpoint's eos_token_id)",
        ),
    )

    def __init__(self, vocab_size: int, **options: Any):
        o = resolve_options(self.OPTIONS, options, self.name)
        model_path, k_min, k_max, proxy_order = o["model_path"], o["k_min"], o["k_max"], o["proxy_order"]
        if not str(model_path).strip():
            raise ConfigError(
                "algorithm 'diffusion' needs the option model_path: a local masked diffusion "
                "checkpoint directory; train one for the target with `specplug train-drafter "
                "--kind diffusion --target MODEL --out DIR`, then pass "
                '--options \'{"diffusion": {"model_path": "DIR"}}\''
            )
        if k_min > k_max:
            raise ConfigError(f"option k_min ({k_min}) of algorithm 'diffusion' must not exceed k_max ({k_max})")
        super().__init__(
            vocab_size,
            ngram=proxy_order,
            max_nodes_per_request=o["max_nodes_per_request"],
            global_cache=False,
            global_cache_nodes=64 * proxy_order,
        )
        self.model_path = str(pathlib.Path(model_path).expanduser())
        self.model, self.config = load_drafter_model(self.model_path, o["device"], o["dtype"], o["trust_remote_code"])
        check_vocabulary(self.model_path, self.config.vocab_size, vocab_size)
        self.mask_id = int(self.config.mask_token_id)
        self.shift = int(getattr(self.config, "shift_logits", False))
        self.device = next(self.model.parameters()).device
        self.tau, self.cap, self.beams, self.lam = o["tau"], o["cap"], o["beams"], o["lam"]
        self.k_min, self.k_max, self.adaptive = k_min, k_max, o["adaptive"]
        self.rho, self.delta = o["rho"], o["delta"]
        self.path_search, self.mode, self.window = o["path_search"], o["mode"], o["window"]
        self.proxy_beta = o["proxy_beta"]
        eos = self._parse_eos(o["eos_ids"])
        self.eos_ids = tuple(t for t in eos if 0 <= t < vocab_size)
        import torch

        self._eos_index = torch.tensor(self.eos_ids, dtype=torch.long, device=self.device)
        self._ctx: dict = {}
        self._adl: dict = {}
        self._last_len: dict = {}
        self._checked_tokenizer = None  # held, not its id(): a freed object's id is reused
        self.stats = {"steps": 0, "drafted": 0, "eos_cuts": 0, "forward_s": 0.0, "search_s": 0.0}

    def _parse_eos(self, text: str) -> list[int]:
        if str(text).strip():
            try:
                return [int(x) for x in str(text).split(",") if x.strip()]
            except ValueError:
                raise ConfigError(
                    f"option 'eos_ids' of algorithm 'diffusion' must be comma-separated token ids, got {text!r}"
                ) from None
        eos = getattr(self.config, "eos_token_id", None)
        if eos is None:
            try:
                raw = json.loads((pathlib.Path(self.model_path) / "config.json").read_text())
                eos = raw.get("eos_token_id")
            except (OSError, ValueError):
                eos = None
        if isinstance(eos, int):
            return [eos]
        if isinstance(eos, list):
            return [int(x) for x in eos if isinstance(x, int)]
        return []

    def check_target(self, tokenizer) -> None:
        """Engines with a tokenizer call this before generating: identical vocabularies or a
        clear error (a tokenizer that passed is not compared again)."""
        if tokenizer is self._checked_tokenizer:
            return
        check_vocabulary(self.model_path, self.config.vocab_size, self.vocab_size, tokenizer)
        self._checked_tokenizer = tokenizer

    # ------------------------------------------------------------------ protocol
    def start(self, rid, context_ids, context_topk=None):
        super().start(rid, context_ids, context_topk)  # validates the ids
        self._ctx[rid] = np.asarray(context_ids, np.int32)[-self.window :].copy()
        self._adl[rid] = AdaptiveLength(self.k_min, self.k_max, self.rho, self.delta)
        self._last_len[rid] = None

    def observe_batch(self, feedback: Feedback) -> None:
        super().observe_batch(feedback)
        for i, rid in enumerate(feedback.rids):
            a = feedback.accepted_of(i)
            self._ctx[rid] = np.concatenate([self._ctx[rid], a])[-self.window :]
            g = self._last_len.get(rid)
            if g is not None and self.adaptive:
                self._adl[rid].update(g, max(0, a.shape[0] - 1))
            self._last_len[rid] = None

    def finish(self, rid):
        super().finish(rid)
        self._ctx.pop(rid, None)
        self._adl.pop(rid, None)
        self._last_len.pop(rid, None)

    def draft_length(self, rid) -> int:
        return self._adl[rid].k if self.adaptive else self.k_max

    # ------------------------------------------------------------------ drafting
    def _slot_distributions(self, ctxs: list[np.ndarray], ks: list[int]):
        """One batched forward: per request (top_probs [k, cap], top_ids, eos_probs [k, E], eos_above [k, E])."""
        import torch

        b = len(ctxs)
        L = max(len(c) + k for c, k in zip(ctxs, ks))
        kmax = max(ks)
        ids = torch.full((b, L), self.mask_id, dtype=torch.long)
        key = torch.zeros((b, L), dtype=torch.bool)
        pos = torch.zeros((b, kmax), dtype=torch.long)
        for i, (c, k) in enumerate(zip(ctxs, ks)):
            n = len(c)
            ids[i, :n] = torch.from_numpy(c.astype(np.int64))
            key[i, : n + k] = True
            pos[i, :k] = torch.arange(n, n + k)
            pos[i, k:] = n
        full_rows = bool(key.all())  # on the host: no device sync before the forward
        with torch.inference_mode():
            ids, pos = ids.to(self.device), pos.to(self.device)
            logits = self.model.slot_logits(ids, None if full_rows else key.to(self.device), pos)
            probs = torch.softmax(logits.float(), dim=-1)  # [b, kmax, V]
            top_p, top_i = torch.topk(probs, min(self.cap, probs.shape[-1]), dim=-1)
            if self.eos_ids:
                ep = probs[..., self._eos_index]  # [b, kmax, E]
                above = torch.stack(
                    [(probs * (probs > ep[..., e : e + 1])).sum(-1) for e in range(len(self.eos_ids))], dim=-1
                )
            else:
                ep = above = None  # type: ignore[assignment]  # no EOS: the lattice is not cut
        out = []
        tp, ti = top_p.cpu().numpy(), top_i.cpu().numpy()
        epn = None if ep is None else ep.cpu().numpy()
        abn = None if above is None else above.cpu().numpy()
        for i, k in enumerate(ks):
            out.append((tp[i, :k], ti[i, :k], None if epn is None else epn[i, :k], None if abn is None else abn[i, :k]))
        return out

    def propose(self, rids: Sequence, budgets: Sequence[int]) -> list[DraftTree]:
        import time

        b = check_budgets(budgets, len(rids))
        slots = self.slots(rids)
        trees: list[DraftTree | None] = [None] * len(rids)
        work = []
        for i, rid in enumerate(rids):
            ctx = self._ctx[rid]
            if b[i] <= 1:  # (start refused empty contexts)
                trees[i] = DraftTree.single(int(ctx[-1]))
                continue
            # no path of a tree of b nodes is longer than b - 1: slots past it are never used
            k = min(self.draft_length(rid), int(b[i]) - 1)
            work.append((i, rid, ctx, max(1, k)))
        if work:
            t0 = time.perf_counter()
            dists = self._slot_distributions([w[2] for w in work], [w[3] for w in work])
            t1 = time.perf_counter()
            for (i, rid, ctx, _), (tp, ti, ep, ab) in zip(work, dists):
                lat = build_lattice(tp, ti, ep, ab, self.eos_ids, self.tau, self.cap)
                self._last_len[rid] = lat.length
                self.stats["eos_cuts"] += int(lat.eos_cut)
                trees[i] = self._tree(lat, int(ctx[-1]), int(b[i]), int(slots[i]))
            self.stats["forward_s"] += t1 - t0
            self.stats["search_s"] += time.perf_counter() - t1
        self.stats["steps"] += 1
        return trees  # type: ignore[return-value]

    def _tree(self, lat, root: int, budget: int, slot: int) -> DraftTree:
        if lat.length == 0:
            return DraftTree.single(root)
        if self.path_search == "argmax" or self.beams == 1 and self.lam == 1.0:
            paths, _, dlm = argmax_path(lat)
        else:
            proxy = NgramProxy(self.pool, slot, self.vocab_size, self.proxy_beta)
            paths, _, dlm = beam_search(lat, proxy, self.beams, self.lam)
        if self.mode == "chain":
            paths, dlm = paths[:1], dlm[:1]
        cum = np.exp(np.cumsum(dlm.astype(np.float64), axis=1))
        tree = DraftTree.from_paths(root, paths.tolist(), cum.tolist(), budget=budget)
        self.stats["drafted"] += len(tree) - 1
        return tree
