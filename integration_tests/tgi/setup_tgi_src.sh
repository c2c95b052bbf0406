#!/usr/bin/env bash
# Prepare a TGI source checkout so that specplug's TGI integration tests can run TGI's
# real Python model server on a CPU.
#
#   bash integration_tests/tgi/setup_tgi_src.sh /path/to/text-generation-inference
#   export TGI_SERVER_SRC=/path/to/text-generation-inference/server
#   python -m pytest integration_tests/tgi -q
#
# It downloads no TGI source: get the checkout yourself (see README.md beside this
# script). It
#   1. installs TGI's pinned Python dependencies (server/requirements_intel.txt: transformers
#      4.51.3, tokenizers 0.21.1, huggingface-hub 0.31.1, grpc, OpenTelemetry, outlines, ...)
#      with --no-deps into an ISOLATED target directory, $TGI_DEPS (default
#      <checkout>/.specplug-deps), which the tests put ahead on PYTHONPATH only in the process
#      that runs TGI's server: this environment keeps its own transformers, torch and numpy
#      (torch is never installed);
#   2. generates TGI's protobuf stubs (text_generation_server/pb) as TGI's `make gen-server` does;
#   3. checks that TGI's server imports with the IPEX stand-in (integration_tests/tgi/ipex_cpu)
#      and selects its flash Llama on the CPU.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 /path/to/text-generation-inference-checkout" >&2
    exit 2
fi
ROOT=$(cd "$1" && pwd)
SERVER="$ROOT/server"
PROTO="$ROOT/proto/v3/generate.proto"
PY=${PYTHON:-python}
DEPS=${TGI_DEPS:-$ROOT/.specplug-deps}
HERE=$(cd "$(dirname "$0")" && pwd)

if [ ! -d "$SERVER/text_generation_server" ] || [ ! -f "$PROTO" ]; then
    echo "error: $ROOT does not look like a TGI checkout (need server/text_generation_server and proto/v3/generate.proto)" >&2
    exit 2
fi

# 1. TGI's pins (requirements_intel.txt of v3.3.x), only what its server imports on a CPU
#    and this environment may lack or hold in another version.
PINS=(
    transformers==4.51.3 tokenizers==0.21.1 huggingface-hub==0.31.1 peft==0.15.2
    accelerate==1.6.0 compressed-tensors==0.9.4 kernels==0.5.0
    protobuf==5.29.4 grpcio==1.71.0 grpcio-reflection==1.71.0 grpcio-status==1.71.0
    grpc-interceptor==0.15.4 googleapis-common-protos==1.70.0 grpcio-tools==1.71.0
    opentelemetry-api==1.33.0 opentelemetry-sdk==1.33.0
    opentelemetry-exporter-otlp-proto-grpc==1.33.0 opentelemetry-exporter-otlp-proto-common==1.33.0
    opentelemetry-proto==1.33.0 opentelemetry-instrumentation==0.54b0
    opentelemetry-instrumentation-grpc==0.54b0 opentelemetry-semantic-conventions==0.54b0
    deprecated==1.2.18 importlib-metadata==8.6.1 zipp==3.21.0
    prometheus-client==0.21.1 texttable==1.7.0 loguru==0.7.3 einops==0.8.1 py-cpuinfo==9.0.0
    outlines==0.2.3 outlines-core==0.1.26 interegular==0.3.3 lark==1.2.2 diskcache==5.6.3
    airportsdata==20250224 iso3166==2.1.1 genson==1.3.0 nest-asyncio==1.6.0
)
echo "installing TGI's pinned dependencies into $DEPS (isolated; --no-deps)"
"$PY" -m pip install -q --no-deps --target "$DEPS" --upgrade "${PINS[@]}"
# TGI's metadata kernels import triton at module level; a stub breaks torch._dynamo. Use the
# environment's if it has one, else the wheel that matches the installed torch.
if ! "$PY" -c "import triton" 2>/dev/null; then
    echo "no triton in this environment: installing one into $DEPS (large wheel)"
    "$PY" -m pip install -q --no-deps --target "$DEPS" triton
fi

# 2. Protobuf stubs (text_generation_server/pb), imports made package-relative.
PB="$SERVER/text_generation_server/pb"
mkdir -p "$PB"
PYTHONPATH="$DEPS" "$PY" -m grpc_tools.protoc -I"$ROOT/proto/v3" --python_out="$PB" --grpc_python_out="$PB" "$PROTO"
for f in "$PB"/*.py; do
    sed -i -e 's/^\(import.*pb2\)/from . \1/g' "$f"
done
touch "$PB/__init__.py"

# 3. Check: TGI's server imports on the IPEX stand-in and keeps its flash models.
( cd "$SERVER" && \
  PYTHONPATH="$HERE/ipex_cpu:$DEPS:$SERVER" ATTENTION=paged PREFIX_CACHING=0 "$PY" -c "
import transformers
from text_generation_server.utils.import_utils import SYSTEM
from text_generation_server import server, models
from text_generation_server.models.custom_modeling.flash_llama_modeling import FlashLlamaForCausalLM
assert SYSTEM == 'ipex', SYSTEM
assert models.FLASH_ATTENTION, 'flash models disabled (wrong transformers?)'
print('ok: TGI server on', SYSTEM, 'with transformers', transformers.__version__)
" 2>&1 | grep -E '^ok:|Error|error' )
echo "now: export TGI_SERVER_SRC=$SERVER"
[ "$DEPS" = "$ROOT/.specplug-deps" ] || echo "      export TGI_DEPS=$DEPS"
