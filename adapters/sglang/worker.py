"""The speculative worker SGLang instantiates for a specplug algorithm.

It is SGLang's own ``NGRAMWorker`` (sglang 0.5.23) with the n-gram corpus swapped for
a specplug drafter: SGLang keeps building positions and tree links from the mask,
running the target on the tree, verifying it (``eagle_sample``), and moving the
accepted KV. The NGRAMWorker points used, all pinned to the supported version:

- ``_prepare_draft_tokens(batch) -> (draft tokens [B*W], mask [B*W*W])``: from the
  drafter (one batched ``propose``);
- ``_update_ngram_corpus(batch)``: no corpus, a no-op;
- ``self.ngram_corpus``: a shim whose ``erase_match_state(rids)`` (NGRAM's "left the
  decode batch" signal) finishes those requests in the drafter;
- ``forward_batch_generation``: wrapped; after a verify step the committed tokens,
  their counts and (for drafters that learn from logits) the target's top-k ids at
  every tree node come back to the host in one small copy and feed ``observe``.

``note_request_finished`` (SGLang's finished/aborted hook) finishes the request too.

Load-aware budgets (``SPECPLUG_SGLANG_LOAD_AWARE``, see docs/sglang.md): the trees are
drafted before SGLang's step, cut by the budget policy, and the step runs at the width
of the widest cut tree (<= the launch width ``--speculative-num-draft-tokens``; 1 means
plain decoding through the verify path). SGLang 0.5.23 keys everything of a verify
step on the worker's ``draft_token_num`` and on the result's row stride, and falls back
from CUDA graphs to eager for widths it did not capture; the worker swaps its
preallocated buffers' views to the step's width and restores the launch width after.
Overlap scheduling is not supported (the drafter must see step t's result before
proposing step t+1): the plugin's ``validate_server_args`` asks for
``--disable-overlap-schedule``.
"""
from __future__ import annotations

import logging

from sglang.srt.speculative.base_spec_worker import BaseSpecWorker
from sglang.srt.speculative.ngram_worker import NGRAMWorker

from specplug.drafters import registry

from .bridge import DraftBridge, PackedStep, ReqView
from .feedback import device_feedback
from .widths import VIEW_LISTS, RowsOf, relayout

logger = logging.getLogger(__name__)

__all__ = ["SpecplugWorker"]


class _CorpusShim:
    """Stands where NGRAMWorker keeps its corpus; forwards lifecycle signals to the bridge."""

    def __init__(self, bridge: DraftBridge):
        self.bridge = bridge

    def synchronize(self) -> None:
        pass

    def batch_put(self, batch_tokens) -> None:
        pass

    def erase_match_state(self, rids) -> None:
        for rid in rids:
            self.bridge.finish(rid)

    def reset(self) -> None:
        self.bridge.reset()


def _req_view(req) -> ReqView:
    prompt, out = req.origin_input_ids_unpadded, req.output_ids
    last = int(out[-1]) if len(out) else int(prompt[-1])
    return ReqView(rid=req.rid, length=len(prompt) + len(out), last_token=last,
                   context=lambda: list(prompt) + list(out))


class SpecplugWorker(NGRAMWorker):
    def __init__(self, server_args, gpu_id: int, nccl_port: int, target_worker):
        from sglang.srt.runtime_context import get_device, get_schedule, get_spec

        from specplug.plugins.sglang import budget_policy_from_env, options_from_env

        BaseSpecWorker.__init__(self)  # NGRAMWorker.__init__ would build the n-gram corpus
        spec_cfg = get_spec()
        self.server_args = server_args
        self.enable_overlap = not get_schedule().disable_overlap_schedule
        if self.enable_overlap:
            raise RuntimeError("specplug algorithms need --disable-overlap-schedule")
        self._target_worker = target_worker
        self.model_runner = target_worker.model_runner
        self.page_size = get_schedule().page_size
        self.draft_token_num = int(spec_cfg.speculative_num_draft_tokens)
        self.speculative_num_draft_tokens = self.draft_token_num
        self.max_trie_depth = self.draft_token_num
        self.topk = spec_cfg.speculative_eagle_topk
        self.speculative_num_steps = spec_cfg.speculative_num_steps
        self.device = get_device().device
        self.adaptive_controller = None
        self._prev_decode_rids = set()
        self.grammar_tree_host = None

        spec = registry.get(spec_cfg.speculative_algorithm)
        vocab = int(self.model_runner.model_config.vocab_size)
        self.drafter = registry.create(spec.name, vocab, options_from_env(spec.name))
        self.launch_width = self.draft_token_num
        self._staged: PackedStep | None = None
        self._launch_views: dict | None = None
        self.bridge = DraftBridge(self.drafter, self.draft_token_num, vocab, policy=budget_policy_from_env())
        # without CUDA graphs nothing is gained by padding every tree to the launch width: verify
        # each step at its widest tree (a step where nothing is drafted verifies the roots alone)
        self.bridge.tight = bool(getattr(server_args, "disable_cuda_graph", False)) or str(self.device) == "cpu"
        self.runner = None          # the model interface of drafters with ``needs_runner`` (DEL, EARLY_EXIT)
        self._verify_rec = None
        need = getattr(self.drafter, "needs_runner", None)
        if need:
            if need != "early_exit":
                raise ValueError(f"specplug drafter {spec.name!r} needs a {need!r} runner, which the SGLang "
                                 f"adapter does not provide")
            from .early_exit import SglangEarlyExitRunner

            self.runner = SglangEarlyExitRunner(self.model_runner, self.draft_token_num)
            self.drafter.bind(self.runner)
        self.ngram_corpus = _CorpusShim(self.bridge)
        self.algorithm = spec.name
        logger.info("specplug: %s drafting %d-node trees (vocab %d, target top-%d feedback)",
                    spec.engine_name, self.draft_token_num, vocab, self.bridge.topk)

    # ------------------------------------------------------------------ NGRAM hooks
    def clear_cache_pool(self):
        self.bridge.reset()
        self._prev_decode_rids = set()

    def add_external_corpus(self, corpus_id, token_chunks):
        raise ValueError(f"external corpora are an NGRAM feature; --speculative-algorithm "
                         f"{self.algorithm.upper()} does not load them")

    def commit_corpus_load(self, corpus_id, loaded_token_count):
        self.add_external_corpus(corpus_id, None)

    def remove_external_corpus(self, corpus_id):
        self.add_external_corpus(corpus_id, None)

    def list_external_corpora(self):
        return {}

    def _prepare(self, batch) -> PackedStep:
        if self.runner is None:
            return self.bridge.prepare([_req_view(req) for req in batch.reqs])
        self.runner.batch = batch        # draft steps run on this batch's KV slots
        try:
            return self.bridge.prepare([_req_view(req) for req in batch.reqs])
        finally:
            self.runner.batch = None

    def _prepare_draft_tokens(self, batch):
        step, self._staged = self._staged, None
        if step is None:
            step = self._prepare(batch)
        if self.runner is not None:      # shadow tokens asked for: keep those layers in the verify forward
            capture = self.runner.verify_capture()
            if capture:
                self._verify_rec = (step, self.runner.arm(capture))
        self.prev_token_ids, self.prev_accept_lens = [], [0] * len(batch.reqs)
        return step.tokens, step.mask

    def _use_width(self, width: int) -> None:
        """Run the next verify step at ``width`` nodes per request (<= the launch width)."""
        if width == self.draft_token_num:
            return
        if self._launch_views is None:
            self._launch_views = {name: getattr(self, name) for name in VIEW_LISTS}
        if width == self.launch_width:
            views = self._launch_views
        else:
            views = {"retrieve_indexes_batch": RowsOf(self.retrieve_indexes, width, width),
                     "retrieve_next_token_batch": RowsOf(self.retrieve_next_token, width, width),
                     "retrieve_next_sibling_batch": RowsOf(self.retrieve_next_sibling, width, width),
                     "positions_batch": RowsOf(self.positions, width),
                     "draft_tokens_batch": RowsOf(self.draft_tokens, width),
                     "tree_mask_batch": RowsOf(self.tree_mask, width * width)}
        for name, v in views.items():
            setattr(self, name, v)
        self.draft_token_num = self.speculative_num_draft_tokens = int(width)

    def _update_ngram_corpus(self, batch):
        pass

    def note_request_finished(self, *, rid, natural_stop):
        self.bridge.finish(rid)
        if self.runner is not None:
            self.runner.forget(rid)

    def forward_batch_generation(self, batch, on_publish=None, pp_proxy_tensors=None):
        verifying = batch.forward_mode.is_decode() and bool(batch.reqs)
        if verifying and (self.bridge.policy is not None or self.bridge.tight):
            # draft first: the step's width (budget policy, widest tree) is known before SGLang sizes it
            self._staged = self._prepare(batch)
            self._use_width(self._staged.width)
        prefill = None
        if self.runner is not None and batch.forward_mode.is_extend() and bool(batch.reqs):
            self.runner.set_prompt_want(None)
            self.drafter.bind(self.runner)      # asks for the prompt seed while its statistics are cold
            capture = self.runner.prefill_capture()
            if capture:
                prefill = self.runner.arm(capture, final=True)
        try:
            try:
                result = super().forward_batch_generation(batch, on_publish=on_publish,
                                                          pp_proxy_tensors=pp_proxy_tensors)
            finally:
                if prefill is not None:
                    self.runner.disarm(prefill)
                if self._verify_rec is not None:
                    self.runner.disarm(self._verify_rec[1])
            try:   # DEL's statistics: a failure here costs the probe, never the batch
                if prefill is not None:
                    self.runner.keep_prompt([req.rid for req in batch.reqs], batch.extend_lens, prefill)
                if verifying and self._verify_rec is not None:
                    step, rec = self._verify_rec
                    rec.check()
                    nxt = result.next_draft_input
                    self.runner.keep_verified(step.rids, step.trees, rec.aux, rec.capture, nxt.accept_tokens,
                                              nxt.accept_lens, self.draft_token_num)
            except Exception as e:  # noqa: BLE001
                logger.warning("specplug: early-exit shadow tokens not kept this step (%s: %s)",
                               type(e).__name__, e)
            if verifying:
                nxt = result.next_draft_input
                tokens, lens, *topk = device_feedback(
                    result.logits_output.next_token_logits, nxt.accept_tokens, nxt.accept_lens,
                    len(batch.reqs), self.draft_token_num, self.bridge.topk, self.bridge.topk_probs)
                self.bridge.feedback(tokens, lens, *topk)
                if self.draft_token_num != self.launch_width:
                    relayout(nxt, len(batch.reqs), self.draft_token_num, self.launch_width)
                logger.debug("specplug: %s, mean accepted %.3f%s", self.bridge.stats,
                             self.bridge.mean_accepted,
                             "" if self.runner is None else f", early exit {self.runner.stats}")
        finally:
            self._staged = None
            self._verify_rec = None
            self._use_width(self.launch_width)
        return result
