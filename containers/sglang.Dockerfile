# SGLang 0.5.23 with specplug's algorithms as --speculative-algorithm names.
#
#   docker build -f containers/sglang.Dockerfile -t specplug-sglang:0.5.23 .   # from the repository root
#   docker run --gpus all --shm-size 16g --ipc=host -p 30000:30000 specplug-sglang:0.5.23 \
#       python -m sglang.launch_server --model-path Qwen/Qwen2.5-7B-Instruct \
#       --speculative-algorithm RACER --speculative-num-draft-tokens 64 \
#       --disable-overlap-schedule --host 0.0.0.0 --port 30000
#
# Algorithm options: -e SPECPLUG_SGLANG_OPTIONS='{"...": ...}' (JSON, or a path to a JSON file).
# Without --speculative-algorithm <specplug name> the image behaves exactly like the official one.
# Supported base: SGLang 0.5.23 only; with another SGLang the specplug names refuse to start
# with a message naming the supported range.
ARG SGLANG_IMAGE=lmsysorg/sglang:v0.5.23
FROM ${SGLANG_IMAGE}

# specplug and its dependencies (numba included) go in with every package of the image
# pinned as a constraint (containers/install_specplug.sh): SGLang's CUDA torch and
# transformers stay as they are, and a dependency that would need others fails the build.
# The package registers the `sglang.srt.plugins` entry point that every SGLang process loads.
COPY . /tmp/specplug
RUN sh /tmp/specplug/containers/install_specplug.sh python3 /tmp/specplug \
 && rm -rf /tmp/specplug \
 && python3 -c "from importlib.metadata import entry_points as e; \
assert any(p.value == 'specplug.plugins.sglang:register' for p in e(group='sglang.srt.plugins')); \
import specplug.plugins.sglang as p; print('specplug for', p.check_version(), sorted(p.engine_names()))"
