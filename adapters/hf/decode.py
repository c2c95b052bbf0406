"""The speculative decode loop of one batch of requests on the embedded engine.

Per step: the drafter proposes one tree per active request; the trees are padded to a
common width and scored in ONE forward pass against the KV cache (tree attention mask,
positions = committed length + depth); the verifier picks the accepted path and bonus
token per request; the accepted nodes' KV is compacted into place; the drafter observes.
Finished requests leave the batch (their cache rows are dropped, their drafter state freed).
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import torch

from specplug.drafters.errors import ConfigError
from specplug.drafters.feedback import TopK
from specplug.drafters.sampling import GREEDY, SamplingParams
from specplug.drafters.session import DraftSession, RequestView
from specplug.drafters.verify import committed_tokens, verify_greedy

from .config import GenerationConfig, GenerationResult
from .invariant import new_cache, prefill_visibility, tree_pass_mask
from .kv import cache_kwarg
from .sampling import warp_probs

__all__ = ["DecodeBatch"]

_REQUEST_IDS = itertools.count()


def _sampling_verifier():
    from specplug.drafters import verify

    fn = getattr(verify, "verify_sampling", None)
    if fn is None:
        raise ConfigError(
            "sampling (temperature > 0) needs specplug.drafters.verify.verify_sampling, "
            "which this installation lacks; use temperature 0 (greedy)"
        )
    return fn


def _topk_probs(logits: torch.Tensor, top_values: torch.Tensor) -> torch.Tensor:
    """The target's probabilities (softmax at temperature 1) of its top-k logits."""
    lse = torch.logsumexp(logits.float(), dim=-1, keepdim=True)
    return torch.exp(top_values.float() - lse)


class DecodeBatch:
    """State of one ``generate`` call; drive with :meth:`prefill`, :meth:`step` until
    :attr:`done`, and always :meth:`close` (frees every drafter state still held).

    The drafting loop itself (request lifecycle, tree checks, the budget policy, feedback)
    is :class:`specplug.drafters.session.DraftSession`; this class owns what is the embedded
    engine's: the KV cache rows, the batched forward passes and verification, stop rules."""

    #: KV slots allocated up front beyond the longest prompt; the cache doubles when full
    INITIAL_ROOM = 256
    #: prompt tokens per prefill forward pass (bounds the attention and logits memory)
    PREFILL_CHUNK = 512

    def __init__(
        self, engine, prompts, drafter, budget: int, config: GenerationConfig, t_start: float, budget_policy=None
    ):
        self.engine, self.model, self.drafter = engine, engine.model, drafter
        self.budget, self.config, self.t_start = budget, config, t_start
        self.sampling = config.sampling
        # what the drafters see of it (the session tells them; greedy: GREEDY)
        self.request_sampling = (
            GREEDY
            if self.sampling.greedy
            else SamplingParams(self.sampling.temperature, self.sampling.top_k, self.sampling.top_p)
        )
        n = len(prompts)
        self.prompts = [list(map(int, p)) for p in prompts]
        self.rids = [next(_REQUEST_IDS) for _ in range(n)]
        self.outputs: list[list[int]] = [[] for _ in range(n)]
        self.limits = np.array(
            [min(config.max_new_tokens, engine.max_context - len(p)) for p in self.prompts], np.int64
        )
        self.stop_ids = np.array(sorted(set(engine.eos_token_ids) | set(map(int, config.stop_token_ids))), np.int64)
        self.eos_ids = np.array(sorted(engine.eos_token_ids), np.int64)
        self.steps = np.zeros(n, np.int64)
        self.speculative_steps = np.zeros(n, np.int64)
        self.accepted: list[list[int]] = [[] for _ in range(n)]
        self.draft_time = np.zeros(n)
        self.verify_time = np.zeros(n)
        self.results: list[GenerationResult | None] = [None] * n
        self.active = np.arange(n)  # request index of each cache row
        self.lens = np.zeros(n, np.int64)  # committed KV length of each cache row
        self.topk, self.topk_probs = drafter.feedback_topk, drafter.feedback_probs
        self.device = next(self.model.parameters()).device
        self.dtype = next(self.model.parameters()).dtype
        self.generator = None
        if not self.sampling.greedy:
            self.verify_sampling = _sampling_verifier()
            self.generator = torch.Generator(device=self.device)
            if self.sampling.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(int(self.sampling.seed))
        longest = max(len(p) for p in self.prompts)
        need = longest + int(min(self.limits.max(), self.INITIAL_ROOM)) + budget
        self.cache = new_cache(self.model, n, need)
        self.cache_kw = cache_kwarg(self.model)
        self.session = DraftSession(
            drafter,
            engine.vocab_size,
            policy=budget_policy,
            engine="the embedded engine",
            runners={"early_exit": self._early_exit_runner},
        )
        self.runner = self.session.runner  # the model interface of drafters with ``needs_runner``

    def _early_exit_runner(self):
        from .early_exit import HFEarlyExitRunner

        return HFEarlyExitRunner(self)

    def _view(self, i: int) -> RequestView:
        prompt, out = self.prompts[i], self.outputs[i]
        return RequestView(self.rids[i], len(prompt) + len(out), out[-1], lambda: prompt + out, self.request_sampling)

    @property
    def done(self) -> bool:
        return self.active.shape[0] == 0

    # ------------------------------------------------------------------ prefill
    def prefill(self) -> None:
        """Right-padded batched prefill in chunks; emits each request's first token."""
        t0 = time.perf_counter()
        chunk = self.PREFILL_CHUNK
        lengths = np.array([len(p) for p in self.prompts], np.int64)
        longest = int(lengths.max())
        ids = np.zeros((len(self.prompts), longest), np.int64)
        for i, p in enumerate(self.prompts):  # one row copy per request
            ids[i, : len(p)] = p
        ids_t = torch.from_numpy(ids).to(self.device)
        len_t = torch.from_numpy(lengths).to(self.device)
        last_logits = torch.empty((len(self.prompts), self.engine.vocab_size), dtype=torch.float32, device=self.device)
        want_topk = self.topk > 0
        if want_topk:  # full logits per chunk: keep chunks small
            chunk = min(chunk, 128)
            ctx_topk = torch.empty((len(self.prompts), longest, self.topk), dtype=torch.long, device=self.device)
            ctx_probs = (
                torch.empty((len(self.prompts), longest, self.topk), dtype=torch.float32, device=self.device)
                if self.topk_probs
                else None
            )
        for start in range(0, longest, chunk):
            stop = min(start + chunk, longest)
            q = torch.arange(start, stop, device=self.device)
            mask = None
            if not prefill_visibility(self.cache, start, stop, lengths):
                k = torch.arange(stop, device=self.device)
                allowed = (k[None, None, :] <= q[None, :, None]) & (k[None, None, :] < len_t[:, None, None])
                mask = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device)[:, None]
                mask.masked_fill_(~allowed[:, None], torch.finfo(self.dtype).min)
            last_local = lengths - 1 - start
            in_chunk = (last_local >= 0) & (last_local < stop - start)
            if want_topk:
                keep = 0  # all positions
            elif in_chunk.any():
                keep = torch.from_numpy(np.unique(last_local[in_chunk])).to(self.device)
            else:
                keep = 1
            self.cache.end = start
            hidden = self.runner is not None and self.runner.prefill_wants(start, stop, lengths)
            out = self.model(
                input_ids=ids_t[:, start:stop],
                attention_mask=mask,
                position_ids=q[None, :].expand(len(self.prompts), -1),
                use_cache=True,
                logits_to_keep=keep,
                output_hidden_states=hidden,
                **{self.cache_kw: self.cache},
            )
            logits = out.logits.float()  # once: argmax and top-k on bf16 are several times slower
            if hidden:  # early-exit drafters' prompt seed (shadow tokens)
                self.runner.capture_prefill(out.hidden_states, start, stop, lengths)
            if want_topk:
                if ctx_probs is not None:
                    top = torch.topk(logits, self.topk, dim=-1)
                    ctx_topk[:, start:stop] = top.indices
                    ctx_probs[:, start:stop] = _topk_probs(logits, top.values)
                else:
                    ctx_topk[:, start:stop] = torch.topk(logits, self.topk, dim=-1).indices
                sel = torch.from_numpy(np.flatnonzero(in_chunk)).to(self.device)
                last_logits[sel] = logits[sel, torch.from_numpy(last_local[in_chunk]).to(self.device)].float()
            elif in_chunk.any():
                kept = keep.cpu().numpy()
                col = torch.from_numpy(np.searchsorted(kept, last_local[in_chunk])).to(self.device)
                sel = torch.from_numpy(np.flatnonzero(in_chunk)).to(self.device)
                last_logits[sel] = logits[sel, col].float()
        self.lens = lengths.copy()
        self.cache.end = int(lengths.max())
        first = self._pick(last_logits)
        ctx_np = ctx_topk.cpu().numpy() if want_topk else None
        ctxp_np = ctx_probs.cpu().numpy() if want_topk and ctx_probs is not None else None
        elapsed = time.perf_counter() - t0
        self.verify_time += elapsed
        finished = []
        for i in range(len(self.prompts)):
            self.steps[i] = 1
            if self._commit(i, [int(first[i])]):
                finished.append(i)
                continue
            t1 = time.perf_counter()
            n = len(self.prompts[i])
            ctx = None if ctx_np is None else TopK.of(ctx_np[i, :n], None if ctxp_np is None else ctxp_np[i, :n])
            self.session.start(self.rids[i], self.prompts[i] + self.outputs[i], ctx)
            self.draft_time[i] += time.perf_counter() - t1
        self._drop(np.array(finished, np.int64))

    def _pick(self, logits: torch.Tensor) -> np.ndarray:
        """Next token from [B, V] logits: argmax, or a sample of the warped distribution."""
        if self.sampling.greedy:
            return logits.argmax(dim=-1).cpu().numpy()
        probs = warp_probs(logits, self.sampling)
        return torch.multinomial(probs, 1, generator=self.generator)[:, 0].cpu().numpy()

    # ------------------------------------------------------------------ one speculative step
    def step(self) -> None:
        req = self.active
        rids = [self.rids[i] for i in req]
        remaining = self.limits[req] - np.array([len(self.outputs[i]) for i in req], np.int64)
        budgets = np.minimum(self.budget, remaining)  # a tree never overruns max_new_tokens
        drafted = self.session.propose([self._view(i) for i in req], budgets)
        packed = drafted.pack()
        self.speculative_steps[req] += packed.sizes > 1

        t1 = time.perf_counter()
        b, w = packed.tokens.shape
        self.cache.ensure_capacity(self.cache.end + w)
        dev = self.device
        mask = tree_pass_mask(self.cache, self.lens, packed.mask, self.dtype, dev)
        positions = torch.from_numpy(self.lens[:, None] + packed.depth).to(dev)
        hidden = self.runner is not None and self.runner.wants_hidden()
        out = self.model(
            input_ids=torch.from_numpy(packed.tokens.astype(np.int64)).to(dev),
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            output_hidden_states=hidden,
            **{self.cache_kw: self.cache},
        )
        logits = out.logits.float()  # once: argmax and top-k on bf16 are several times slower
        if self.sampling.greedy:
            res = verify_greedy(
                packed.tokens, packed.parents, packed.depth, packed.valid, logits.argmax(dim=-1).cpu().numpy()
            )
        else:
            res = self.verify_sampling(
                packed.tokens,
                packed.parents,
                packed.depth,
                packed.valid,
                warp_probs(logits, self.sampling),
                self.generator,
            )
        topk = probs_np = None
        if self.topk:
            top = torch.topk(logits, self.topk, dim=-1)
            topk = top.indices.cpu().numpy()
            if self.topk_probs:
                probs_np = _topk_probs(logits, top.values).cpu().numpy()
        accept_len = np.asarray(res.accept_len, np.int64)
        if hidden:  # shadow tokens of early-exit drafters: hidden states on the accepted paths
            self.runner.capture(out.hidden_states, logits, np.asarray(res.accepted_nodes), accept_len)
        self.cache.compact(self.lens, np.asarray(res.accepted_nodes), accept_len)
        self.lens = self.lens + accept_len + 1
        self.cache.end = int(self.lens.max())
        t_verify = time.perf_counter() - t1

        finished, obs_rows, obs_acc = [], [], []
        for j, i in enumerate(req):  # per request, over its few committed tokens
            acc = committed_tokens(packed.tokens, res, j)
            self.steps[i] += 1
            if self._commit(i, acc):
                finished.append(j)
            else:
                obs_rows.append(j)
                obs_acc.extend(acc)
        t_observe = 0.0
        if obs_rows:
            rows = np.asarray(obs_rows, np.int64)
            t_observe = self.session.observe(
                [rids[j] for j in obs_rows],
                np.asarray(obs_acc, np.int64),
                accept_len[rows] + 1,
                None if topk is None else topk[rows],
                None if probs_np is None else probs_np[rows],
            )
        self.draft_time[req] += drafted.draft_s + t_observe
        self.verify_time[req] += t_verify
        self._drop(np.array(finished, np.int64))

    # ------------------------------------------------------------------ bookkeeping
    def _commit(self, i: int, tokens: list[int]) -> bool:
        """Append committed tokens up to the first stop token or the length limit; True when done."""
        room = int(self.limits[i]) - len(self.outputs[i])
        toks = np.asarray(tokens[:room], np.int64)
        hits = np.flatnonzero(np.isin(toks, self.stop_ids))
        reason = None
        if hits.shape[0]:
            toks = toks[: hits[0] + 1]
            reason = "eos" if np.isin(toks[-1], self.eos_ids) else "stop"
        self.outputs[i].extend(toks.tolist())
        self.accepted[i].append(int(toks.shape[0]))
        if reason is None and len(self.outputs[i]) >= self.limits[i]:
            reason = "length"
        if reason is None:
            return False
        self.results[i] = GenerationResult(
            output_ids=self.outputs[i],
            steps=int(self.steps[i]),
            accepted_per_step=self.accepted[i],
            draft_time_s=0.0,
            verify_time_s=0.0,
            total_time_s=time.perf_counter() - self.t_start,
            finish_reason=reason,
            speculative_steps=int(self.speculative_steps[i]),
        )
        return True

    def _drop(self, rows: np.ndarray) -> None:
        """Remove finished cache rows; free their drafter state."""
        if rows.shape[0] == 0:
            return
        for j in rows:
            i = int(self.active[j])
            self._finish(i)
        keep = np.setdiff1d(np.arange(self.active.shape[0]), rows)
        self.active = self.active[keep]
        self.lens = self.lens[keep]
        if keep.shape[0]:
            self.cache.select_rows(keep)
            self.cache.end = int(self.lens.max())

    def _finish(self, i: int) -> None:
        res = self.results[i]
        res.draft_time_s = float(self.draft_time[i])
        res.verify_time_s = float(self.verify_time[i])
        self.session.finish(self.rids[i])

    def close(self) -> None:
        """Free every drafter state still held (also after an exception: the session logs a
        drafter's error instead of raising a second one that would hide the first)."""
        self.session.reset()
        self.cache = None
        if self.runner is not None:
            self.runner.close()
