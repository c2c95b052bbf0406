#!/usr/bin/env bash
# The GPU check (docs/gpu_check.md), one call on a machine that has torch, transformers and numba
# but neither specplug installed nor a package registry:
#
#   integration_tests/gpu/check.sh [--device cuda|cpu] [--tiny] [--out DIR]
#
# --device: cuda (default) or cpu; --tiny: the smoke run (tiny shapes; the CPU test runs it);
# --out: where the JSON and Markdown go (default: $OUT when set, else ${TMPDIR:-/tmp}/specplug_gpu_check).
# Exit status: 0 when every stage passed, 1 when one failed (summary.md says which), 2 on bad arguments.
# CHECK_TIMEOUT (seconds, default 300) bounds the whole run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEVICE=cuda
TINY=()
DEST="${OUT:-${TMPDIR:-/tmp}/specplug_gpu_check}"
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE="${2:?--device needs a value}"; shift 2 ;;
        --tiny) TINY=(--tiny); shift ;;
        --out) DEST="${2:?--out needs a value}"; shift 2 ;;
        *) echo "check.sh: unknown argument $1 (use --device cuda|cpu, --tiny, --out DIR)" >&2; exit 2 ;;
    esac
done
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"
PY="${PYTHON:-$(command -v python3 || command -v python)}"

# `import specplug` without installing: a package whose search path is the repository's
# specplug/ folder and then its root, which resolves specplug.drafters to drafters/,
# specplug.adapters.hf to adapters/hf/ and so on, as pyproject's package-dir mapping does.
SHIM="$(mktemp -d)"
trap 'rm -rf "$SHIM"' EXIT
mkdir "$SHIM/specplug"
cat >"$SHIM/specplug/__init__.py" <<EOF
"""specplug from the repository at $ROOT, uninstalled (integration_tests/gpu/check.sh)."""
__path__ = ["$ROOT/specplug", "$ROOT"]
with open("$ROOT/specplug/__init__.py", encoding="utf-8") as _f:
    exec(compile(_f.read(), _f.name, "exec"))
EOF

# Run from outside the repository: its root's specplug/ folder would shadow the shim.
cd "$SHIM"
export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
RUN=("$PY" "$ROOT/integration_tests/gpu/gpu_check.py" --device "$DEVICE" --out "$DEST" ${TINY[@]+"${TINY[@]}"})
if command -v timeout >/dev/null; then
    timeout "${CHECK_TIMEOUT:-300}" "${RUN[@]}"
else
    "${RUN[@]}"
fi
