#!/usr/bin/env bash
# The project's tests: lint, then the test suite in each environment.
#
#   bash scripts/test.sh [ENV ...]
#
# Default environments: plain (no vLLM), vllm-0.19.1-fi0.6.7 (vLLM 0.19.1 with
# FlashInfer 0.6.7 over its 0.6.6 pins: the patch path), vllm-0.19.1 (as pinned:
# the guard with the real FlashInfer 0.6.6), vllm-0.17.1 (as pinned: the guard
# on the 0.17 class with FlashInfer 0.6.4) and vllm-0.33.0 (the newest release:
# the native path). See scripts/env.sh; the full release matrix is
# scripts/matrix.py.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

envs=("$@")
[ ${#envs[@]} -gt 0 ] || envs=(plain vllm-0.19.1-fi0.6.7 vllm-0.19.1 vllm-0.17.1 vllm-0.33.0)

plain=$(bash scripts/env.sh plain)
VIRTUAL_ENV="$plain" uv pip install --quiet "ruff==0.14.*" >&2
"$plain/bin/ruff" check src tests scripts
"$plain/bin/ruff" format --check src tests scripts

status=0
for name in "${envs[@]}"; do
  venv=$(bash scripts/env.sh "$name")
  echo "=== tests in $name"
  "$venv/bin/python" -m pytest -p no:cacheprovider -q tests || status=1
done
exit $status
