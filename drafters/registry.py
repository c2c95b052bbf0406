"""The algorithm table: one entry per specplug algorithm, shared by every engine adapter.

Entries name their drafter class by import path so that reading the table (the
CLI's ``algorithms``, SGLang's plugin registration, TGI's import hook) imports
no algorithm code. Options are declared with types, ranges and defaults and
validated once, with errors that name the valid choices.
"""
from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import ConfigError

__all__ = ["Option", "AlgorithmSpec", "register", "get", "names", "specs", "create",
           "validate_options", "load_options"]


@dataclass(frozen=True)
class Option:
    name: str
    type: type
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None

    def check(self, algo: str, value: Any) -> Any:
        where = f"option {self.name!r} of algorithm {algo!r}"
        if self.type is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{where} must be true or false, got {value!r}")
            return value
        if self.type is int:
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    raise ConfigError(f"{where} must be an integer, got {value!r}")
        elif self.type is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise ConfigError(f"{where} must be a number, got {value!r}")
            value = float(value)
        elif not isinstance(value, self.type):
            raise ConfigError(f"{where} must be of type {self.type.__name__}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{where} must be one of {list(self.choices)}, got {value!r}")
        if self.min is not None and value < self.min or self.max is not None and value > self.max:
            raise ConfigError(f"{where} must lie in [{self.min}, {self.max}], got {value!r}")
        return value

    def describe(self) -> str:
        rng = ""
        if self.choices is not None:
            rng = f" one of {list(self.choices)}"
        elif self.min is not None or self.max is not None:
            rng = f" in [{self.min}, {self.max}]"
        return f"{self.name}={self.default!r} ({self.type.__name__}{rng}): {self.help}"


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str                 # lower case with dashes, e.g. "token-recycling"
    drafter: str              # "module:Class", imported on first use
    description: str          # one line
    options: tuple[Option, ...] = ()
    default_budget: int = 64
    uses_target_topk: bool = False
    tree: bool = True         # proposes trees (False: chains only)
    peer: bool = False        # another engine's drafter wrapped for `specplug bench` only: not
                              # registered with SGLang or TGI
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def engine_name(self) -> str:
        """Upper-case name for engines whose flags use it (SGLang: RACER, TOKEN_RECYCLING)."""
        return self.name.upper().replace("-", "_")

    def load_class(self):
        mod, _, cls = self.drafter.partition(":")
        return getattr(importlib.import_module(mod), cls)


_TABLE: dict[str, AlgorithmSpec] = {}


def register(spec: AlgorithmSpec) -> AlgorithmSpec:
    """Add an algorithm; registering the same spec again is a no-op, a different one raises."""
    old = _TABLE.get(spec.name)
    if old is not None and old != spec:
        raise ConfigError(f"algorithm {spec.name!r} is already registered differently")
    _TABLE[spec.name] = spec
    return spec


def _normalise(name: str) -> str:
    return str(name).strip().lower().replace("_", "-")


def names() -> list[str]:
    return sorted(_TABLE)


def specs() -> list[AlgorithmSpec]:
    return [_TABLE[n] for n in names()]


def get(name: str) -> AlgorithmSpec:
    key = _normalise(name)
    if key not in _TABLE:
        raise ConfigError(f"unknown algorithm {name!r}; available: {', '.join(names())}")
    return _TABLE[key]


def validate_options(name: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults filled in, every given option checked; unknown options rejected."""
    spec = get(name)
    given = dict(options or {})
    known = {o.name: o for o in spec.options}
    unknown = sorted(set(given) - set(known))
    if unknown:
        valid = ", ".join(known) or "none"
        raise ConfigError(f"unknown option(s) {unknown} for algorithm {spec.name!r}; valid options: {valid}")
    return {k: (o.check(spec.name, given[k]) if k in given else o.default) for k, o in known.items()}


def load_options(text: str | None) -> dict[str, Any]:
    """Options from a JSON object string or a path to a JSON file (env vars, CLI)."""
    if text is None or not str(text).strip():
        return {}
    text = str(text).strip()
    if not text.startswith("{"):
        if not os.path.isfile(text):
            raise ConfigError(f"options must be a JSON object or a path to a JSON file; no file at {text!r}")
        with open(text, encoding="utf-8") as f:
            text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"options are not valid JSON ({e}); pass an object like '{{\"budget\": 32}}'") from None
    if not isinstance(data, dict):
        raise ConfigError("options must be a JSON object, e.g. '{\"max_ngram\": 8}'")
    return data


def create(name: str, vocab_size: int, options: Mapping[str, Any] | None = None):
    """Instantiate the drafter of algorithm ``name`` with validated options."""
    spec = get(name)
    opts = validate_options(spec.name, options)
    return spec.load_class()(vocab_size, **opts)


# --------------------------------------------------------------------- the table
register(AlgorithmSpec(
    name="ar",
    drafter="specplug.drafters.ar:AutoregressiveDrafter",
    description="autoregressive baseline: no speculation (one token per step)",
    default_budget=1,
))

register(AlgorithmSpec(
    name="pld",
    drafter="specplug.drafters.pld:PromptLookupDrafter",
    description="prompt lookup decoding: copy the continuation of the latest n-gram match in the context",
    options=(
        Option("max_ngram", int, 3, "longest n-gram matched against the context tail", 1, 64),
        Option("min_ngram", int, 1, "shortest n-gram tried before giving up", 1, 64),
        Option("max_draft", int, 10, "most draft tokens proposed per step", 1, 1023),
    ),
    default_budget=11,
    tree=False,
))

# --------------------------------------------------------------------- issue 3: model-free tree drafters
register(AlgorithmSpec(
    name="racer",
    drafter="specplug.drafters.racer:RacerDrafter",
    description="RACER: n-gram automaton retrieval fused with a shared logit adjacency table (trie union)",
    options=(
        Option("ngram", int, 10, "n-gram length of the retrieval automaton (its depth)", 1, 64),
        Option("topk", int, 8, "adjacency width: target top-k ids kept per token (one table shared by all "
               "requests: vocab x topk int32)", 1, 32),
        Option("min_match", int, 1, "shortest matched context suffix (root included) used for retrieval "
               "(1: the root token's own continuations count too)", 1, 64),
        Option("max_nodes_per_request", int, 16384, "automaton node cap per request (40 B per node); the "
               "oldest n-grams are evicted beyond it; must be >= 64 * ngram", 64, 1 << 24),
        Option("fusion", str, "score", "how retrieval and logits share the budget: 'score' (both frontiers "
               "compete on estimated acceptance) or 'retrieval-first' (the paper's order)",
               choices=("score", "retrieval-first")),
        Option("retrieval_share", float, 1.0, "largest fraction of the budget retrieved nodes may fill "
               "(0 = logits tree only)", 0.0, 1.0),
        Option("smoothing", float, 1.0, "pseudo-count added to a match's occurrences when scoring its "
               "continuations (penalises matches seen once)", 0.0, 1000.0),
        Option("logits_depth", int, 10, "most logits-tree nodes in a row on a path (0 = retrieval only)", 0, 64),
        Option("rank_prior", str, "0.5,0.15,0.08,0.05,0.04,0.03,0.025,0.02", "P(rank-r recycled candidate is "
               "accepted | its parent was), comma-separated, non-increasing: the logits tree's node values"),
        Option("adaptive_prior", bool, False, "rank priors of the logits tree from the observed hit rates of "
               "recycled top-k candidates (default: fixed priors 0.5, 0.15, 0.08, ...)"),
        Option("pair_rows", int, 65536, "rows of the shared top-k cache keyed by the last two tokens, drafted "
               "from before the token-keyed row (0 = off; rounded up to a power of two; 40 B per row)", 0, 1 << 24),
        Option("global_cache", bool, False, "also retrieve from a bounded automaton of finished requests' outputs"),
        Option("global_cache_nodes", int, 262144, "node cap of the global automaton (40 B per node)", 64, 1 << 26),
        Option("global_weight", float, 0.5, "score multiplier of global-cache continuations", 0.0, 1.0),
        Option("tree", str, "dynamic", "tree shape: 'dynamic' (node values = calibrated acceptance estimates: "
               "the target's top-k probabilities stored with the recycled rows, retrieval by matched length and "
               "frequency; the shape follows the context; MAT at least static's at 14 of 15 measured points, see "
               "docs/dynamic_trees.md) or 'static' (fixed rank priors and raw frequency ratios, as in the paper)",
               choices=("static", "dynamic")),
    ),
    default_budget=64,
    uses_target_topk=True,
))

register(AlgorithmSpec(
    name="token-recycling",
    drafter="specplug.drafters.token_recycling:TokenRecyclingDrafter",
    description="Token Recycling: the target's recycled top-k (shared adjacency table) over a static tree template",
    options=(
        Option("topk", int, 8, "adjacency width: target top-k ids kept per token", 1, 32),
        Option("template_nodes", int, 80, "draft nodes of the static template (root excluded)", 1, 1023),
        Option("template_depth", int, 6, "depth of the static template", 1, 64),
        Option("tree", str, "static", "'static' (the template) or 'dynamic' (best-first growth on the target's "
               "calibrated top-k probabilities; see docs/dynamic_trees.md)", choices=("static", "dynamic")),
        Option("dynamic_depth", int, 16, "depth cap of dynamic trees", 1, 64),
    ),
    default_budget=81,
    uses_target_topk=True,
))

register(AlgorithmSpec(
    name="sglang-ngram",
    drafter="specplug.adapters.sglang.ngram_peer:SGLangNgramDrafter",
    description="benchmark peer: SGLang 0.5.23's own NGRAM corpus (C++ trie, JIT-built) driven standalone",
    options=(
        Option("max_trie_depth", int, 18, "SGLang's --speculative-ngram-max-trie-depth", 2, 64),
        Option("min_bfs_breadth", int, 1, "SGLang's --speculative-ngram-min-bfs-breadth", 1, 64),
        Option("max_bfs_breadth", int, 10, "SGLang's --speculative-ngram-max-bfs-breadth", 1, 64),
        Option("match_type", str, "BFS", "SGLang's --speculative-ngram-match-type", choices=("BFS", "PROB")),
        Option("capacity", int, 10_000_000, "SGLang's --speculative-ngram-capacity", 1024, 1 << 30),
    ),
    default_budget=16,
    peer=True,
))

register(AlgorithmSpec(
    name="suffix",
    drafter="specplug.drafters.suffix:SuffixDrafter",
    description="suffix decoding: per-request and global suffix tries with counts, frequency-scored trees",
    options=(
        Option("max_depth", int, 24, "depth of the suffix tries (longest match + continuation)", 2, 64),
        Option("max_spec_factor", float, 1.0, "draft at most max_spec_factor * match length nodes", 0.0, 64.0),
        Option("min_token_prob", float, 0.1, "drop continuations whose conditional frequency is below this",
               0.0, 1.0),
        Option("min_match", int, 1, "shortest matched context suffix used", 1, 63),
        Option("max_nodes_per_request", int, 32768, "suffix-trie node cap per request (40 B per node); "
               "must be >= 64 * max_depth", 128, 1 << 24),
        Option("global_cache", bool, True, "also match against a bounded trie of finished requests' outputs"),
        Option("global_cache_nodes", int, 262144, "node cap of the global trie (40 B per node)", 128, 1 << 26),
    ),
    default_budget=64,
))

# --- issue 7: DEL (early-exit self-speculation; needs the engine's early-exit runner)
register(AlgorithmSpec(
    name="del",
    drafter="specplug.drafters.early_exit:DELDrafter",
    description="DEL: the target drafts with its own first E layers; E and draft length chosen online from "
                "shadow-token statistics; no speculation where it cannot pay (embedded engine; SGLang for Llama/Qwen2)",
    options=(
        Option("max_draft", int, 18, "longest draft chain γ", 1, 1023),
        Option("decay", float, 0.95, "per-position decay ω of the match/mismatch statistics", 0.0, 1.0),
        Option("seed_tokens", int, 32, "last prompt positions whose shadow tokens seed cold statistics "
               "(0 = no seeding)", 0, 4096),
        Option("candidate_layers", str, "", "comma-separated exit layers to consider; empty = the deepest "
               "probe_layers layers (stride probe_stride) that could beat AR at all under the cost model"),
        Option("probe_layers", int, 4, "candidate exit layers probed with shadow tokens", 1, 1024),
        Option("probe_stride", int, 2, "spacing of automatically chosen candidate layers", 1, 1024),
        Option("probe_budget", float, 0.02, "fraction of the step time that shadow probing may use "
               "(0 = probe only the prompt seed)", 0.0, 1.0),
        Option("min_gain", float, 0.05, "speculate only when the predicted speedup over AR exceeds this",
               0.0, 10.0),
        Option("cost", str, "measured", "cost model: 'measured' (the engine's forward-cost table and the "
               "model's compute shares) or 'layers' (the paper's (L-E) + (γ+1)E layer count)",
               choices=("measured", "layers")),
        Option("cost_model", str, "cpu", "measured cost table (drafters/cost_models/NAME.json; "
               "`specplug calibrate` writes one)"),
        Option("dynamic_exit", bool, True, "stop drafting below the midpoint of the mean confidences on "
               "matches and mismatches"),
    ),
    default_budget=19,
    tree=False,
    extra={"needs_runner": "early_exit"},
))

register(AlgorithmSpec(
    name="early-exit",
    drafter="specplug.drafters.early_exit:EarlyExitDrafter",
    description="fixed-exit self-speculation baseline (transformers' assistant_early_exit style): draft "
                "draft_len tokens with the first exit_layer layers (embedded engine; SGLang for Llama/Qwen2)",
    options=(
        Option("exit_layer", int, 24, "decoder layers used for drafting (1..L-1)", 1, 1024),
        Option("draft_len", int, 4, "draft tokens per step", 1, 1023),
    ),
    default_budget=19,
    tree=False,
    extra={"needs_runner": "early_exit"},
))

# --------------------------------------------------------------------- issue 8: diffusion
register(AlgorithmSpec(
    name="diffusion",
    drafter="specplug.drafters.diffusion:DiffusionDrafter",
    description="masked diffusion drafter: k slots denoised in one pass, lattice + causal-consistency beam "
                "search (DiffuSpec), adaptive draft length; needs model_path (specplug train-drafter)",
    options=(
        Option("model_path", str, "", "local masked diffusion checkpoint directory (HF format; required): "
               "`specplug train-drafter --kind diffusion` makes one"),
        Option("device", str, "cpu", "device of the drafter model (its own; no KV shared with the target)"),
        Option("dtype", str, "float32", "dtype of the drafter model", choices=("float32", "bfloat16", "float16")),
        Option("trust_remote_code", bool, False, "allow checkpoints of other architectures (Dream, LLaDA) to run "
               "their own Python code from model_path"),
        Option("tau", float, 0.8, "lattice: per position keep the smallest top set with this cumulative mass",
               0.01, 1.0),
        Option("cap", int, 15, "lattice: most tokens per position (EOS exempt)", 1, 64),
        Option("beams", int, 3, "path search beam width (paths merged into the tree)", 1, 32),
        Option("lam", float, 0.5, "path score: lam * log p_dlm + (1 - lam) * log p_causal (context n-gram)",
               0.0, 1.0),
        Option("k_min", int, 20, "shortest draft length (masked slots)", 1, 256),
        Option("k_max", int, 30, "longest draft length (masked slots); the fixed k when adaptive is off", 1, 256),
        Option("adaptive", bool, True, "adaptive draft length (EMA of generated and accepted length); false: k = k_max"),
        Option("rho", float, 0.5, "ADL: EMA weight of the previous value", 0.0, 0.99),
        Option("delta", int, 10, "ADL: extra slots when the accepted length reaches the generated length", 0, 256),
        Option("path_search", str, "beam", "'beam' (causal-consistency search) or 'argmax' (per-position argmax, "
               "the ablation)", choices=("beam", "argmax")),
        Option("mode", str, "tree", "'tree' (beams merged) or 'chain' (the best path)", choices=("tree", "chain")),
        Option("window", int, 64, "context tokens (the latest) given to the drafter model", 1, 4096),
        Option("proxy_order", int, 4, "order of the context n-gram causal proxy (automaton depth)", 1, 16),
        Option("proxy_beta", float, 1.0, "smoothing weight of the n-gram proxy (backs off to shorter contexts)",
               0.001, 1000.0),
        Option("max_nodes_per_request", int, 16384, "n-gram automaton node cap per request (40 B per node); "
               "must be >= 64 * proxy_order", 64, 1 << 24),
        Option("eos_ids", str, "", "comma-separated end-of-sequence ids cutting the lattice (default: the "
               "checkpoint's eos_token_id)"),
    ),
    default_budget=64,
))
