"""Run SGLang's real CPU ``Engine`` at several ``--tp-size`` values, one after the other in
this process, with every rank's draft-tree digest on (``SPECPLUG_DIGEST_DIR``)::

    SGLANG_USE_CPU_ENGINE=1 OMP_NUM_THREADS=1 PYTHONPATH=integration_tests/sglang/cpu_kernels \\
        python integration_tests/sglang/tp_driver.py --model DIR --algorithm RACER \\
        --tp-sizes 1,2 --prompts prompts.json --max-new-tokens 24 --out result.json

Greedy, one batched ``generate`` call per engine. TP ranks talk over gloo (SGLang's CPU
path when its shared-memory all-reduce kernels are absent, as with the ``sgl_kernel``
stand-in); ``SGLANG_CPU_OMP_THREADS_BIND`` gives each rank one core (SGLang otherwise
wants a NUMA node per rank). Output: per TP size, the outputs, verify steps, and per rank
the digest log's header and running digests (``specplug.drafters.digest``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from engine_driver import engine_kwargs  # noqa: E402


def run_tp(model: str, algorithm: str, tp: int, prompts, max_new_tokens: int, draft_tokens: int, digest_dir: str):
    import sglang

    from specplug.drafters.digest import read_digest_log
    from specplug.plugins import env

    os.environ[env.DIGEST_DIR] = digest_dir  # the scheduler subprocesses inherit it
    bind = "SGLANG_CPU_OMP_THREADS_BIND" not in os.environ and tp > 1
    if bind:  # rank r on core r (mod the cores there are)
        os.environ["SGLANG_CPU_OMP_THREADS_BIND"] = "|".join(str(r % (os.cpu_count() or 1)) for r in range(tp))
    t0 = time.perf_counter()
    engine = sglang.Engine(**engine_kwargs(model, algorithm, draft_tokens), tp_size=tp)
    startup = time.perf_counter() - t0
    params = {"temperature": 0.0, "max_new_tokens": max_new_tokens, "ignore_eos": True}
    try:
        t0 = time.perf_counter()
        outs = engine.generate(input_ids=prompts, sampling_params=params)
        wall = time.perf_counter() - t0
    finally:
        engine.shutdown()
        os.environ.pop(env.DIGEST_DIR, None)
        if bind:
            os.environ.pop("SGLANG_CPU_OMP_THREADS_BIND", None)
    ranks = {}
    for path in sorted(pathlib.Path(digest_dir).glob("sglang*.digest")):
        header, digests = read_digest_log(path)
        ranks[str(header["tp_rank"])] = {"header": header, "digests": digests}
    return {
        "tp_size": tp,
        "outputs": [o["output_ids"] for o in outs],
        "verify_steps": sum(o["meta_info"].get("spec_verify_ct", 0) for o in outs),
        "startup_s": startup,
        "wall_s": wall,
        "ranks": ranks,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--algorithm", default="RACER")
    ap.add_argument("--tp-sizes", default="1,2")
    ap.add_argument("--draft-tokens", type=int, default=16)
    ap.add_argument("--prompts", required=True, help="JSON file: list of token-id lists")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--out", default="-")
    args = ap.parse_args(argv)
    prompts = json.loads(pathlib.Path(args.prompts).read_text())
    runs = []
    with tempfile.TemporaryDirectory(prefix="specplug_tp_") as tmp:
        for tp in (int(t) for t in args.tp_sizes.split(",")):
            digest_dir = os.path.join(tmp, f"tp{tp}")
            runs.append(
                run_tp(args.model, args.algorithm, tp, prompts, args.max_new_tokens, args.draft_tokens, digest_dir)
            )
    text = json.dumps({"algorithm": args.algorithm, "runs": runs})
    if args.out == "-":
        sys.stdout.write(text + "\n")
    else:
        pathlib.Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
