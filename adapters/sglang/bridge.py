"""SGLang's batch rows to and from the drafting session, without SGLang imports.

The step loop (lifecycle, batched propose, tree checks, budget cut, feedback) is
:class:`specplug.drafters.session.DraftSession`; per decode step the worker only translates:

- :func:`request_view`: an SGLang ``Req`` as the session sees it (committed tokens are the
  unpadded prompt plus ``output_ids``; the last one is the next root; its sampling settings);
- :func:`verify_inputs`: the step's trees packed at the width the step runs at, as SGLang's
  NGRAM path takes them: draft tokens [B * W] and ancestor-or-self mask [B * W * W]
  (padding nodes see only themselves and are never accepted);
- :func:`observe_verified`: what verification committed (``device_feedback``'s host
  arrays: tokens [B, W] and counts [B], top-k [B, W, k]) as the session's flat feedback.
"""

from __future__ import annotations

import numpy as np

from specplug.drafters.sampling import GREEDY, SamplingParams
from specplug.drafters.session import DraftSession, RequestView, Step, flat_rows

__all__ = ["request_view", "verify_inputs", "observe_verified"]


#: SGLang's top_k for "no top-k" (sampling_params.TOP_K_ALL)
_TOP_K_ALL = 1 << 30


def sampling_of(params) -> SamplingParams:
    """A request's SGLang ``SamplingParams`` (normalised: greedy is top_k 1, no top-k is
    1 << 30 or -1) as the drafters' sampling settings."""
    if params is None:
        return GREEDY
    top_k = int(getattr(params, "top_k", -1))
    temperature = float(getattr(params, "temperature", 0.0))
    if top_k == 1 or temperature <= 0.0:
        return GREEDY
    top_p = float(getattr(params, "top_p", 1.0))
    return SamplingParams(temperature, 0 if top_k <= 0 or top_k >= _TOP_K_ALL else top_k, top_p)


def request_view(req) -> RequestView:
    prompt, out = req.origin_input_ids_unpadded, req.output_ids
    last = int(out[-1]) if len(out) else int(prompt[-1])
    return RequestView(
        req.rid,
        len(prompt) + len(out),
        last,
        lambda: list(prompt) + list(out),
        sampling_of(getattr(req, "sampling_params", None)),
    )


def verify_inputs(step: Step, width: int) -> tuple[np.ndarray, np.ndarray]:
    packed = step.pack(width)
    return packed.tokens.astype(np.int64).reshape(-1), packed.mask.reshape(-1)


def observe_verified(
    session: DraftSession,
    rids,
    tokens: np.ndarray,
    counts: np.ndarray,
    topk: np.ndarray | None = None,
    probs: np.ndarray | None = None,
) -> float:
    """Row b committed ``tokens[b, :counts[b]]`` (accepted drafts, then the bonus)."""
    return session.observe(rids, flat_rows(tokens, counts), counts, topk, probs)
