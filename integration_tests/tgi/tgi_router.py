"""TGI's router in miniature, in-process, over TGI's REAL Python model server.

It drives ``text_generation_server.server.TextGenerationService`` (a ``FlashCausalLM``
with TGI's flash Llama, on the CPU through the IPEX stand-in of ``ipex_cpu/``) with
``generate_pb2`` messages built as TGI's Rust router builds them
(``backends/v3/src/client/grpc_client.rs`` warm-up, ``queue.rs`` requests and block
allocation, ``backend.rs`` batching loop): ``Warmup``; then a continuous-batching loop in
which arrivals are prefilled as a new batch, the live batches are decoded together (the
server concatenates them), finished or cancelled requests are filtered out (``FilterBatch``,
or ``ClearCache(id)`` when none remains); ``ClearCache`` at the end. ``--speculate N`` is set
as the launcher sets it (``set_speculate`` before the model is built).

Import this module only in a process whose environment :func:`tgi_env` made (TGI reads
``ATTENTION``/``PREFIX_CACHING`` and picks its kernels at import).
"""

from __future__ import annotations

import asyncio
import math
import os
import pathlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

HERE = pathlib.Path(__file__).resolve().parent
STAND_IN = HERE / "ipex_cpu"


def tgi_env(server_src: str | os.PathLike, deps: str | os.PathLike, attention: str = "paged") -> dict[str, str]:
    """The environment of a process that runs TGI's server here: the IPEX stand-in, TGI's
    pinned dependencies and its server source ahead on ``PYTHONPATH``; the variables TGI's
    launcher sets (``ATTENTION``, ``PREFIX_CACHING``); no CUDA graphs."""
    env = dict(os.environ)
    env.pop("CUDA_GRAPHS", None)
    path = [str(STAND_IN), str(deps), str(server_src), str(HERE), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
    env.update(ATTENTION=attention, PREFIX_CACHING="0", PREFILL_CHUNKING="0", OMP_NUM_THREADS="1")
    return env


# ------------------------------------------------------------------ requests as the router builds them
@dataclass
class Req:
    """One client request: text in, greedy by default, arriving at a decode step."""

    id: int
    text: str
    max_new_tokens: int
    arrive: int = 0  # decode step of the arrival
    cancel_after: int | None = None  # the client drops it after this many tokens
    add_special_tokens: bool = True
    do_sample: bool = False
    seed: int = 0
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    top_k: int = 0
    stop: Sequence[str] = ()


@dataclass
class Served:
    """What the router saw of a served request."""

    tokens: list[int] = field(default_factory=list)
    finish: str | None = None  # "length", "eos_token", "stop_sequence", "cancelled"
    steps: int = 0  # generate_token calls that committed tokens to it


def parameters(r: Req):
    from text_generation_server.pb import generate_pb2

    return generate_pb2.NextTokenChooserParameters(
        temperature=r.temperature,
        top_k=r.top_k,
        top_p=1.0,
        typical_p=1.0,
        do_sample=r.do_sample,
        seed=r.seed,
        repetition_penalty=r.repetition_penalty,
        frequency_penalty=0.0,
        watermark=False,
        grammar="",
        grammar_type=generate_pb2.GRAMMAR_TYPE_NONE,
    )


class BlockAllocator:
    """The router's ``SimpleAllocator``: block 0 reserved, blocks handed out from the top."""

    def __init__(self, blocks: int, block_size: int):
        self.block_size = block_size
        self.free = list(range(1, blocks))

    def allocate(self, tokens: int) -> tuple[list[int], list[int]] | None:
        need = math.ceil(tokens / self.block_size)
        if need > len(self.free):
            return None
        blocks = self.free[len(self.free) - need :]
        del self.free[len(self.free) - need :]
        slots = [s for b in blocks for s in range(b * self.block_size, (b + 1) * self.block_size)][:tokens]
        return blocks, slots

    def release(self, blocks: list[int]) -> None:
        self.free.extend(blocks)


# ------------------------------------------------------------------ the server
class Server:
    """TGI's ``TextGenerationService`` over a ``FlashCausalLM`` built as ``get_model`` builds
    a Llama, in fp32 (``get_model`` allows fp16/bf16 only) after ``set_speculate(speculate)``."""

    def __init__(self, model_dir: str, speculate: int, *, kv_blocks: int = 512, dtype: str = "float32"):
        import torch
        from text_generation_server import server as tgi_server
        from text_generation_server.cache import Cache
        from text_generation_server.models import flash_causal_lm
        from text_generation_server.models.custom_modeling.flash_llama_modeling import FlashLlamaForCausalLM
        from text_generation_server.models.globals import BLOCK_SIZE, set_adapter_to_index
        from text_generation_server.utils.speculate import set_speculate

        set_speculate(speculate)  # as get_model does with the launcher's --speculate
        set_adapter_to_index({})  # as serve() does (FilterBatch reads it)
        self.block_size = BLOCK_SIZE
        self.kv_blocks = kv_blocks
        # warm-up sizes the KV cache from free host memory: bound it to kv_blocks
        self._bound_memory(flash_causal_lm)
        self.model = flash_causal_lm.FlashCausalLM(
            model_id=model_dir, model_class=FlashLlamaForCausalLM, dtype=getattr(torch, dtype)
        )
        self.service = tgi_server.TextGenerationService(self.model, Cache(), [])
        self.speculate = speculate
        self.loop = asyncio.new_event_loop()
        self.max_total_tokens = 0

    def _bound_memory(self, flash_causal_lm) -> None:
        def get_free_memory(device, fraction, _self=self):
            model = getattr(_self, "model", None)
            if model is None:
                return 0
            per_block = (
                self.block_size * model.num_kv_heads * model.head_size * 2 * model.num_layers * model.dtype.itemsize
            )
            return per_block * self.kv_blocks

        flash_causal_lm.get_free_memory = get_free_memory

    def call(self, method: str, request):
        return self.loop.run_until_complete(getattr(self.service, method)(request, None))

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def info(self):
        from text_generation_server.pb import generate_pb2

        return self.call("Info", generate_pb2.InfoRequest())

    def warmup(self, max_input_tokens: int = 512, max_prefill_tokens: int = 1024, max_total_tokens: int = 1024):
        """Warm-up as the router sends it: ``_test `` prompts filling ``max_prefill_tokens``,
        request id 0, sampling parameters that exercise every logits processor."""
        from text_generation_server.pb import generate_pb2

        reqs, n = [], 0
        while n < max_prefill_tokens:
            truncate = min(max_input_tokens, max_prefill_tokens - n)
            text = "_test " * truncate
            reqs.append(
                generate_pb2.Request(
                    id=0,
                    inputs=text,
                    input_chunks=generate_pb2.Input(chunks=[generate_pb2.InputChunk(text=text)]),
                    truncate=truncate,
                    add_special_tokens=True,
                    parameters=generate_pb2.NextTokenChooserParameters(
                        temperature=0.9,
                        top_k=10,
                        top_p=0.9,
                        typical_p=0.9,
                        do_sample=False,
                        seed=0,
                        repetition_penalty=1.2,
                        frequency_penalty=0.1,
                        watermark=True,
                        grammar="",
                        grammar_type=generate_pb2.GRAMMAR_TYPE_NONE,
                    ),
                    stopping_parameters=generate_pb2.StoppingCriteriaParameters(
                        max_new_tokens=max_total_tokens - truncate, stop_sequences=[], ignore_eos_token=True
                    ),
                    prefill_logprobs=True,
                    top_n_tokens=20,
                )
            )
            n += truncate
        batch = generate_pb2.Batch(id=0, requests=reqs, size=len(reqs), max_tokens=max_input_tokens, max_blocks=0)
        resp = self.call(
            "Warmup",
            generate_pb2.WarmupRequest(
                batch=batch,
                max_input_tokens=max_input_tokens,
                max_prefill_tokens=max_prefill_tokens,
                max_total_tokens=max_total_tokens,
            ),
        )
        self.max_total_tokens = resp.max_total_tokens
        return resp

    def clear(self, batch_id: int | None = None) -> None:
        from text_generation_server.pb import generate_pb2

        req = generate_pb2.ClearCacheRequest() if batch_id is None else generate_pb2.ClearCacheRequest(id=batch_id)
        self.call("ClearCache", req)


# ------------------------------------------------------------------ the batching loop
@dataclass
class RunStats:
    prefills: int = 0
    decodes: int = 0
    filters: int = 0
    clears: int = 0
    concatenations: int = 0  # decodes over more than one batch
    decode_rows: int = 0  # row-steps of decodes
    decode_tokens: int = 0  # tokens those committed
    wall_s: float = 0.0
    tokens: int = 0

    @property
    def mat(self) -> float:
        """Tokens committed per row per decode step (mean accepted tokens)."""
        return self.decode_tokens / self.decode_rows if self.decode_rows else 0.0


class Router:
    """The router's continuous-batching loop (``backends/v3/src/backend.rs``) over :class:`Server`."""

    def __init__(self, server: Server, on_step: Callable[[str, object], None] | None = None):
        self.server = server
        self.blocks = BlockAllocator(server.kv_blocks, server.block_size)
        self.next_batch_id = 1
        self.on_step = on_step  # (method, response): tests look between steps

    def _request(self, r: Req, prompt_len: int):
        from text_generation_server.pb import generate_pb2

        tokens = prompt_len + r.max_new_tokens + self.server.speculate - 1  # queue.rs
        alloc = self.blocks.allocate(tokens)
        if alloc is None:
            raise RuntimeError(f"KV cache too small for request {r.id} ({tokens} tokens)")
        blocks, slots = alloc
        pb = generate_pb2.Request(
            id=r.id,
            inputs=r.text,
            input_chunks=generate_pb2.Input(chunks=[generate_pb2.InputChunk(text=r.text)]),
            truncate=prompt_len,
            add_special_tokens=r.add_special_tokens,
            parameters=parameters(r),
            stopping_parameters=generate_pb2.StoppingCriteriaParameters(
                max_new_tokens=r.max_new_tokens, stop_sequences=list(r.stop), ignore_eos_token=False
            ),
            prefill_logprobs=False,
            top_n_tokens=0,
            blocks=blocks,
            slots=slots,
            cache_len=0,
        )
        return pb, blocks

    def serve(self, requests: Sequence[Req]) -> tuple[dict[int, Served], RunStats]:
        from text_generation_server.pb import generate_pb2

        tok = self.server.tokenizer
        pending = sorted(requests, key=lambda r: (r.arrive, r.id))
        by_id = {r.id: r for r in requests}
        out = {r.id: Served() for r in requests}
        held: dict[int, list[int]] = {}  # request id -> its blocks
        live: list = []  # CachedBatch messages, oldest first
        st = RunStats()
        step = 0
        t0 = time.perf_counter()

        def finish(rid: int, why: str) -> None:
            out[rid].finish = out[rid].finish or why
            self.blocks.release(held.pop(rid, []))

        def absorb(generations) -> None:
            for g in generations:
                if g.request_id not in held:
                    continue
                s = out[g.request_id]
                s.tokens.extend(g.tokens.ids)
                s.steps += 1
                r = by_id[g.request_id]
                if g.HasField("generated_text"):
                    finish(g.request_id, generate_pb2.FinishReason.Name(g.generated_text.finish_reason))
                elif r.cancel_after is not None and len(s.tokens) >= r.cancel_after:
                    finish(g.request_id, "cancelled")  # the client went away

        def filtered(batch):
            """``filter_batch`` of backend.rs: keep the requests the router still serves."""
            if batch is None or not batch.ByteSize():
                return None
            keep = [i for i in batch.request_ids if i in held]
            if len(keep) == len(batch.request_ids):
                return batch
            if not keep:
                self.server.clear(batch.id)
                st.clears += 1
                return None
            st.filters += 1
            resp = self.server.call("FilterBatch", generate_pb2.FilterBatchRequest(batch_id=batch.id, request_ids=keep))
            return resp.batch

        while pending or live:
            arrived = [r for r in pending if r.arrive <= step]
            if arrived:
                pending = [r for r in pending if r.arrive > step]
                reqs = []
                for r in arrived:
                    n = len(tok(r.text, add_special_tokens=r.add_special_tokens)["input_ids"])
                    pb, blocks = self._request(r, n)
                    held[r.id] = blocks
                    reqs.append(pb)
                batch = generate_pb2.Batch(
                    id=self.next_batch_id,
                    requests=reqs,
                    size=len(reqs),
                    max_tokens=sum(len(p.slots) for p in reqs),
                    max_blocks=max(len(p.blocks) for p in reqs),
                )
                self.next_batch_id += 1
                resp = self.server.call("Prefill", generate_pb2.PrefillRequest(batch=batch))
                st.prefills += 1
                absorb(resp.generations)
                self._seen("Prefill", resp)
                new = filtered(resp.batch if resp.HasField("batch") else None)
                if new is not None:
                    live.append(new)
            if live:
                rows = sum(len(b.request_ids) for b in live)
                resp = self.server.call("Decode", generate_pb2.DecodeRequest(batches=live))
                st.decodes += 1
                st.concatenations += len(live) > 1
                st.decode_rows += rows
                st.decode_tokens += sum(len(g.tokens.ids) for g in resp.generations)
                absorb(resp.generations)
                self._seen("Decode", resp)
                nxt = filtered(resp.batch if resp.HasField("batch") else None)
                live = [] if nxt is None else [nxt]
            elif pending:  # idle until the next arrival
                step = min(r.arrive for r in pending)
                continue
            step += 1
        st.wall_s = time.perf_counter() - t0
        st.tokens = sum(len(s.tokens) for s in out.values())
        return out, st

    def _seen(self, method: str, resp) -> None:
        if self.on_step is not None:
            self.on_step(method, resp)
