#!/usr/bin/env bash
# Prepare a TGI source checkout so that specplug's TGI integration tests can import
# TGI's real `text_generation_server.utils.tokens` on a CPU.
#
#   bash integration_tests/tgi/setup_tgi_src.sh /path/to/text-generation-inference
#   export TGI_SERVER_SRC=/path/to/text-generation-inference/server
#   python -m pytest integration_tests/tgi -q
#
# It downloads no TGI source: get the checkout yourself (see README.md beside this
# script). It only (1) installs from PyPI the few packages that module imports,
# refusing to replace the installed torch, transformers or numpy, and (2) generates
# TGI's protobuf stubs (text_generation_server/pb) with grpcio-tools, as TGI's own
# `make gen-server` does, without the mypy stubs.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 /path/to/text-generation-inference-checkout" >&2
    exit 2
fi
ROOT=$(cd "$1" && pwd)
SERVER="$ROOT/server"
PROTO="$ROOT/proto/v3/generate.proto"
PY=${PYTHON:-python}

if [ ! -d "$SERVER/text_generation_server" ] || [ ! -f "$PROTO" ]; then
    echo "error: $ROOT does not look like a TGI checkout (need server/text_generation_server and proto/v3/generate.proto)" >&2
    exit 2
fi

# 1. PyPI packages that text_generation_server.utils.tokens imports and the CPU env lacks.
#    The constraints pin what is installed now, so pip fails instead of replacing them.
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
"$PY" - "$CONSTRAINTS" <<'PYEOF'
import sys
from importlib.metadata import version, PackageNotFoundError
with open(sys.argv[1], "w") as f:
    for name in ("torch", "transformers", "numpy"):
        try:
            f.write(f"{name}=={version(name)}\n")
        except PackageNotFoundError:
            pass
PYEOF
echo "keeping: $(tr '\n' ' ' < "$CONSTRAINTS")"
"$PY" -m pip install -q -c "$CONSTRAINTS" \
    "grpcio-tools" "loguru" "peft" "outlines==0.1.14"

# 2. Protobuf stubs (text_generation_server/pb), imports made package-relative.
PB="$SERVER/text_generation_server/pb"
mkdir -p "$PB"
"$PY" -m grpc_tools.protoc -I"$ROOT/proto/v3" --python_out="$PB" --grpc_python_out="$PB" "$PROTO"
for f in "$PB"/*.py; do
    sed -i -e 's/^\(import.*pb2\)/from . \1/g' "$f"
done
touch "$PB/__init__.py"

# 3. Check: the module the tests patch imports.
( cd "$SERVER" && "$PY" -c "import text_generation_server.utils.tokens as t; print('ok:', t.__file__)" )
echo "now: export TGI_SERVER_SRC=$SERVER"
