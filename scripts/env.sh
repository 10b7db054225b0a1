#!/usr/bin/env bash
# Create (or reuse) one of the project's virtual environments and print its path.
#
#   bash scripts/env.sh NAME
#
# NAME is "plain" (no vLLM) or "vllm-<version>[-fi<version>]": that vLLM release
# with its own pins, or with flashinfer-python (and flashinfer-cubin, where the
# release installs it) at the -fi version installed over the pins (--no-deps),
# e.g. vllm-0.19.1-fi0.6.7.
#
# Environments live outside the clone, in
# ${VLLM_MOE_ROUTING_VENVS:-~/.cache/vllm-moe-routing/venvs}, and uv's cache
# (~/.cache/uv) makes a rebuild take seconds. An environment is rebuilt when its
# spec changes. The plugin itself is (re)installed from this checkout every time.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
name=${1:?usage: scripts/env.sh NAME}

case "$name" in
  plain) vllm=""; fi_version="" ;;
  vllm-*-fi*) rest=${name#vllm-}; vllm=${rest%%-fi*}; fi_version=${rest##*-fi} ;;
  vllm-*) vllm=${name#vllm-}; fi_version="" ;;
  *) echo "unknown environment: $name" >&2; exit 2 ;;
esac
if [ -z "$vllm" ]; then
  packages="packaging nvidia-ml-py pytest hypothesis"
else
  packages="vllm==$vllm pytest hypothesis"
fi
spec="$packages|$fi_version"

if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --quiet --user uv >&2 || python3 -m pip install --quiet uv >&2
  export PATH="$HOME/.local/bin:$PATH"
fi

venvs=${VLLM_MOE_ROUTING_VENVS:-$HOME/.cache/vllm-moe-routing/venvs}
venv="$venvs/$name"
python=${VLLM_MOE_ROUTING_PYTHON:-python3}
mkdir -p "$venvs"

if [ "$(cat "$venv/.spec" 2>/dev/null)" != "$spec" ]; then
  echo "creating $venv ($spec)" >&2
  rm -rf "$venv"
  uv venv --quiet --python "$python" "$venv" >&2
  # shellcheck disable=SC2086
  VIRTUAL_ENV="$venv" uv pip install --quiet $packages >&2
  if [ -n "$fi_version" ]; then
    over_pins="flashinfer-python==$fi_version"
    if "$venv/bin/python" -c "import importlib.metadata as m; m.version('flashinfer-cubin')" 2>/dev/null; then
      over_pins="$over_pins flashinfer-cubin==$fi_version"
    fi
    # shellcheck disable=SC2086
    VIRTUAL_ENV="$venv" uv pip install --quiet --no-deps $over_pins >&2
  fi
  echo "$spec" >"$venv/.spec"
fi

VIRTUAL_ENV="$venv" uv pip install --quiet --no-deps --compile-bytecode \
  --reinstall-package vllm-moe-routing-plugin "$root" >&2
echo "$venv"
