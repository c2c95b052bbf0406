#!/bin/sh
# Installs specplug with its runtime dependencies (numba included) into an engine image's
# Python, leaving every package already there (torch, transformers, numpy, ...) at its
# version: each installed distribution becomes a constraint, so a dependency that would
# need another version fails the build instead of replacing the engine's.
#
#   sh install_specplug.sh PYTHON SOURCE
#
# Run by containers/sglang.Dockerfile and containers/tgi.Dockerfile; tests/test_containers.py
# runs the same lines in fresh venvs.
set -eu
py=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# pip where the environment has it, else uv: TGI's venv is made by `uv sync`, which drops pip.
if "$py" -m pip --version >/dev/null 2>&1; then
    pkg_list() { "$py" -m pip list --format=freeze; }
    pkg_install() { "$py" -m pip install --no-cache-dir "$@"; }
elif command -v uv >/dev/null 2>&1; then
    pkg_list() { uv pip list --python "$py" --format=freeze; }
    pkg_install() { uv pip install --python "$py" --no-cache "$@"; }
else
    echo "install_specplug.sh: $py has no pip and there is no uv" >&2
    exit 1
fi

# `list --format=freeze` writes name==version for editable and direct-URL installs too
# (pip freeze's `-e ...` and `name @ file://...` are no valid constraints). Kept: lines
# with a PEP 440 version; not specplug itself, which a reinstall may upgrade.
pkg_list >"$tmp/installed.txt"
pep440='^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?==([0-9]+!)?[0-9]+(\.[0-9]+)*((a|b|rc)[0-9]+)?(\.post[0-9]+)?(\.dev[0-9]+)?(\+[A-Za-z0-9]+(\.[A-Za-z0-9]+)*)?$'
grep -E "$pep440" "$tmp/installed.txt" | grep -viE '^specplug==' >"$tmp/constraints.txt" || true
if ! grep -qiE '^torch==' "$tmp/constraints.txt"; then
    echo "install_specplug.sh: no torch in $py's environment to keep" >&2
    exit 1
fi
grep -vE "$pep440" "$tmp/installed.txt" | sed 's/^/install_specplug.sh: not pinned: /' >&2 || true
pkg_install --constraint "$tmp/constraints.txt" "$src"

# Every registered drafter imports (the compiled ones need numba). Benchmark peers wrap
# another engine's drafter for `specplug bench` and are not registered with SGLang or TGI.
"$py" -c '
from specplug.drafters import registry
names = [s.name for s in registry.specs() if not s.peer and s.load_class()]
print("specplug drafters import:", ", ".join(names))
'
