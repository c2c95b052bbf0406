"""The GPU check's stages in one process (run by ``check.sh``; ``docs/gpu_check.md``).

1. calibrate: ``specplug calibrate`` on a random-weight Llama-3.1-8B shape in bf16 (``--tiny``:
   the tiny shape), batch 1..64 x 1..512 tokens per row, written as a cost model JSON;
2. identity: greedy output of racer, token-recycling, suffix and pld vs AR on a tiny random
   Llama in fp32 and bf16 (:mod:`identity`: mismatches reported with their cause);
3. bench-drafters: drafter host cost on this machine's cores, no model;
4. projection: ``specplug simulate-budgets`` prices the acceptance recorded on the CPU
   (``results/simulated_throughput_records_racer_dynamic.npz``) with the new cost model.

One stage failing does not stop the next: every stage's status, time and error land in
``summary.json`` / ``summary.md``, and the exit code is 1 when any stage failed.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.metadata
import os
import pathlib
import platform
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from summary import write_summary  # this folder (the script's own directory is on sys.path)

ROOT = pathlib.Path(__file__).resolve().parents[2]
RECORDS = ROOT / "results" / "simulated_throughput_records_racer_dynamic.npz"
PROJECTION_NOTE = (
    "projection, not a measurement: acceptance recorded on the CPU (SmolLM2-135M, racer[dynamic], "
    "results/simulated_throughput_records_racer_dynamic.npz), each pass priced by this device's cost model"
)

#: per mode: the calibration grid and the sizes of the other stages
SETTINGS: dict[str, dict[str, Any]] = {
    "full": {
        "shape": "llama-3.1-8b",
        "calibrate": "--repeats 3".split(),  # the GPU grid by default: batch 1..64 x 1..512 tokens
        "identity": "--prompts 8 --max-new-tokens 64".split(),
        "bench": "--batch 256 --budget 64 --steps 60 --warmup 10 --requests 0".split(),
        "projection": "--batches 1,2,4,8,16,32,64 --steps 200".split(),
    },
    "tiny": {
        "shape": "tiny",
        "calibrate": "--batches 1,2 --widths 1,2,4 --max-tokens 8 --context 32 --repeats 1".split(),
        "identity": "--prompts 4 --max-new-tokens 32".split(),
        "bench": "--batch 8 --budget 16 --steps 3 --warmup 1 --requests 0 --vocab 2048".split(),
        "projection": "--batches 1,4 --steps 5".split(),
    },
}


@contextlib.contextmanager
def _argv(argv: list[str]) -> Iterator[None]:
    """The subcommands record ``sys.argv`` as their command: give them theirs."""
    old = sys.argv
    sys.argv = ["specplug", *argv]
    try:
        yield
    finally:
        sys.argv = old


def _specplug(argv: list[str]) -> int:
    from specplug.cli import main

    with _argv(argv):
        return main(argv)


def _stage(name: str, fn: Callable[[], int], summary: dict, out: pathlib.Path) -> None:
    print(f"== {name}", flush=True)
    t0 = time.perf_counter()
    entry: dict = {"ok": False}
    try:
        rc = fn()
        entry.update(ok=rc == 0, rc=rc)
    except BaseException as e:  # argparse's SystemExit and CUDA errors alike: record, go on
        entry["error"] = "".join(traceback.format_exception(type(e), e, e.__traceback__))[-4000:]
        print(entry["error"], file=sys.stderr, flush=True)
    entry["seconds"] = round(time.perf_counter() - t0, 2)
    summary["stages"][name] = entry
    # written after every stage: a run stopped by CHECK_TIMEOUT keeps what it finished
    write_summary({**summary, "ok": False, "incomplete": True}, out)
    gc.collect()  # the 8B model's 16 GB go before the next stage
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _environment(device: str) -> dict:
    import torch

    import specplug
    import specplug.drafters

    env = {
        "python": platform.python_version(),
        "host_cpu": _cpu_name(),
        "host_cores": os.cpu_count(),
        "specplug_from": [str(specplug.__file__), str(specplug.drafters.__file__)],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    for dist in ("transformers", "numba", "numpy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            env[dist] = importlib.metadata.version(dist)
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def _cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def run(device: str, mode: str, out: pathlib.Path) -> dict:
    s = SETTINGS[mode]
    tag = f"{'cuda' if device.startswith('cuda') else 'cpu'}_bf16_{s['shape']}"
    files = {
        "cost_model": out / f"cost_model_{tag}.json",
        "identity": out / "identity.json",
        "bench_drafters": out / "bench_drafters.json",
        "projection": out / f"projection_racer_dynamic_{tag}.json",
    }
    for f in files.values():  # a stale file from an earlier run must not pass for this one's
        f.unlink(missing_ok=True)
    summary: dict = {"device": device, "mode": mode, "environment": _environment(device), "stages": {}}
    summary["files"] = {k: v.name for k, v in files.items()}
    summary["projection_note"] = PROJECTION_NOTE
    calibrate = ["calibrate", "--device", device, "--dtype", "bf16", "--random-weights", s["shape"], *s["calibrate"]]
    identity = [*s["identity"], "--device", device, "--json", str(files["identity"])]
    bench = ["bench-drafters", *s["bench"], *_host_threads(mode), "--json", str(files["bench_drafters"])]
    _stage("calibrate", lambda: _calibrate(calibrate, files["cost_model"]), summary, out)
    _stage("identity", lambda: _identity(identity), summary, out)
    _stage("bench-drafters", lambda: _specplug(bench), summary, out)
    if files["cost_model"].is_file():
        projection = ["simulate-budgets", "--records", str(RECORDS), "--cost-model", str(files["cost_model"])]
        projection += [*s["projection"], "--json", str(files["projection"])]
        _stage("projection", lambda: _specplug(projection), summary, out)
    else:
        summary["stages"]["projection"] = {"ok": False, "error": "no cost model: the calibrate stage failed"}
    summary["ok"] = all(st["ok"] for st in summary["stages"].values())
    return summary


def _host_threads(mode: str) -> list[str]:
    """``--draft-threads 1,<cores>`` where this bench-drafters has the option (the full run: the
    drafters' host cost on one core and on all of this host's cores)."""
    from specplug import bench_drafters

    p = argparse.ArgumentParser()
    bench_drafters.add_arguments(p)
    cores = os.cpu_count() or 1
    if mode != "full" or cores < 2 or p.parse_known_args(["--draft-threads", "1"])[1]:
        return []
    return ["--draft-threads", f"1,{cores}"]


def _calibrate(argv: list[str], path: pathlib.Path) -> int:
    """``specplug calibrate ... --out path``, then the file must load as the policy loads it."""
    from specplug.drafters.budget import load_cost_model

    rc = _specplug([*argv, "--out", str(path)])
    if rc == 0:
        load_cost_model(str(path))
    return rc


def _identity(argv: list[str]) -> int:
    from identity import main  # this folder; imported late: it imports torch and specplug

    return main(argv)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--tiny", action="store_true", help="the smoke run: tiny shapes and grids (CPU tests)")
    p.add_argument("--out", required=True, help="output folder")
    args = p.parse_args(argv)
    out = pathlib.Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary = run(args.device, "tiny" if args.tiny else "full", out)
    print(write_summary(summary, out))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
