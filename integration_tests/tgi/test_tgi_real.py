"""specplug's TGI patches against TGI's REAL code: the source of every patched function,
and ``text_generation_server.utils.tokens`` imported here (TGI's model server itself runs
in ``test_tgi_server.py``).

Runs when TGI_SERVER_SRC points to a prepared TGI ``server/`` tree (README.md beside
this file); skipped otherwise, with the reason saying how to enable it. CI has no TGI
source (TGI's server is not on PyPI), so CI skips this file.
"""

from __future__ import annotations

import ast
import contextlib
import os
import pathlib

import pytest
import tgi_src

REASON = tgi_src.prepare()
if REASON:
    pytest.skip(REASON, allow_module_level=True)

import text_generation_server.utils.tokens as tokens  # noqa: E402
import tgi_loop  # noqa: E402
import torch  # noqa: E402

from specplug.drafters import registry  # noqa: E402
from specplug.patches import tgi  # noqa: E402
from specplug.patches.base import PatchError, PatchSet, applied_patch, source_fingerprint  # noqa: E402
from specplug.patches.tgi.version import SUPPORTED, SUPPORTED_TEXT, checkout_version, detect_tgi_version  # noqa: E402

SERVER = pathlib.Path(os.environ[tgi_src.ENV])
PKG = SERVER / "text_generation_server"


# ------------------------------------------------------------------ the code we patch is TGI's
def _ast_def(path: pathlib.Path, dotted: str):
    text = path.read_text()
    node = ast.parse(text)
    for part in dotted.split("."):
        node = next(n for n in node.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == part)
    return node, text.splitlines()


@pytest.mark.parametrize(
    "patch",
    [
        tgi.NGramSpeculationPatch,
        tgi.ChooserCallPatch,
        tgi.GenerateTokenPatch,
        tgi.BatchFilterPatch,
        tgi.WarmupPatch,
        tgi.CacheDeletePatch,
    ],
)
def test_patch_fingerprints_match_tgi_source(patch):
    rel = patch.module.split(".", 1)[1].replace(".", "/") + ".py"
    node, lines = _ast_def(PKG / rel, patch.target)
    fp = source_fingerprint("\n".join(lines[node.lineno - 1 : node.end_lineno]))
    assert fp in patch.fingerprints, f"{patch.__name__}: TGI's {patch.target} changed ({fp})"


def test_flash_batch_has_the_fields_the_patches_read():
    # flash_causal_lm imports only with a kernel backend (the IPEX stand-in, in
    # test_tgi_server.py's server process); this process reads its source instead
    cls, _ = _ast_def(PKG / "models" / "flash_causal_lm.py", "FlashCausalLMBatch")
    fields = {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}
    assert {"requests", "all_input_ids", "speculative_ids", "prefilling", "requests_idx_mapping"} <= fields
    gen, lines = _ast_def(PKG / "models" / "flash_causal_lm.py", "FlashCausalLM.generate_token")
    body = "\n".join(lines[gen.lineno - 1 : gen.end_lineno])
    # the chooser call sees the batch's committed ids and last step's drafts, before they change
    call = body.index("batch.next_token_chooser(")
    assert "batch.speculative_ids," in body[call : call + 300]
    assert body.index("batch.all_input_ids[i] = all_input_ids") > call
    assert body.index("batch.speculative_ids = speculative_ids") > call


def test_version_detected_from_checkout():
    found = checkout_version(tokens.__file__.rsplit("/utils/", 1)[0] + "/__init__.py")
    if found is None:
        pytest.skip("TGI_SERVER_SRC is not inside a full TGI checkout (no Cargo.toml)")
    assert detect_tgi_version()[0] == found[0]
    assert found[0].startswith("3.3.")


# ------------------------------------------------------------------ fixtures
class LoopGenerateTokenPatch(tgi.GenerateTokenPatch):
    module, target, fingerprints = "tgi_loop", "LoopLM.generate_token", frozenset()


class LoopFilterPatch(tgi.BatchFilterPatch):
    module, target, fingerprints = "tgi_loop", "LoopBatch.filter", frozenset()


@contextlib.contextmanager
def _patched():
    """TGI's real tokens module patched (version from the checkout), the loop's batch hooks too."""
    ps = PatchSet("TGI", SUPPORTED, [tgi.NGramSpeculationPatch, tgi.ChooserCallPatch], _version, SUPPORTED_TEXT)
    ps.apply_for(tokens)
    loop = [LoopGenerateTokenPatch().apply(tgi_loop), LoopFilterPatch().apply(tgi_loop)]
    try:
        yield ps
    finally:
        tgi.disable()
        for p in loop:
            p.revert()
        ps.revert_all()


@pytest.fixture
def patched():
    with _patched() as ps:
        yield ps


def _version():
    try:
        return detect_tgi_version()
    except PatchError:
        return "3.3.7", "test"


@pytest.fixture(scope="module")
def tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    return LlamaForCausalLM(cfg).eval()


def _requests(vocab, n=4, new=40, **kw):
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        base = torch.randint(0, vocab, (6 + 3 * i,), generator=g).tolist()
        out.append(tgi_loop.Request(id=100 + i, prompt=base + base[:4] + base, max_new_tokens=new - 5 * i, **kw))
    return out


def _run(model, speculate, requests, arrive_at=None):
    lm = tgi_loop.LoopLM(model, speculate)
    out = tgi_loop.serve(lm, requests, arrive_at)
    return out, lm.mean_accepted()


# ------------------------------------------------------------------ patch mechanics on real code
def test_real_module_patch_refuses_twice_and_reverts():
    orig_fn = tokens.create_n_gram_speculation
    orig_call = tokens.HeterogeneousNextTokenChooser.__dict__["__call__"]
    ps = PatchSet("TGI", SUPPORTED, [tgi.NGramSpeculationPatch, tgi.ChooserCallPatch], _version, SUPPORTED_TEXT)
    ps.apply_for(tokens)
    try:
        assert applied_patch(tokens.create_n_gram_speculation) is not None
        assert tokens.create_n_gram_speculation.__wrapped__ is orig_fn
        with pytest.raises(PatchError, match="already patched"):
            tgi.NGramSpeculationPatch().apply(tokens)
        with pytest.raises(PatchError, match="twice"):
            ps.apply_for(tokens)
    finally:
        ps.revert_all()
    assert tokens.create_n_gram_speculation is orig_fn
    assert tokens.HeterogeneousNextTokenChooser.__dict__["__call__"] is orig_call


def test_unsupported_version_is_refused_by_name():
    ps = PatchSet("TGI", SUPPORTED, [tgi.NGramSpeculationPatch], lambda: ("3.3.4", "test"), SUPPORTED_TEXT)
    with pytest.raises(PatchError, match=r"3\.3\.4.*3\.3\.5, 3\.3\.6 and 3\.3\.7"):
        ps.apply_for(tokens)
    assert applied_patch(tokens.create_n_gram_speculation) is None


# ------------------------------------------------------------------ lossless with TGI's chooser
@pytest.mark.parametrize("algorithm", ["pld", "racer"])
def test_greedy_patched_equals_no_speculation(patched, tiny_model, algorithm):
    if algorithm not in registry.names():
        pytest.skip(f"{algorithm} is not registered yet")
    reqs = _requests(tiny_model.config.vocab_size)
    arrive = {100: 0, 101: 0, 102: 3, 103: 7}  # later arrivals: prefill + concatenate
    plain, _ = _run(tiny_model, 0, reqs, arrive)
    ctl = tgi.enable(algorithm)
    spec, acc = _run(tiny_model, 5, reqs, arrive)
    assert spec == plain  # token for token, every request
    assert ctl.errors == 0 and ctl.fallbacks == 0 and ctl.runtime.resyncs == 0
    assert ctl.runtime.stats.drafter_errors == 0 and ctl.runtime.stats.bad_trees == 0
    assert ctl.runtime.active_requests() == 0  # filter / batch end finished them all
    assert acc > 1.0


def test_tgi_ngram_baseline_also_lossless(tiny_model):
    reqs = _requests(tiny_model.config.vocab_size)
    plain, _ = _run(tiny_model, 0, reqs)
    ngram, acc = _run(tiny_model, 5, reqs)
    assert ngram == plain and acc >= 1.0


def test_drafter_error_falls_back_to_tgi_ngram_losslessly(patched, tiny_model, monkeypatch):
    reqs = _requests(tiny_model.config.vocab_size, n=2)
    plain, _ = _run(tiny_model, 0, reqs)
    ctl = tgi.enable("pld")
    ctl.runtime.ensure_drafter(tiny_model.config.vocab_size)
    real = ctl.runtime.drafter.propose
    calls = {"n": 0}

    def flaky(rids, budgets):
        calls["n"] += 1
        if calls["n"] in (3, 4):
            raise RuntimeError("boom")
        return real(rids, budgets)

    monkeypatch.setattr(ctl.runtime.drafter, "propose", flaky)
    spec, _ = _run(tiny_model, 4, reqs)
    assert spec == plain
    # the session catches the drafter's errors: those steps verify the roots alone
    assert ctl.runtime.stats.drafter_errors == 2 and ctl.errors == 0


def test_sampling_with_penalty_and_topk_feedback_runs(patched, tiny_model):
    algorithm = "racer" if "racer" in registry.names() else "pld"
    reqs = _requests(tiny_model.config.vocab_size, n=3, do_sample=True, seed=7, repetition_penalty=1.2, temperature=0.8)
    seen = []
    ctl = tgi.enable(algorithm)
    ctl.runtime.ensure_drafter(tiny_model.config.vocab_size)
    inner = ctl.runtime.drafter.observe_batch

    def spy(feedback):
        seen.append(feedback)
        return inner(feedback)

    ctl.runtime.drafter.observe_batch = spy
    out, _ = _run(tiny_model, 3, reqs)
    assert all(len(out[r.id]) == r.max_new_tokens for r in reqs)
    assert ctl.errors == 0 and ctl.fallbacks == 0
    if ctl.runtime.topk:
        fed = [f for f in seen if f.topk is not None]
        assert fed and all(f.topk.k == ctl.runtime.topk and len(f.topk) == 4 * len(f) for f in fed)
        assert all((f.topk.probs is not None) == ctl.runtime.topk_probs for f in fed)
        assert all(f.node_data is not None for f in fed) == (algorithm == "racer")  # cells kept
        if algorithm == "racer":
            assert ctl.runtime.drafter.acceptance.trials.sum() > 0


# ------------------------------------------------------------------ acceptance vs TGI's n-gram
def _smollm2():
    try:
        from specplug.adapters.hf.models import load_model
        from specplug.prompts import load_prompt_set

        model, tok = load_model()
        prompts = load_prompt_set("humaneval", limit=int(os.environ.get("TGI_COMPARE_PROMPTS", "4")))
    except Exception as e:  # model or prompt package not installed
        pytest.skip(f"SmolLM2 / HumanEval prompts unavailable: {e}")
    return model, [tok(p.text).input_ids for p in prompts]


@pytest.mark.slow
def test_specplug_accepts_more_than_tgi_ngram():
    model, prompts = _smollm2()
    new = int(os.environ.get("TGI_COMPARE_TOKENS", "64"))
    speculate = 5

    def reqs():
        return [tgi_loop.Request(id=i, prompt=p, max_new_tokens=new) for i, p in enumerate(prompts)]

    plain, _ = _run(model, 0, reqs())
    ngram, ngram_acc = _run(model, speculate, reqs())  # TGI's own create_n_gram_speculation
    results = {"tgi-ngram": ngram_acc}
    for algorithm in ("pld", "racer"):
        if algorithm not in registry.names():
            continue
        with _patched():
            ctl = tgi.enable(algorithm)
            out, acc = _run(model, speculate, reqs())
        assert out == plain, f"{algorithm} changed greedy output"
        assert ctl.errors == 0 and ctl.fallbacks == 0
        results[algorithm] = acc
    assert ngram == plain
    print(
        f"\naccepted tokens per verify step (SmolLM2-135M, {len(prompts)} HumanEval prompts, "
        f"{new} new tokens, --speculate {speculate}): " + ", ".join(f"{k} {v:.3f}" for k, v in results.items())
    )
    assert results["pld"] > results["tgi-ngram"]
