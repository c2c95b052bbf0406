# TGI 3.3.6 with specplug's drafters at TGI's speculation point.
#
#   docker build -f containers/tgi.Dockerfile -t specplug-tgi:3.3.6 .      # from the repository root
#   docker run --gpus all --shm-size 1g -p 8080:80 -v $PWD/data:/data \
#       -e SPECPLUG_TGI_ALGORITHM=racer \
#       specplug-tgi:3.3.6 --model-id Qwen/Qwen2.5-1.5B-Instruct --speculate 5
#
# Without SPECPLUG_TGI_ALGORITHM the image behaves exactly like the official one.
# Supported bases: text-generation-inference:3.3.5 and :3.3.6 (TGI 3.3.5-3.3.7); any other
# TGI version makes the shards stop at start-up with a message naming the supported ones.
ARG TGI_VERSION=3.3.6
FROM ghcr.io/huggingface/text-generation-inference:${TGI_VERSION}

# TGI's server runs from the Python 3.11 venv at /usr/src/.venv (the entrypoint activates
# it; shards inherit the launcher's environment). specplug and its dependencies (numba
# included) go in with every package of that venv pinned as a constraint
# (containers/install_specplug.sh; through the image's uv, as `uv sync` left the venv without
# pip): TGI's torch and transformers stay as they are, and a dependency that would need
# others fails the build. The wheel puts specplug_tgi.pth into that venv's site-packages.
COPY . /tmp/specplug
RUN sh /tmp/specplug/containers/install_specplug.sh /usr/src/.venv/bin/python /tmp/specplug \
 && rm -rf /tmp/specplug \
 && test -f /usr/src/.venv/lib/python3.11/site-packages/specplug_tgi.pth \
 && /usr/src/.venv/bin/python -c "import specplug.patches.tgi, specplug.drafters.registry as r; print('specplug', r.names())"
