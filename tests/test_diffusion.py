"""Diffusion drafter (issue 8): lattice, causal-consistency path search against brute force,
the ADL rule, a tiny drafter trained here for seconds, and rejection of bad checkpoints."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from diffusion_helpers import save_tiny, tiny_model, train_tiny

from specplug.drafters import registry
from specplug.drafters.diffusion_lattice import (
    AdaptiveLength,
    Lattice,
    NgramProxy,
    UniformProxy,
    argmax_path,
    beam_search,
    build_lattice,
    path_score,
)
from specplug.drafters.diffusion_model import load_diffusion_model
from specplug.drafters.errors import ConfigError, ModelError, SpecplugError
from specplug.drafters.ngram_automaton import NgramPool

torch.set_num_threads(1)


# ------------------------------------------------------------------ lattice
def _dist(rows):
    """top (probs, ids) sorted, from explicit {token: prob} rows over a small vocabulary."""
    V = 12
    full = np.zeros((len(rows), V))
    for i, r in enumerate(rows):
        for t, p in r.items():
            full[i, t] = p
    ids = np.argsort(-full, axis=1, kind="stable")
    return full, np.take_along_axis(full, ids, 1), ids


def _eos_stats(full, eos):
    ep = full[:, eos][:, None]
    above = (full * (full > ep)).sum(1)[:, None]
    return ep, above


def test_top_set_is_smallest_prefix_reaching_tau_and_capped():
    full, p, ids = _dist(
        [
            {1: 0.5, 2: 0.25, 3: 0.15, 4: 0.1},  # 0.5, 0.75, 0.9 -> 3 tokens
            {5: 0.85, 6: 0.15},  # one token
            {t: 1 / 12 for t in range(12)},
        ]
    )  # flat: capped
    lat = build_lattice(p, ids, tau=0.8, cap=4)
    assert lat.length == 3 and not lat.eos_cut
    assert lat.tokens[0, :3].tolist() == [1, 2, 3] and (lat.tokens[0, 3:] == -1).all()
    assert lat.tokens[1, 0] == 5 and (lat.tokens[1, 1:] == -1).all()
    assert (lat.tokens[2] >= 0).sum() == 4
    np.testing.assert_allclose(np.exp(lat.logp[0, :3]), [0.5, 0.25, 0.15], rtol=1e-6)
    assert np.isneginf(lat.logp[1, 1:]).all()


def test_eos_exempt_from_cap_and_cuts_the_lattice():
    eos = 0
    # row 0: EOS far down (mass above it 0.9 >= tau): not in the set
    # row 1: EOS has rank 3, but the two tokens above it hold only 0.6 < tau: kept although
    #        cap=2, and the lattice ends at this row (rows 2, 3 dropped)
    full, p, ids = _dist([{4: 0.9, 0: 0.1}, {1: 0.35, 2: 0.25, 0: 0.2, 3: 0.2}, {0: 0.5, 5: 0.5}, {6: 1.0}])
    ep, above = _eos_stats(full, eos)
    lat = build_lattice(p, ids, ep, above, eos_ids=[eos], tau=0.8, cap=2)
    assert lat.eos_cut and lat.length == 2 and lat.k == 4
    assert lat.tokens[0][lat.tokens[0] >= 0].tolist() == [4]
    assert lat.tokens[1][lat.tokens[1] >= 0].tolist() == [1, 2, 0]  # sorted by probability
    np.testing.assert_allclose(np.exp(lat.logp[1]), [0.35, 0.25, 0.2], rtol=1e-6)
    # without EOS ids nothing is cut
    assert build_lattice(p, ids, tau=0.8, cap=2).length == 4


def test_lattice_rejects_bad_parameters():
    _, p, ids = _dist([{1: 1.0}])
    with pytest.raises(ConfigError, match="tau"):
        build_lattice(p, ids, tau=0.0)
    with pytest.raises(ConfigError, match="cap"):
        build_lattice(p, ids, cap=0)


# ------------------------------------------------------------------ path search vs brute force
def _random_lattice(rng, L, max_width, V=9):
    toks = np.full((L, max_width), -1, np.int64)
    logp = np.full((L, max_width), -np.inf, np.float32)
    for j in range(L):
        w = int(rng.integers(1, max_width + 1))
        ids = rng.choice(V, size=w, replace=False)
        pr = np.sort(rng.dirichlet(np.ones(w) * 0.7))[::-1]
        toks[j, :w] = ids
        logp[j, :w] = np.log(pr)
    return Lattice(toks, logp, False, L)


def _proxy(rng, V=9, order=3):
    pool = NgramPool(order)
    slot = pool.new_owner(4096)
    ctx = rng.integers(0, V, size=40).astype(np.int32)
    ctx[20:30] = ctx[5:15]  # some repeats: non-trivial counts
    pool.feed(slot, ctx)
    return NgramProxy(pool, slot, V, beta=0.7)


def _all_paths(lat):
    rows = [lat.tokens[j][lat.tokens[j] >= 0].tolist() for j in range(lat.length)]
    return list(itertools.product(*rows))


def _reference_beam(lat, proxy, beams, lam):
    """Textbook beam search over explicit paths, objective from path_score (independent code)."""
    hyps = [()]
    for j in range(lat.length):
        row = [t for t in lat.tokens[j].tolist() if t >= 0]
        cands = [(h + (t,)) for h in hyps for t in row]
        scored = [(path_score(_prefix_lattice(lat, j + 1), proxy, c, lam), i, c) for i, c in enumerate(cands)]
        scored.sort(key=lambda x: (-x[0], x[1]))
        hyps = [c for _, _, c in scored[:beams]]
    return hyps


def _prefix_lattice(lat, n):
    return Lattice(lat.tokens[:n], lat.logp[:n], False, n)


@pytest.mark.parametrize("seed", range(6))
def test_beam_search_with_wide_beam_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    lat = _random_lattice(rng, L=int(rng.integers(1, 5)), max_width=3)
    proxy = _proxy(rng)
    lam = [0.0, 0.3, 0.5, 1.0][seed % 4]
    paths = _all_paths(lat)
    brute = sorted(((path_score(lat, proxy, p, lam), p) for p in paths), key=lambda x: -x[0])
    got, scores, dlm = beam_search(lat, proxy, beams=len(paths), lam=lam)
    assert got.shape == (len(paths), lat.length)
    np.testing.assert_allclose(scores, [s for s, _ in brute], rtol=1e-5, atol=1e-5)
    assert {tuple(p) for p in got.tolist()} == {p for _, p in brute}
    for p, s, d in zip(got.tolist(), scores, dlm):  # returned scores are the true objective
        assert path_score(lat, proxy, p, lam) == pytest.approx(s, abs=1e-4)
        # and dlm holds each step's model log-probability
        want = [lat.logp[j][lat.tokens[j] == t][0] for j, t in enumerate(p)]
        np.testing.assert_allclose(d, want, rtol=1e-6)
    best = got[0]
    assert tuple(best) == brute[0][1] or math.isclose(brute[0][0], scores[0], abs_tol=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_narrow_beam_matches_reference_beam_search(seed):
    rng = np.random.default_rng(100 + seed)
    lat = _random_lattice(rng, L=4, max_width=4)
    proxy = _proxy(rng)
    for beams in (1, 2, 3):
        got, scores, _ = beam_search(lat, proxy, beams=beams, lam=0.5)
        ref = _reference_beam(lat, proxy, beams, 0.5)
        assert [tuple(p) for p in got.tolist()] == ref
        brute_best = max(path_score(lat, proxy, p, 0.5) for p in _all_paths(lat))
        assert scores[0] <= brute_best + 1e-5


def test_lambda_one_beam_one_is_argmax_and_causal_proxy_changes_the_choice():
    # position 0: model slightly prefers 4, but the context always continues ...1 -> 2
    toks = np.array([[4, 2]], np.int64)
    logp = np.log(np.array([[0.55, 0.45]], np.float32))
    lat = Lattice(toks, logp, False, 1)
    pool = NgramPool(3)
    slot = pool.new_owner(1024)
    pool.feed(slot, np.array([1, 2, 7, 1, 2, 8, 1, 2, 9, 1], np.int32))
    proxy = NgramProxy(pool, slot, vocab_size=16)
    assert beam_search(lat, proxy, 1, 1.0)[0].tolist() == [[4]]
    assert argmax_path(lat)[0].tolist() == [[4]]
    assert beam_search(lat, proxy, 1, 0.5)[0].tolist() == [[2]]
    assert beam_search(lat, UniformProxy(16), 1, 0.5)[0].tolist() == [[4]]


def test_ngram_proxy_is_a_distribution():
    rng = np.random.default_rng(3)
    V = 7
    proxy = _proxy(rng, V=V)
    for state in (proxy.initial(), proxy.root):
        lp = proxy.score(np.array([state]), np.arange(V)[None, :])
        assert np.exp(lp).sum() == pytest.approx(1.0, abs=1e-5)


# ------------------------------------------------------------------ adaptive draft length
def test_adl_update_rule():
    adl = AdaptiveLength(k_min=20, k_max=30, rho=0.5, delta=10)
    assert adl.k == 30 and adl.G == 30 and adl.A == 0
    # G = .5*30 + .5*24 = 27, A = 1 -> k = 27
    assert adl.update(24, 2) == 27 and adl.G == 27 and adl.A == 1
    # G = .5*27 + .5*10 = 18.5 -> floor 18, clipped to k_min 20
    assert adl.update(10, 0) == 20
    # accepted catches up: G = .5*18.5 + .5*5 = 11.75, A = .5*.5 + .5*30 = 15.25 >= G -> 11 + 10 = 21
    assert adl.update(5, 30) == 21
    # huge generated length clips at k_max
    adl2 = AdaptiveLength(1, 8, rho=0.0, delta=3)
    assert adl2.update(100, 0) == 8
    assert adl2.update(4, 4) == 7  # floor(4) + 3
    with pytest.raises(ConfigError, match="k_min"):
        AdaptiveLength(5, 4)


# ------------------------------------------------------------------ a tiny trained drafter
V = 16
CYCLES = ([1, 5, 9, 3, 7, 11, 2], [4, 8, 12, 6, 10, 13, 14, 15])


def _cycle_next(ctx):
    """The synthetic target: continues whichever cycle holds the last two tokens."""
    a, b = ctx[-2], ctx[-1]
    for cyc in CYCLES:
        n = len(cyc)
        for i in range(n):
            if cyc[i] == a and cyc[(i + 1) % n] == b:
                return cyc[(i + 2) % n]
    return CYCLES[0][0]


def _corpus(rng, n=64, length=48):
    out = []
    for _ in range(n):
        cyc = CYCLES[int(rng.integers(2))]
        off = int(rng.integers(len(cyc)))
        out.append([cyc[(off + j) % len(cyc)] for j in range(length)])
    return out


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory):
    model = tiny_model(V, seed=0)
    train_tiny(model, _corpus(np.random.default_rng(0)), steps=250, seconds=10.0)
    return str(save_tiny(tmp_path_factory.mktemp("tiny-diffusion"), V, model=model))


@pytest.fixture(scope="module")
def random_ckpt(tmp_path_factory):
    return str(save_tiny(tmp_path_factory.mktemp("random-diffusion"), V, seed=1))


def _mean_accepted(ckpt, options=None, steps=8):
    """Greedy verification against the synthetic target; mean accepted draft tokens per step."""
    opts = {"model_path": ckpt, "k_min": 4, "k_max": 10, **(options or {})}
    d = registry.create("diffusion", V, opts)
    rng = np.random.default_rng(7)
    accepted = []
    for r, seq in enumerate(_corpus(rng, n=4, length=12)):
        ctx = list(seq)
        d.start(r, ctx)
        for _ in range(steps):
            tree = d.propose([r], [32])[0]
            # greedy walk
            node, acc = 0, []
            kids = {}
            for i in range(1, len(tree)):
                kids.setdefault(int(tree.parents[i]), []).append(i)
            cur = list(ctx)
            while True:
                want = _cycle_next(cur)
                nxt = [c for c in kids.get(node, []) if tree.tokens[c] == want]
                acc.append(want)
                cur.append(want)
                if not nxt:
                    break
                node = nxt[0]
            accepted.append(len(acc) - 1)
            d.observe(r, tree, acc)
            ctx = cur
        d.finish(r)
    assert d.active_requests() == 0
    return float(np.mean(accepted))


def test_trained_tiny_drafter_accepts_more_than_chance(trained_ckpt, random_ckpt):
    # the model alone (per-position argmax): chance of a random token matching is 1/16, an
    # expected ~0.07 accepted tokens per step
    trained = _mean_accepted(trained_ckpt, {"path_search": "argmax"})
    untrained = _mean_accepted(random_ckpt, {"path_search": "argmax"})
    assert trained > 3.0, trained
    assert untrained < 1.0, untrained
    # the full drafter (beam search with the context n-gram proxy), trees and chains
    assert _mean_accepted(trained_ckpt) > 3.0
    assert _mean_accepted(trained_ckpt, {"mode": "chain"}) > 3.0
    # with the model flat, the causal proxy alone recovers the cycle from the context (CPS at work)
    assert _mean_accepted(random_ckpt) > untrained + 1.0


def test_drafter_trees_respect_budget_and_adl(trained_ckpt):
    d = registry.create("diffusion", V, {"model_path": trained_ckpt, "k_min": 3, "k_max": 6})
    d.start("x", _corpus(np.random.default_rng(1), 1, 10)[0])
    for budget in (1, 2, 5, 64):
        tree = d.propose(["x"], [budget])[0]
        assert len(tree) <= budget
        tree.validate(vocab_size=V, budget=budget)
    assert d.draft_length("x") == 6
    d.observe("x", tree, [int(t) for t in tree.tokens[1:3]] + [0])
    assert 3 <= d.draft_length("x") <= 6
    fixed = registry.create("diffusion", V, {"model_path": trained_ckpt, "adaptive": False, "k_min": 5, "k_max": 5})
    fixed.start("y", [1, 5, 9])
    assert len(fixed.propose(["y"], [64])[0]) - 1 <= 5 * 3
    fixed.finish("y")
    d.finish("x")
    assert d.active_requests() == 0


# ------------------------------------------------------------------ bad input
def test_missing_model_path_is_one_clear_config_error():
    with pytest.raises(ConfigError, match="model_path"):
        registry.create("diffusion", V)
    with pytest.raises(ModelError, match="does not exist"):
        registry.create("diffusion", V, {"model_path": "/nonexistent/ckpt"})
    with pytest.raises(ConfigError, match="k_min"):
        registry.create("diffusion", V, {"model_path": "/x", "k_min": 9, "k_max": 4})
    with pytest.raises(ConfigError, match="path_search"):
        registry.validate_options("diffusion", {"path_search": "greedy"})


def test_vocabulary_size_mismatch_names_both_sizes(random_ckpt):
    with pytest.raises(ModelError, match=r"vocab_size 16.*target model has 32"):
        registry.create("diffusion", 32, {"model_path": random_ckpt})


def _word_tokenizer(words):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=words[0])


def test_tokenizer_mismatch_is_named(random_ckpt, tmp_path):
    import shutil

    ckpt = tmp_path / "ck"
    shutil.copytree(random_ckpt, ckpt)
    words = [f"w{i}" for i in range(V)]
    _word_tokenizer(words).save_pretrained(ckpt)
    d = registry.create("diffusion", V, {"model_path": str(ckpt)})
    d.check_target(_word_tokenizer(words))  # identical: fine
    other = words[:-1] + ["zzz"]
    with pytest.raises(
        ModelError,
        match=r"vocabulary mismatch.*only in the drafter \['w15'\].*only in the target "
        r"\['zzz'\]",
    ):
        d.check_target(_word_tokenizer(other))


def _corrupt(src, tmp_path, name, fn):
    import shutil

    dst = tmp_path / name
    shutil.copytree(src, dst)
    fn(dst)
    return dst


@pytest.mark.parametrize(
    "case,match",
    [
        ("no_config", "no config.json"),
        ("bad_json", "not valid JSON"),
        ("other_arch", "trust_remote_code"),
        ("no_vocab", "mask token id"),
        ("mask_out_of_range", "mask_token_id"),
        ("no_weights", "no model.safetensors"),
        ("garbage_weights", "cannot read"),
        ("missing_tensor", "missing tensors"),
        ("wrong_shape", "has shape"),
        ("nan", "NaN"),
    ],
)
def test_malformed_checkpoints_are_rejected(random_ckpt, tmp_path, case, match):
    from safetensors.torch import load_file, save_file

    def cfg_edit(f):
        def go(d):
            c = json.loads((d / "config.json").read_text())
            f(c)
            (d / "config.json").write_text(json.dumps(c))

        return go

    def tensors_edit(f):
        def go(d):
            t = load_file(str(d / "model.safetensors"))
            f(t)
            save_file(t, str(d / "model.safetensors"))

        return go

    edits = {
        "no_config": lambda d: (d / "config.json").unlink(),
        "bad_json": lambda d: (d / "config.json").write_text("{nope"),
        "other_arch": cfg_edit(lambda c: c.update(model_type="dream")),
        "no_vocab": cfg_edit(lambda c: c.pop("vocab_size")),
        "mask_out_of_range": cfg_edit(lambda c: c.update(mask_token_id=999)),
        "no_weights": lambda d: (d / "model.safetensors").unlink(),
        "garbage_weights": lambda d: (d / "model.safetensors").write_bytes(b"\x00garbage" * 10),
        "missing_tensor": tensors_edit(lambda t: t.pop("model.norm.weight")),
        "wrong_shape": tensors_edit(lambda t: t.update({"model.norm.weight": torch.ones(7)})),
        "nan": tensors_edit(lambda t: t["model.layers.0.mlp.up_proj.weight"].fill_(float("nan"))),
    }
    bad = _corrupt(random_ckpt, tmp_path, case, edits[case])
    with pytest.raises(ModelError, match=match):
        load_diffusion_model(bad)
    with pytest.raises(SpecplugError, match=match):  # and through the registry: the same clear error
        registry.create("diffusion", V, {"model_path": str(bad)})


def test_checkpoint_round_trip_is_exact(random_ckpt):
    m1, cfg = load_diffusion_model(random_ckpt)
    ids = torch.tensor([[1, 2, 3, V, V]])
    with torch.no_grad():
        a = m1(ids, logits_from=3)
    assert a.shape == (1, 2, V)
    m2, _ = load_diffusion_model(random_ckpt)
    with torch.no_grad():
        assert torch.equal(a, m2(ids, logits_from=3))
    assert cfg.mask_token_id == V


# ------------------------------------------------------------------ engines
def test_registered_for_sglang_and_tgi(trained_ckpt):
    from specplug.adapters.tgi.runtime import tgi_chain
    from specplug.plugins import sglang as plug

    assert "DIFFUSION" in plug.engine_names()
    d = registry.create("diffusion", V, {"model_path": trained_ckpt, "mode": "chain", "k_min": 4, "k_max": 6})
    seq = _corpus(np.random.default_rng(2), 1, 14)[0]
    d.start(0, seq)
    tree = d.propose([0], [16])[0]
    chain = tgi_chain(tree, 5, V)
    assert chain.shape == (5,)
    # the chain continues the cycle
    ref = list(seq)
    for _ in range(3):
        ref.append(_cycle_next(ref))
    assert chain[:3].tolist() == ref[-3:]
    d.finish(0)


# ------------------------------------------------------------------ training: resumable, time-bounded
def test_training_checkpoints_resume_and_respect_the_time_limit(tmp_path):
    import time

    from specplug.train_drafter import STATE_FILE, TrainConfig, train_loop

    seqs = [np.asarray(s, np.int64) for s in _corpus(np.random.default_rng(5), 16, 30)]
    plens = [4] * len(seqs)
    model = tiny_model(V, seed=3)
    out = tmp_path / "ck"
    res = train_loop(
        model,
        seqs,
        plens,
        TrainConfig(steps=6, time_limit_s=60, batch=4, window=8, r_max=6),
        out_dir=out,
        progress=False,
    )
    assert res["step"] == 6
    assert {"config.json", "model.safetensors", STATE_FILE} <= {p.name for p in out.iterdir()}
    loaded, _ = load_diffusion_model(out)
    for a, b in zip(loaded.parameters(), model.parameters()):
        assert torch.equal(a, b)
    state = torch.load(out / STATE_FILE, weights_only=False)
    assert state["step"] == 6 and "optimizer" in state
    loaded.requires_grad_(True)
    res2 = train_loop(
        loaded,
        seqs,
        plens,
        TrainConfig(steps=9, time_limit_s=60, batch=4, window=8, r_max=6),
        out_dir=out,
        state=state,
        progress=False,
    )
    assert res2["step"] == 9  # continued, not restarted
    assert torch.load(out / STATE_FILE, weights_only=False)["step"] == 9
    t0 = time.monotonic()
    res3 = train_loop(
        tiny_model(V),
        seqs,
        plens,
        TrainConfig(steps=10**6, time_limit_s=0.5, batch=4, window=8, r_max=6),
        progress=False,
    )
    assert time.monotonic() - t0 < 5.0 and 0 < res3["step"] < 10**6


def test_train_drafter_cli_rejects_bad_arguments(capsys):
    from specplug.cli import main

    assert main(["train-drafter", "--kind", "diffusion", "--time-limit", "0"]) == 2
    assert "--time-limit" in capsys.readouterr().err
    assert main(["train-drafter", "--kind", "diffusion", "--layers", "a,b"]) == 2
    assert "--layers" in capsys.readouterr().err


def test_make_batch_masks_the_tail_with_decaying_weights():
    from specplug.train_drafter import make_batch

    seqs = [np.arange(100, 140, dtype=np.int64)]  # token = 100 + position
    ids, key, tgt, w, pos = make_batch(seqs, [10], np.random.default_rng(0), 8, 6, 5, 999, 1.01)
    for b in range(8):
        R = int((w[b] > 0).sum())
        n = int(key[b].sum())
        assert 1 <= R <= 5 and (ids[b, n - R : n] == 999).all()
        ctx = ids[b, : n - R].tolist()
        assert 1 <= len(ctx) <= 6 and ctx == list(range(ctx[0], ctx[0] + len(ctx)))
        assert tgt[b, :R].tolist() == list(range(ctx[-1] + 1, ctx[-1] + 1 + R))  # the next R tokens
        assert tgt[b, 0] >= 110  # masked block inside the continuation
        assert pos[b, :R].tolist() == list(range(n - R, n))
        np.testing.assert_allclose(w[b, :R].numpy(), 1.01 ** (R - np.arange(1, R + 1)), rtol=1e-6)


def test_tgi_chain_speculation_drives_the_diffusion_drafter(trained_ckpt):
    from specplug.adapters.tgi.runtime import ChainSpeculation

    rt = ChainSpeculation("diffusion", {"model_path": trained_ckpt, "k_min": 4, "k_max": 6})
    ctx = _corpus(np.random.default_rng(4), 1, 12)[0]
    first = _cycle_next(ctx)
    ctx = ctx + [first]
    out = rt.draft(["a"], [ctx[:-1]], [first], [1], 4, vocab_size=V, prefill=True)
    for _ in range(6):
        chain = out[0].tolist()
        acc, cur = [], list(ctx)
        for t in chain:  # TGI's chain verification against the synthetic target
            if t != _cycle_next(cur):
                break
            acc.append(t)
            cur.append(t)
        acc.append(_cycle_next(cur))
        ctx = cur + [acc[-1]]
        out = rt.draft(["a"], [ctx[: -len(acc)]], acc, [len(acc)], 4, vocab_size=V, verified=[chain])
    assert rt.mean_accepted() > 3.0  # up to 5 per step (4 drafts + bonus)
    rt.finish(["a"])
    assert rt.active_requests() == 0


def test_simulated_acceptance_on_known_continuations(trained_ckpt):
    from specplug.drafters.tree import DraftTree
    from specplug.train_drafter import simulate_acceptance, tree_accepted

    tree = DraftTree.from_paths(0, [[1, 2, 3], [1, 4], [5]])
    assert tree_accepted(tree, [1, 2, 9]) == 2 and tree_accepted(tree, [1, 4, 4]) == 2
    assert tree_accepted(tree, [7]) == 0 and tree_accepted(tree, [5, 5]) == 1
    seqs = [np.asarray(s, np.int64) for s in _corpus(np.random.default_rng(9), 6, 30)]
    res = simulate_acceptance(
        trained_ckpt,
        seqs,
        [4] * 6,
        {"beam": {"k_min": 4, "k_max": 8}, "argmax": {"path_search": "argmax", "k_min": 4, "k_max": 8}},
        points=12,
        budget=16,
    )
    assert res["beam"]["points"] == 12 and res["beam"]["mean_accepted"] > 3.0
    assert res["argmax"]["mean_accepted"] > 3.0
