"""SGLang's early-exit runner (``specplug.drafters.early_exit.EarlyExitRunner``), SGLang 0.5.23.

Supported model classes: SGLang's ``LlamaForCausalLM`` (Llama, SmolLM2, ...) and
``Qwen2ForCausalLM``, tensor- and pipeline-parallel size 1, eager forwards
(``--disable-cuda-graph``: a replayed graph runs all layers and no Python hook).

Nothing of SGLang's code is replaced. The runner uses two instance attributes that the
decoder's own ``forward`` (``LlamaModel.forward`` / ``Qwen2Model.forward``, pinned by source
fingerprint in :mod:`specplug.patches.sglang`; a changed forward is refused) already honours:

* ``end_layer``: the decoder loop runs ``range(start_layer, end_layer)`` and then the final
  norm; ``LlamaForCausalLM.forward`` then applies the logits processor with ``lm_head``.
  A draft step sets it to E for the duration of one forward, so the model's own embedding,
  rotary embeddings, attention backend, residual stream and final norm apply.
* ``layers_to_capture``: the loop passes a capture callback to layer i's attention entry,
  which keeps the full residual stream entering layer i (= the hidden state after i
  layers). With a non-empty list the decoder returns ``(hidden, aux)``; a PyTorch forward
  hook on the decoder module takes ``aux`` and hands the causal LM the hidden states alone.
  Used for requests of a draft step whose exit layer is below the step's deepest one, and
  for shadow tokens during the verification.

Draft steps share the request's KV cache: draft offset k of a request is a DECODE forward of
one token per request of the batch at position ``seq_len + k``, writing KV (layers < E) into
``req_to_token[req, seq_len + k]``, the slot SGLang's NGRAM verification of the same step
writes chain node k into (``assign_extend_cache_locs`` over ``seq_len .. seq_len + W - 1``,
allocated by the scheduler before drafting). The verification recomputes all layers there,
and attention of a verification reads only committed positions and the tree, so the draft
KV never reaches the output (lossless). Requests of the batch that do not draft at a step
ride along with a dummy token (their slot is overwritten by their verification too).

Shadow tokens: DEL's drafters propose chains, so the committed positions of a verification
are chain nodes ``0 .. accept_len - 1`` (row-major at width W). The runner captures the
requested layers' states over the verify batch and keeps those rows; final norm + LM head
run when the drafter reads them. The prompt seed (``request_prompt_shadow``) is taken from
the prefill forward (extend batch) the same way, over the last n prompt positions of each
new request, with the final layer's prediction from the decoder's final normed output.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import torch

from specplug.drafters.early_exit import ShadowTokens, shadow_layers
from specplug.drafters.errors import ConfigError
from specplug.patches.sglang import DECODER_PINS, check_decoder

__all__ = [
    "SglangEarlyExitRunner",
    "SUPPORTED_MODELS",
    "check_architectures",
    "check_sglang_model",
    "validate_server_args",
]

logger = logging.getLogger(__name__)

#: SGLang model classes the runner drives -> (module, decoder class); their decoders' forward is pinned
SUPPORTED_MODELS = {name: (pin.module, pin.target.split(".")[0]) for name, pin in DECODER_PINS.items()}
_SUPPORTED_TEXT = ", ".join(SUPPORTED_MODELS)


def check_architectures(architectures, algorithm: str) -> None:
    """Server-args check from the checkpoint's ``config.json`` architectures."""
    archs = list(architectures or [])
    if archs and not any(a in SUPPORTED_MODELS for a in archs):
        raise ConfigError(
            f"--speculative-algorithm {algorithm} drafts with the target's own first layers, "
            f"which specplug implements on SGLang for the model classes {_SUPPORTED_TEXT}; "
            f"this model is {', '.join(archs)}: use another algorithm, or the embedded engine "
            f"(docs/del.md)"
        )


def _model_architectures(server_args) -> list[str]:
    """``architectures`` of the checkpoint's config.json (a local directory), else []."""
    path = getattr(server_args, "model_path", None)
    cfg = os.path.join(str(path), "config.json") if path else ""
    if not cfg or not os.path.isfile(cfg):
        return []  # a hub id: the worker checks the loaded model class instead
    try:
        with open(cfg) as f:
            return list(json.load(f).get("architectures") or [])
    except (OSError, ValueError):
        return []


def validate_server_args(server_args, algorithm: str) -> None:
    """The runner's limits, refused at server-args time with the fix."""
    if int(getattr(server_args, "tp_size", 1) or 1) != 1:
        raise ConfigError(f"--speculative-algorithm {algorithm} (early-exit drafting) supports --tp-size 1 only")
    if not getattr(server_args, "disable_cuda_graph", False):
        raise ConfigError(
            f"--speculative-algorithm {algorithm} runs partial-layer forwards eagerly (a replayed "
            f"graph runs every layer): pass --disable-cuda-graph"
        )
    check_architectures(_model_architectures(server_args), algorithm)


def check_sglang_model(model):
    """The decoder module of a supported SGLang causal LM, or a ConfigError naming the supported ones."""
    name = type(model).__name__
    entry = SUPPORTED_MODELS.get(name)
    if entry is None or type(model).__module__ != entry[0]:
        raise ConfigError(
            f"early-exit drafting (DEL, EARLY_EXIT) on SGLang supports the model classes "
            f"{_SUPPORTED_TEXT}; the loaded model is {type(model).__module__}.{name}: use another "
            f"algorithm, or the embedded engine (docs/del.md)"
        )
    inner = getattr(model, "model", None)
    if type(inner).__name__ != entry[1]:
        raise ConfigError(f"early-exit drafting: {name}.model is {type(inner).__name__}, expected {entry[1]}")
    check_decoder(name)  # PatchError when the decoder loop is not the code the runner steers
    if int(getattr(inner, "start_layer", 0)) != 0 or int(inner.end_layer) != len(inner.layers):
        raise ConfigError("early-exit drafting on SGLang needs the whole model on one rank (--pp-size 1)")
    return inner


class _Capture:
    __slots__ = ("capture", "final", "saved", "aux", "hidden")

    def __init__(self, capture, final, saved):
        self.capture, self.final, self.saved = capture, final, saved
        self.aux, self.hidden = None, None

    def check(self) -> None:
        if self.capture and (self.aux is None or len(self.aux) != len(self.capture)):
            raise RuntimeError(
                f"early-exit runner: captured {0 if self.aux is None else len(self.aux)} hidden "
                f"states, asked for {len(self.capture)}"
            )


class SglangEarlyExitRunner:
    """One per :class:`~specplug.adapters.sglang.worker.SpecplugWorker`; ``batch`` is the
    ScheduleBatch being drafted for (set by the worker around ``DraftSession.propose``).
    The worker calls :meth:`arm_prefill` / :meth:`arm_verify` before a target forward,
    :meth:`disarm_step` after it, then :meth:`keep_step`."""

    #: prompt seeds kept for requests not started yet, oldest dropped beyond this
    PROMPT_CAP = 256

    def __init__(self, model_runner, launch_width: int):
        self.model_runner = model_runner
        self.model = model_runner.model
        self.inner = check_sglang_model(self.model)
        tp = int(getattr(model_runner, "tp_size", 1) or 1)
        if tp != 1:
            raise ConfigError(
                "early-exit drafting on SGLang supports --tp-size 1 only (the runner applies the LM head itself)"
            )
        self.num_layers = len(self.inner.layers)
        self.vocab = int(model_runner.model_config.vocab_size)
        self.launch_width = int(launch_width)
        self.batch = None
        self._rec: _Capture | None = None  # what the decoder hook records now
        self._want: dict = {}  # rid -> layers for the next verification
        self._kept: dict = {}  # rid -> (layers, hidden [K, P, H], final [P])
        self._prompt_want = None  # (layers, n)
        self._prompt_kept: dict = {}  # rid -> (layers, hidden [K, p, H], final ids [p])
        self._step_rec: tuple | None = None  # (prefill?, _Capture) armed around this step's target forward
        self._hook = self.inner.register_forward_hook(self._on_decoder_output)
        #: draft forwards run, shadow positions kept at verifications, prompt seeds kept
        self.stats = {"draft_forwards": 0, "shadow_positions": 0, "prompt_seeds": 0}

    # ------------------------------------------------------------------ the worker's step hooks
    def arm_prefill(self, drafter) -> None:
        """Before a prefill forward: the drafter is bound again (DEL asks for the prompt seed
        while its statistics are cold) and the layers it wants are captured."""
        self.set_prompt_want(None)
        drafter.bind(self)
        capture = self.prefill_capture()
        self._step_rec = (True, self.arm(capture, final=True)) if capture else None

    def arm_verify(self) -> None:
        """Before a verify forward (after drafting): capture the layers shadow tokens were asked of."""
        capture = self.verify_capture()
        self._step_rec = (False, self.arm(capture)) if capture else None

    def disarm_step(self) -> None:
        if self._step_rec is not None:
            self.disarm(self._step_rec[1])

    def keep_step(self, batch, result, step, width: int) -> None:
        """After the forward: keep the prompt seeds or shadow tokens captured (a failure costs
        DEL's probe, logged, never the batch)."""
        armed, self._step_rec = self._step_rec, None
        if armed is None:
            return
        prefill, rec = armed
        try:
            if prefill:
                self.keep_prompt([req.rid for req in batch.reqs], batch.extend_lens, rec)
            else:
                rec.check()
                nxt = result.next_draft_input
                self.keep_verified(
                    step.rids, step.trees, rec.aux, rec.capture, nxt.accept_tokens, nxt.accept_lens, width
                )
        except Exception as e:  # noqa: BLE001
            logger.warning("specplug: early-exit shadow tokens not kept this step (%s: %s)", type(e).__name__, e)

    # ------------------------------------------------------------------ mechanics
    def _on_decoder_output(self, module, args, output):
        rec = self._rec
        if rec is None:
            return output
        if isinstance(output, tuple) and len(output) == 2 and rec.capture:
            output, aux = output
            rec.aux = list(aux)
        if rec.final:
            rec.hidden = output
        return output

    def arm(self, capture=(), end_layer: int | None = None, final: bool = False) -> _Capture:
        """Until :meth:`disarm`: the decoder loop ends at ``end_layer`` (None: all layers) and
        the states after each layer in ``capture`` (and with ``final`` the decoder's normed
        output) are recorded in the returned object."""
        inner = self.inner
        rec = _Capture(sorted(int(c) for c in capture), final, (inner.end_layer, inner.layers_to_capture, self._rec))
        if end_layer is not None:
            inner.end_layer = int(end_layer)
        inner.layers_to_capture = list(rec.capture)
        self._rec = rec
        return rec

    def disarm(self, rec: _Capture) -> None:
        self.inner.end_layer, self.inner.layers_to_capture, self._rec = rec.saved

    def _forward(self, fb, end_layer: int | None = None, capture=()):
        """``model_runner.forward`` with the loop ended at ``end_layer`` and ``capture`` layers kept."""
        rec = self.arm(capture, end_layer)
        try:
            out = self.model_runner.forward(fb).logits_output
        finally:
            self.disarm(rec)
        rec.check()
        return out, rec.aux

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        w = self.model.lm_head.weight
        return torch.nn.functional.linear(hidden.to(w.dtype), w)[..., : self.vocab].float()

    def _norm(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.inner.norm(hidden.contiguous())
        return out[0] if isinstance(out, tuple) else out

    @staticmethod
    def _top(logits: torch.Tensor):
        top, ids = logits.max(dim=-1)
        return ids, torch.exp(top - torch.logsumexp(logits, dim=-1))

    def cost_profile(self) -> tuple[float, np.ndarray]:
        """Compute shares by parameter count (one-token forward: weights dominate)."""
        shares = np.array([sum(p.numel() for p in layer.parameters()) for layer in self.inner.layers], np.float64)
        head = float(self.model.lm_head.weight.numel())
        total = head + shares.sum()
        return head / total, shares / total

    def _rows(self, rids) -> np.ndarray:
        where = {req.rid: i for i, req in enumerate(self.batch.reqs)}
        try:
            return np.array([where[r] for r in rids], np.int64)
        except KeyError as e:
            raise ConfigError(f"early-exit runner: request {e.args[0]!r} is not in the running batch") from None

    # ------------------------------------------------------------------ drafting
    _SWAPPED = (
        "forward_mode",
        "input_ids",
        "seq_lens",
        "seq_lens_cpu",
        "orig_seq_lens",
        "seq_lens_sum",
        "out_cache_loc",
        "spec_info",
        "return_logprob",
    )

    def _decode_batch(self, ids: torch.Tensor, step: int):
        """A DECODE ForwardBatch of the whole batch at draft offset ``step``."""
        from sglang.srt.model_executor.forward_batch_info import CaptureHiddenMode, ForwardBatch, ForwardMode

        b = self.batch
        saved = {f: getattr(b, f) for f in self._SWAPPED}
        seq = b.seq_lens
        try:
            b.forward_mode = ForwardMode.DECODE
            b.input_ids = ids
            b.seq_lens = seq + (step + 1)
            if saved["seq_lens_cpu"] is not None:
                b.seq_lens_cpu = saved["seq_lens_cpu"] + (step + 1)
            if saved["orig_seq_lens"] is not None:
                b.orig_seq_lens = saved["orig_seq_lens"] + (step + 1)
            b.seq_lens_sum = None
            rtt = b.req_to_token_pool.req_to_token
            b.out_cache_loc = rtt[b.req_pool_indices, (seq + step).to(torch.int64)].to(torch.int64)
            b.spec_info = None
            b.return_logprob = False
            return ForwardBatch.init_new(
                b, self.model_runner, capture_hidden_mode=CaptureHiddenMode.NULL, return_hidden_states_before_norm=False
            )
        finally:
            for f, v in saved.items():
                setattr(b, f, v)

    def draft(self, rids, tokens, step, exit_layers):
        if self.batch is None:
            raise RuntimeError("early-exit runner: draft() outside a decode step")
        rows = self._rows(rids)
        exits = np.asarray(exit_layers, np.int64)
        L = self.num_layers
        if exits.shape[0] != rows.shape[0] or np.any((exits < 1) | (exits >= L)):
            raise ConfigError(f"early-exit runner: exit layers must lie in 1..{L - 1}, got {exits.tolist()}")
        if not 0 <= int(step) < self.launch_width - 1:
            raise ConfigError(
                f"early-exit runner: draft offset {step} needs a verify width above {step + 1} "
                f"(--speculative-num-draft-tokens {self.launch_width})"
            )
        b = self.batch
        dev = b.seq_lens.device
        ids = np.zeros(len(b.reqs), np.int64)
        ids[rows] = np.asarray(tokens, np.int64)
        fb = self._decode_batch(torch.from_numpy(ids).to(dev), int(step))
        e_max = int(exits.max())
        lower = sorted({int(e) for e in exits if e != e_max})
        out, aux = self._forward(fb, end_layer=e_max, capture=lower)
        self.stats["draft_forwards"] += 1
        rows_t = torch.from_numpy(rows).to(dev)
        logits = out.next_token_logits[rows_t, : self.vocab].float()
        if lower:
            logits = logits.clone()
            for k, e in enumerate(lower):
                sel = np.flatnonzero(exits == e)
                logits[torch.from_numpy(sel).to(dev)] = self._head(self._norm(aux[k][rows_t[sel]]))
        ids_t, probs = self._top(logits)
        return ids_t.cpu().numpy(), probs.cpu().numpy().astype(np.float32)

    # ------------------------------------------------------------------ shadow tokens at verification
    def request_shadow(self, rid, layers) -> None:
        self._want[rid] = shadow_layers(layers, self.num_layers)

    def verify_capture(self) -> list[int]:
        """Layers to capture during this step's verification (the worker arms them)."""
        return sorted({int(x) for v in self._want.values() for x in v})

    def keep_verified(self, rids, trees, aux, capture, accept_tokens, accept_lens, width: int) -> None:
        """After a verification with ``capture`` layers kept in ``aux`` ([B*W, H] each):
        keep the committed positions' states of the requests that asked."""
        want, self._want = self._want, {}
        self._kept = {}  # what the last step's observe did not read is stale
        if not want or aux is None:
            return
        lens = accept_lens.cpu().numpy().astype(np.int64)
        toks = accept_tokens.reshape(len(rids), -1)
        index = {l: k for k, l in enumerate(capture)}
        for i, rid in enumerate(rids):
            layers = want.get(rid)
            if layers is None:
                continue
            tree = trees[i]
            if np.any(np.asarray(tree.parents)[1:] != np.arange(len(tree) - 1)):
                continue  # not a chain: committed nodes are not 0..n-1 (early-exit drafters chain)
            n = int(lens[i])
            nodes = torch.arange(i * width, i * width + n, device=aux[0].device)
            hid = torch.stack([aux[index[int(l)]][nodes] for l in layers])  # [K, P, H]
            self._kept[rid] = (layers, hid, toks[i, :n].to(torch.int64))
            self.stats["shadow_positions"] += n

    def shadow(self, rid) -> ShadowTokens | None:
        return self._shadow_tokens(self._kept.pop(rid, None))

    def _shadow_tokens(self, kept) -> ShadowTokens | None:
        """Final norm + LM head on kept per-layer states (layers, hidden [K, P, H], final [P])."""
        if kept is None:
            return None
        layers, hid, final = kept
        with torch.inference_mode():
            ids, probs = self._top(self._head(self._norm(hid.reshape(-1, hid.shape[-1]))))
        k, p = hid.shape[0], hid.shape[1]
        return ShadowTokens(
            layers, ids.reshape(k, p).cpu().numpy(), probs.reshape(k, p).cpu().numpy(), final.cpu().numpy()
        )

    # ------------------------------------------------------------------ prompt seed at prefill
    def request_prompt_shadow(self, layers, n: int) -> None:
        layers = np.asarray(layers, np.int64)
        if layers.shape[0] and int(n) > 0:
            self._prompt_want = (layers, int(n))

    def set_prompt_want(self, want) -> None:
        self._prompt_want = want

    def prefill_capture(self) -> list[int]:
        return [] if self._prompt_want is None else sorted(int(x) for x in self._prompt_want[0])

    def keep_prompt(self, rids, extend_lens, rec: _Capture) -> None:
        """After a prefill (extend) forward armed with :meth:`prefill_capture` and ``final``:
        keep the last n prompt positions of each request (packed row-major by ``extend_lens``)."""
        if self._prompt_want is None or rec.hidden is None:
            return
        rec.check()
        layers, n = self._prompt_want
        index = {l: k for k, l in enumerate(rec.capture)}
        start = 0
        for rid, length in zip(rids, extend_lens):
            length = int(length)
            a, z = max(start, start + length - n), start + length
            if z > a:
                hid = torch.stack([rec.aux[index[int(l)]][a:z] for l in layers])
                with torch.inference_mode():
                    fin = self._head(rec.hidden[a:z]).argmax(dim=-1)
                self._prompt_kept[rid] = (layers, hid, fin)
                self.stats["prompt_seeds"] += 1
                while len(self._prompt_kept) > self.PROMPT_CAP:  # requests that never started
                    self._prompt_kept.pop(next(iter(self._prompt_kept)))
            start += length

    def prompt_shadow(self, rid) -> ShadowTokens | None:
        return self._shadow_tokens(self._prompt_kept.pop(rid, None))

    def forget(self, rid) -> None:
        self._want.pop(rid, None)
        self._kept.pop(rid, None)
        self._prompt_kept.pop(rid, None)

    def close(self) -> None:
        self._hook.remove()
        self._step_rec = None
        self._want.clear()
        self._kept.clear()
        self._prompt_kept.clear()
