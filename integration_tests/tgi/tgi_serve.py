"""Run scenarios on TGI's real model server, patched by specplug as in a deployment.

``python tgi_serve.py PLAN.json OUT.json`` in an environment made by
``tgi_router.tgi_env`` (the tests and ``measure_tgi_server.py`` start it so). Before TGI
is imported it installs specplug's start-up hook exactly as the ``specplug_tgi.pth`` line
does (``SPECPLUG_TGI_ALGORITHM`` set), so TGI's modules are patched by the post-import
hooks on import, version gate included. Then, per run of the plan: the drafter is
selected (``tgi.enable``; ``"tgi-ngram"``: ``tgi.disable()``, TGI's own n-gram; speculate 0:
no speculation), requests are served by :class:`tgi_router.Router`, and what the router
saw and what specplug's session holds are written out. One server (``FlashCausalLM``) per
``--speculate`` value, built once, warmed up once.

Plan: ``{"model_src": specplug's converted model dir, "tiny": null | dir, "kv_blocks": n, "prompts": [{"set": "humaneval", "limit": 4}, ...],
"runs": [{"name", "speculate", "algorithm", "options", "pattern", "max_new_tokens",
"n", "prompts" (this run's, else the plan's), "requests": [optional per-request
overrides], "faulty": null | {"raise": [calls], "broken": [calls]}}]}``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

os.environ.setdefault("SPECPLUG_TGI_ALGORITHM", "pld")
from specplug.plugins import tgi_hook  # noqa: E402

tgi_hook.install()  # what the .pth line does at interpreter start

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("TGI_TORCH_THREADS", "1")))

import tgi_router  # noqa: E402  (imports TGI: the hooks patch it now)

#: staggered arrivals (decode steps) of the concurrent pattern
ARRIVALS = [0, 0, 1, 3, 4, 6, 9, 12, 14, 17, 20, 24]


class LogCounter(logging.Handler):
    """Counts specplug's messages from loguru (TGI's logger) and ``logging``."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def sink(self, message: Any) -> None:
        text = str(message.record["message"])
        if "specplug" in text:
            self.lines.append(text)

    def count(self, needle: str) -> int:
        return sum(needle in line for line in self.lines)


def prompts(tokenizer, spec: list[dict]) -> list[tuple[str, bool]]:
    """(text, add_special_tokens) per prompt: chat prompts rendered by the model's template
    (the router does that for chat requests and adds no special tokens)."""
    from specplug.prompts import load_prompt_set

    out = []
    for s in spec:
        for p in load_prompt_set(s["set"], limit=s.get("limit")):
            if p.messages is not None:
                text = tokenizer.apply_chat_template(
                    [dict(m) for m in p.messages], tokenize=False, add_generation_prompt=True
                )
                out.append((text, False))
            else:
                out.append((p.text, True))
    return out


class Faulty:
    """Wraps a drafter's ``propose``: raises on some calls, returns a broken tree on others."""

    def __init__(self, drafter, raise_on: list[int], broken_on: list[int]):
        self.drafter, self.inner = drafter, drafter.propose
        self.raise_on, self.broken_on = set(raise_on), set(broken_on)
        self.calls = 0
        drafter.propose = self

    def __call__(self, rids, budgets):
        self.calls += 1
        if self.calls in self.raise_on:
            raise RuntimeError(f"injected drafter failure (call {self.calls})")
        trees = self.inner(rids, budgets)
        if self.calls in self.broken_on and trees:
            from specplug.drafters.tree import DraftTree

            t = trees[0]  # an id outside the vocabulary: would crash TGI's embedding
            bad = np.array([t.tokens[0], self.drafter.vocab_size + 7], np.int32)
            trees = [DraftTree(bad, np.array([-1, 0], np.int32), np.ones(2, np.float32)), *trees[1:]]
        return trees


class Runner:
    def __init__(self, plan: dict):
        from specplug.patches import tgi

        self.tgi = tgi
        self.plan = plan
        self.server: tgi_router.Server | None = None
        self.logs = LogCounter()
        logging.getLogger("specplug").addHandler(self.logs)
        from loguru import logger

        logger.add(self.logs.sink, level="DEBUG")
        self.next_id = 1
        self._texts: dict[str, list[tuple[str, bool]]] = {}
        self.boot: dict[str, Any] = {}
        import tgi_models

        if plan.get("tiny"):  # a small random Llama with the default model's tokenizer
            self.model_dir = str(tgi_models.tiny_model_dir(plan["model_src"], plan["tiny"]))
        else:
            self.model_dir = str(tgi_models.tgi_model_dir(plan["model_src"]))

    def server_for(self, speculate: int) -> tgi_router.Server:
        if self.server is None or self.server.speculate != speculate:
            self.server = None  # free the previous model first
            t0 = time.perf_counter()
            self.server = tgi_router.Server(self.model_dir, speculate, kv_blocks=int(self.plan.get("kv_blocks", 512)))
            self.server.warmup(**self.plan.get("warmup", {}))
            if not self.boot:  # TGI is imported now: what the start-up hook patched
                self.boot = {
                    "patched": sorted(type(p).__name__ for p in self.tgi.TGI_PATCHES.applied),
                    "version": self.tgi.TGI_PATCHES.version,
                    "info": str(self.server.info()),
                }
            self.server.load_s = time.perf_counter() - t0  # type: ignore[attr-defined]
        return self.server

    def texts(self, spec: list[dict]) -> list[tuple[str, bool]]:
        key = json.dumps(spec, sort_keys=True)
        if key not in self._texts:
            self._texts[key] = prompts(self.server.tokenizer, spec)
        return self._texts[key]

    def requests(self, run: dict) -> list[tgi_router.Req]:
        texts = self.texts(run.get("prompts") or self.plan["prompts"])
        n = int(run.get("n", len(texts)))
        base = [texts[i % len(texts)] for i in range(n)]
        over = run.get("requests") or [{} for _ in base]
        reqs = []
        for i, ((text, special), extra) in enumerate(zip(base, over)):
            kw = {"max_new_tokens": int(run.get("max_new_tokens", 32)), **extra}
            if run.get("pattern") == "concurrent":
                kw.setdefault("arrive", ARRIVALS[i % len(ARRIVALS)])
            reqs.append(tgi_router.Req(self.next_id + i, text, add_special_tokens=special, **kw))
        self.next_id += 1000
        return reqs

    def run(self, run: dict) -> dict:
        tgi = self.tgi
        srv = self.server_for(int(run["speculate"]))
        alg = run.get("algorithm")
        ctl = None
        if alg in (None, "tgi-ngram", "none"):
            tgi.disable()
        else:
            ctl = tgi.enable(alg, run.get("options"))
        faulty = None
        if ctl is not None and run.get("faulty"):
            drafter = ctl.runtime.ensure_drafter(int(srv.model.config.vocab_size))  # = the scores' width
            faulty = Faulty(drafter, run["faulty"].get("raise", []), run["faulty"].get("broken", []))
        mark = len(self.logs.lines)
        reqs = self.requests(run)
        router = tgi_router.Router(srv)
        served: dict[int, tgi_router.Served] = {}
        stats = []
        if run.get("pattern") == "sequential":
            for r in reqs:
                out, st = router.serve([r])
                served.update(out)
                stats.append(st)
        else:
            out, st = router.serve(reqs)
            served.update(out)
            stats.append(st)
        total = tgi_router.RunStats(
            **{k: sum(getattr(s, k) for s in stats) for k in tgi_router.RunStats.__dataclass_fields__}
        )
        active_after = ctl.runtime.active_requests() if ctl else 0
        srv.clear()  # ClearCache, as the router at start-up
        res: dict[str, Any] = {
            "name": run["name"],
            "speculate": int(run["speculate"]),
            "algorithm": alg or "none",
            "outputs": {str(r.id - reqs[0].id): served[r.id].tokens for r in reqs},
            "finish": {str(r.id - reqs[0].id): served[r.id].finish for r in reqs},
            "steps": {str(r.id - reqs[0].id): served[r.id].steps for r in reqs},
            "router": {**total.__dict__, "mat": total.mat},
            "active_after_finish": active_after,
            "active_after_clear": ctl.runtime.active_requests() if ctl else 0,
            "logs": self.logs.lines[mark:],
        }
        if ctl is not None:
            st = ctl.runtime.stats
            res["specplug"] = {
                "errors": ctl.errors,
                "fallbacks": ctl.fallbacks,
                "fallback_rows": ctl.fallback_rows,
                "session": st.as_dict(),
            }
            acc = getattr(ctl.runtime.drafter, "acceptance", None)
            if acc is not None:
                res["specplug"]["calibration_trials"] = float(np.asarray(acc.trials).sum())
            if faulty is not None:
                res["specplug"]["faulty_calls"] = faulty.calls
        return res


def main(argv: list[str]) -> int:
    plan = json.loads(open(argv[1]).read())
    runner = Runner(plan)
    results = {"boot": runner.boot, "runs": []}
    t0 = time.perf_counter()
    for run in plan["runs"]:
        results["runs"].append(runner.run(run))
        print(f"tgi_serve: {run['name']} done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    results["boot"] = runner.boot
    results["wall_s"] = time.perf_counter() - t0
    with open(argv[2], "w") as f:
        json.dump(results, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
