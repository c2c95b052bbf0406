# vLLM 0.32.0 with specplug's proposers (docs/vllm.md).
#
#   docker build -f containers/vllm.Dockerfile -t specplug-vllm:0.32.0 .      # from the repository root
#   docker run --gpus all --ipc=host -p 8000:8000 specplug-vllm:0.32.0 \
#       --model Qwen/Qwen2.5-1.5B-Instruct \
#       --speculative-config '{"method": "custom_class", "model": "specplug.adapters.vllm.RACER", "num_speculative_tokens": 8}'
#
# The image's entrypoint is `vllm serve`; without a specplug --speculative-config it behaves
# exactly like the official one (the vllm.general_plugins entry point changes nothing until a
# specplug proposer is built). Options: -e SPECPLUG_VLLM_OPTIONS='{"tree_budget": 32}',
# -e SPECPLUG_VLLM_LOAD_AWARE=off. Any vLLM but 0.32.0 makes the proposer refuse to start.
ARG VLLM_VERSION=v0.32.0
FROM vllm/vllm-openai:${VLLM_VERSION}

# specplug and its dependencies (numba included) go into the image's Python with every
# installed package pinned as a constraint (containers/install_specplug.sh): vLLM's torch,
# transformers and numpy stay as they are, and a dependency that would need others fails
# the build.
COPY . /tmp/specplug
RUN sh /tmp/specplug/containers/install_specplug.sh python3 /tmp/specplug \
 && rm -rf /tmp/specplug \
 && python3 -c "import importlib.metadata as m; assert any(e.name == 'specplug' for e in m.entry_points(group='vllm.general_plugins'))" \
 && python3 -c "import specplug.adapters.vllm as v, specplug.patches.vllm; print('specplug', v.RACER, v.PLD)"
