"""A small CPU decode loop around TGI's REAL chooser (no TGI model server).

TGI's ``FlashCausalLM`` itself runs in ``test_tgi_server.py`` (on the IPEX CPU stand-in,
in a process with TGI's pinned dependencies); this loop is the light check that runs in
this environment's own process with a transformers model. The speculation logic lives in
the chooser anyway: ``HeterogeneousNextTokenChooser``
(``text_generation_server.utils.tokens``) chooses the tokens, verifies last step's
draft chains, counts accepted ids and calls the drafting point. This module drives that
real chooser the way ``FlashCausalLM.generate_token`` does (same arguments: the
zero-padded ``all_input_ids_tensor[:, :max_current_length]``, logits ``[B * (N + 1), V]``,
``speculate``, ``batch.speculative_ids``), with a transformers model for the logits
and a per-row KV cache cropped to the accepted length. Batches are built, filtered and
concatenated as TGI's router does (the chooser is rebuilt by ``from_pb`` on
concatenation, as in TGI).

``LoopLM.generate_token`` and ``LoopBatch.filter`` have the roles (and attribute names)
of ``FlashCausalLM.generate_token`` and ``FlashCausalLMBatch.filter``, so the same
specplug patch code wraps them here (patch subclasses retargeted at this module).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# TGI's modules: importable once TGI_SERVER_SRC is on sys.path (see conftest.py)
from text_generation_server.pb import generate_pb2
from text_generation_server.utils.tokens import HeterogeneousNextTokenChooser


@dataclass
class Request:
    id: int
    prompt: list[int]
    max_new_tokens: int
    do_sample: bool = False
    seed: int = 0
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    top_k: int = 0

    @property
    def parameters(self):
        return generate_pb2.NextTokenChooserParameters(
            temperature=self.temperature,
            repetition_penalty=self.repetition_penalty,
            frequency_penalty=0.0,
            top_k=self.top_k,
            top_p=1.0,
            typical_p=1.0,
            do_sample=self.do_sample,
            seed=self.seed,
            watermark=False,
            grammar="",
            grammar_type=0,
        )


@dataclass
class LoopBatch:
    requests: list[Request]
    all_input_ids: list[list[int]]
    caches: list
    generated: list[list[int]]
    next_token_chooser: HeterogeneousNextTokenChooser
    speculative_ids: torch.Tensor | None = None
    prefilling: bool = True
    requests_idx_mapping: dict = field(default_factory=dict)

    @classmethod
    def from_requests(cls, requests: list[Request]) -> LoopBatch:
        from transformers import DynamicCache

        chooser = HeterogeneousNextTokenChooser.from_pb(
            [r.parameters for r in requests], torch.float32, torch.device("cpu"), None
        )
        return cls(
            list(requests),
            [list(r.prompt) for r in requests],
            [DynamicCache() for _ in requests],
            [[] for _ in requests],
            chooser,
            None,
            True,
            {r.id: i for i, r in enumerate(requests)},
        )

    def __len__(self):
        return len(self.requests)

    def filter(self, request_ids: list[int]) -> LoopBatch:
        idx = [self.requests_idx_mapping[r] for r in request_ids]
        self.requests = [self.requests[i] for i in idx]
        self.all_input_ids = [self.all_input_ids[i] for i in idx]
        self.caches = [self.caches[i] for i in idx]
        self.generated = [self.generated[i] for i in idx]
        self.next_token_chooser = self.next_token_chooser.filter(idx)
        self.speculative_ids = None if self.speculative_ids is None else self.speculative_ids[idx]
        self.requests_idx_mapping = {r.id: i for i, r in enumerate(self.requests)}
        return self

    @classmethod
    def concatenate(cls, batches: list[LoopBatch]) -> LoopBatch:
        reqs = [r for b in batches for r in b.requests]
        chooser = HeterogeneousNextTokenChooser.from_pb(  # as TGI: chooser state is rebuilt
            [r.parameters for r in reqs],
            torch.float32,
            torch.device("cpu"),
            None,
            fsm_grammar_states=[s for b in batches for s in b.next_token_chooser.fsm_grammar_states],
        )
        spec = None
        if all(b.speculative_ids is not None for b in batches):
            spec = torch.cat([b.speculative_ids for b in batches], dim=0)
        return cls(
            reqs,
            [x for b in batches for x in b.all_input_ids],
            [c for b in batches for c in b.caches],
            [g for b in batches for g in b.generated],
            chooser,
            spec,
            False,
            {r.id: i for i, r in enumerate(reqs)},
        )


def _crop(cache, keep: int) -> None:
    remove = cache.get_seq_length() - keep
    if remove > 0:
        cache.crop(-remove)


class LoopLM:
    """``generate_token(batch) -> (new tokens per request id, next batch or None, accepted per row)``."""

    def __init__(self, model, speculate: int):
        self.model = model
        self.speculate = speculate
        self.decode_rows = 0  # row-steps that verified a draft chain
        self.decode_tokens = 0  # tokens committed in those row-steps

    @torch.no_grad()
    def _logits(self, batch: LoopBatch) -> torch.Tensor:
        rows = []
        for i, cache in enumerate(batch.caches):
            if batch.prefilling:
                ids = batch.all_input_ids[i]
                rows.append(
                    self.model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True).logits[0, -1:]
                )
            else:
                ids = [batch.all_input_ids[i][-1]]
                if batch.speculative_ids is not None:
                    ids = ids + batch.speculative_ids[i].tolist()
                rows.append(self.model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True).logits[0])
        return torch.cat(rows, dim=0).float()

    def generate_token(self, batch: LoopBatch):
        prefill = batch.prefilling
        scores = self._logits(batch)
        lengths = [len(x) for x in batch.all_input_ids]
        input_ids = torch.zeros((len(batch), max(lengths)), dtype=torch.int64)
        for i, row in enumerate(batch.all_input_ids):
            input_ids[i, : len(row)] = torch.tensor(row)
        verified = batch.speculative_ids
        next_ids, _, _, accepted_ids, speculative_ids = batch.next_token_chooser(
            input_ids, scores, self.speculate, verified, None
        )
        counts = accepted_ids.tolist()
        ids = next_ids.tolist()
        out, done, pos = {}, set(), 0
        for i, req in enumerate(batch.requests):
            acc = ids[pos : pos + counts[i]]
            pos += counts[i]
            if not prefill and verified is not None:
                self.decode_rows += 1
                self.decode_tokens += len(acc)
            room = req.max_new_tokens - len(batch.generated[i])
            acc = acc[:room]  # TGI drops tokens past the stop
            batch.generated[i].extend(acc)
            out[req.id] = acc
            n = lengths[i]
            batch.all_input_ids[i].extend(acc)
            # KV now valid for the old committed tokens plus the accepted drafts
            _crop(batch.caches[i], n if prefill else n - 1 + counts[i])
            if len(batch.generated[i]) >= req.max_new_tokens:
                done.add(req.id)
        batch.prefilling = False
        batch.speculative_ids = speculative_ids
        if len(done) == len(batch):
            return out, None, counts
        return out, batch, counts

    def mean_accepted(self) -> float:
        return self.decode_tokens / self.decode_rows if self.decode_rows else 1.0


def serve(lm: LoopLM, requests: list[Request], arrive_at: dict[int, int] | None = None) -> dict[int, list[int]]:
    """Run requests to completion as TGI's router does: each arriving group is prefilled as
    its own batch, then concatenated into the running batch; finished requests are filtered
    out. ``arrive_at``: request id -> decode step at which it arrives (default 0)."""
    arrive_at = arrive_at or {}
    pending = sorted(requests, key=lambda r: arrive_at.get(r.id, 0))
    outputs: dict[int, list[int]] = {r.id: [] for r in requests}
    running: LoopBatch | None = None
    step = 0
    while pending or running is not None:
        group = [r for r in pending if arrive_at.get(r.id, 0) <= step]
        pending = [r for r in pending if r not in group]
        if group:
            gens, new, _ = lm.generate_token(LoopBatch.from_requests(group))
            for rid, toks in gens.items():
                outputs[rid].extend(toks)
            new = _drop_finished(new, outputs, requests)
            if new is not None:
                running = new if running is None else LoopBatch.concatenate([running, new])
        if running is not None:
            gens, running, _ = lm.generate_token(running)
            for rid, toks in gens.items():
                outputs[rid].extend(toks)
            running = _drop_finished(running, outputs, requests)
        step += 1
    return outputs


def _drop_finished(batch, outputs, requests):
    if batch is None:
        return None
    limit = {r.id: r.max_new_tokens for r in requests}
    keep = [r.id for r in batch.requests if len(outputs[r.id]) < limit[r.id]]
    if not keep:
        return None
    if len(keep) < len(batch):
        batch = batch.filter(keep)
    return batch
