"""The speculative worker SGLang instantiates for a specplug algorithm (docs/sglang.md).

SGLang's own ``NGRAMWorker`` (0.5.23; the code used is pinned in :mod:`specplug.patches.sglang`,
checked at start-up) with the n-gram corpus swapped for a
:class:`~specplug.drafters.session.DraftSession`. SGLang keeps building positions and tree links
from the mask, running the target, verifying (``eagle_sample``) and moving the accepted KV; the
worker overrides ``_prepare_draft_tokens`` (one batched ``session.propose``, packed at the step's
width), ``_update_ngram_corpus`` (a no-op) and the lifecycle hooks (``note_request_finished``,
``clear_cache_pool``, the corpus shim's ``erase_match_state``), and wraps
``forward_batch_generation``: one small device-to-host copy of the verification feeds
``session.observe``. Widths: under a budget policy or without CUDA graphs the trees are drafted
before SGLang sizes the step, which then runs at the widest tree (``widths.py`` re-views the
preallocated buffers); else at the launch width. No overlap scheduling: the drafter must see
step t's result before proposing step t+1.
"""

from __future__ import annotations

import logging

from sglang.srt.speculative.base_spec_worker import BaseSpecWorker
from sglang.srt.speculative.ngram_worker import NGRAMWorker

from specplug.drafters import registry
from specplug.drafters.session import DraftSession, Step
from specplug.patches.sglang import check_worker

from .bridge import observe_verified, request_view, verify_inputs
from .config import budget_policy_from_env, digest_log, options_from_env
from .feedback import device_feedback
from .widths import VIEW_LISTS, relayout, views_at

logger = logging.getLogger(__name__)

__all__ = ["SpecplugWorker"]


class _CorpusShim:
    """Stands where NGRAMWorker keeps its corpus; forwards lifecycle signals to the session."""

    def __init__(self, session: DraftSession):
        self.session = session

    def synchronize(self) -> None:
        pass

    def batch_put(self, batch_tokens) -> None:
        pass

    def erase_match_state(self, rids) -> None:
        for rid in rids:
            self.session.finish(rid)

    def reset(self) -> None:
        self.session.reset()


class SpecplugWorker(NGRAMWorker):
    def __init__(self, server_args, gpu_id: int, nccl_port: int, target_worker):
        from sglang.srt.runtime_context import get_device, get_parallel, get_schedule, get_spec

        check_worker()  # SGLang's version and the NGRAMWorker code this class relies on
        BaseSpecWorker.__init__(self)  # NGRAMWorker.__init__ would build the n-gram corpus
        spec_cfg = get_spec()
        self.server_args = server_args
        self.enable_overlap = not get_schedule().disable_overlap_schedule
        if self.enable_overlap:
            raise RuntimeError("specplug algorithms need --disable-overlap-schedule")
        self._target_worker = target_worker
        self.model_runner = target_worker.model_runner
        self.page_size = get_schedule().page_size
        self.draft_token_num = self.launch_width = int(spec_cfg.speculative_num_draft_tokens)
        self.speculative_num_draft_tokens = self.max_trie_depth = self.draft_token_num
        self.topk = spec_cfg.speculative_eagle_topk
        self.speculative_num_steps = spec_cfg.speculative_num_steps
        self.device = get_device().device
        self.adaptive_controller = None
        self._prev_decode_rids = set()
        self.grammar_tree_host = None

        spec = registry.get(spec_cfg.speculative_algorithm)
        vocab = int(self.model_runner.model_config.vocab_size)
        drafter = registry.create(spec.name, vocab, options_from_env(spec.name))
        self.session = DraftSession(
            drafter,
            vocab,
            policy=budget_policy_from_env(),
            engine="SGLang",
            runners={"early_exit": self._early_exit_runner},
        )
        self.runner = self.session.runner  # the model interface of DEL / EARLY_EXIT, else None
        # draft before SGLang sizes the step and run it at the widest tree: under the budget policy, and
        # without CUDA graphs (nothing gained by padding; a step where nothing is drafted verifies the roots)
        self.tight = (
            self.session.policy is not None
            or bool(getattr(server_args, "disable_cuda_graph", False))
            or str(self.device) == "cpu"
        )
        self._staged: Step | None = None  # drafted early (tight widths), verified this step
        self._step: Step | None = None  # the step being verified
        self._launch_views: dict | None = None
        self.ngram_corpus = _CorpusShim(self.session)
        self.algorithm = spec.name
        self._digest = digest_log(spec.engine_name, self.launch_width, get_parallel())  # SPECPLUG_DIGEST_DIR
        logger.info(
            "specplug: %s drafting %d-node trees (vocab %d, target top-%d feedback)",
            spec.engine_name,
            self.draft_token_num,
            vocab,
            self.session.topk,
        )

    def _early_exit_runner(self):
        from .early_exit import SglangEarlyExitRunner

        return SglangEarlyExitRunner(self.model_runner, self.launch_width)

    # ------------------------------------------------------------------ NGRAM hooks
    def clear_cache_pool(self):
        self.session.reset()
        self._prev_decode_rids = set()

    def _no_external_corpus(self, *args):
        raise ValueError(
            f"external corpora are an NGRAM feature; --speculative-algorithm "
            f"{self.algorithm.upper()} does not load them"
        )

    add_external_corpus = commit_corpus_load = remove_external_corpus = _no_external_corpus

    def list_external_corpora(self):
        return {}

    def _propose(self, batch) -> Step:
        if self.runner is not None:
            self.runner.batch = batch  # draft steps run on this batch's KV slots
        try:
            step = self.session.propose([request_view(req) for req in batch.reqs], self.launch_width)
            if self._digest is not None:
                self._digest.update(step.trees)
            return step
        finally:
            if self.runner is not None:
                self.runner.batch = None

    def _prepare_draft_tokens(self, batch):
        step, self._staged = self._staged, None
        self._step = step = step or self._propose(batch)
        if self.runner is not None:  # shadow tokens asked for: keep those layers in the verify forward
            self.runner.arm_verify()
        self.prev_token_ids, self.prev_accept_lens = [], [0] * len(batch.reqs)
        return verify_inputs(step, self.draft_token_num)  # at the width this step runs at

    def _use_width(self, width: int) -> None:
        """Run the next verify step at ``width`` nodes per request (<= the launch width)."""
        if width == self.draft_token_num:
            return
        if self._launch_views is None:
            self._launch_views = {name: getattr(self, name) for name in VIEW_LISTS}
        views = self._launch_views if width == self.launch_width else views_at(self, width)
        for name, v in views.items():
            setattr(self, name, v)
        self.draft_token_num = self.speculative_num_draft_tokens = int(width)

    def _update_ngram_corpus(self, batch):
        pass

    def note_request_finished(self, *, rid, natural_stop):
        self.session.finish(rid)
        if self.runner is not None:
            self.runner.forget(rid)

    def forward_batch_generation(self, batch, on_publish=None, pp_proxy_tensors=None):
        verifying = batch.forward_mode.is_decode() and bool(batch.reqs)
        if verifying and self.tight:  # draft first: the step's width is known before SGLang sizes it
            self._staged = self._propose(batch)
            self._use_width(self._staged.width)
        if self.runner is not None and batch.forward_mode.is_extend() and bool(batch.reqs):
            self.runner.arm_prefill(self.session.drafter)
        try:
            try:
                result = super().forward_batch_generation(
                    batch, on_publish=on_publish, pp_proxy_tensors=pp_proxy_tensors
                )
            finally:
                if self.runner is not None:
                    self.runner.disarm_step()
            if self.runner is not None:  # DEL's prompt seeds and shadow tokens
                self.runner.keep_step(batch, result, self._step, self.draft_token_num)
            if verifying:
                self._observe(batch, result)
        finally:
            self._staged = self._step = None
            self._use_width(self.launch_width)
        return result

    def _observe(self, batch, result) -> None:
        s, step, nxt = self.session, self._step, result.next_draft_input
        bs, width = len(batch.reqs), self.draft_token_num
        observe_verified(
            s,
            step.rids,
            *device_feedback(
                result.logits_output.next_token_logits,
                nxt.accept_tokens,
                nxt.accept_lens,
                bs,
                width,
                s.topk,
                s.topk_probs,
            ),
        )
        if width != self.launch_width:
            relayout(nxt, bs, width, self.launch_width)
        logger.debug("specplug: %s%s", s.stats, "" if self.runner is None else f", early exit {self.runner.stats}")
