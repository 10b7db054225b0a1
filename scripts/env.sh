#!/usr/bin/env bash
# Create (or reuse) one of the project's virtual environments and print its path.
#
#   bash scripts/env.sh NAME
#
# NAME is a row of the table below. Environments live outside the clone, in
# ${VLLM_MOE_ROUTING_VENVS:-~/.cache/vllm-moe-routing/venvs}, and uv's cache
# (~/.cache/uv) makes a rebuild take seconds. An environment is rebuilt when its
# row changes. The plugin itself is (re)installed from this checkout every time.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
name=${1:?usage: scripts/env.sh NAME}

# name | packages | packages installed over vLLM's pins with --no-deps
spec_for() {
  case "$1" in
    plain)               echo "packaging nvidia-ml-py pytest|" ;;
    vllm-0.19.1-fi0.6.7) echo "vllm==0.19.1 pytest|flashinfer-python==0.6.7 flashinfer-cubin==0.6.7" ;;
    vllm-0.19.1)         echo "vllm==0.19.1 pytest|" ;;
    vllm-0.33.0)         echo "vllm==0.33.0 pytest|" ;;
    *) echo "unknown environment: $1" >&2; return 1 ;;
  esac
}

spec=$(spec_for "$name")
packages=${spec%%|*}
over_pins=${spec#*|}

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
  if [ -n "$over_pins" ]; then
    # shellcheck disable=SC2086
    VIRTUAL_ENV="$venv" uv pip install --quiet --no-deps $over_pins >&2
  fi
  echo "$spec" >"$venv/.spec"
fi

VIRTUAL_ENV="$venv" uv pip install --quiet --no-deps --reinstall-package vllm-moe-routing-plugin "$root" >&2
echo "$venv"
