#!/usr/bin/env bash
# The main job: `vllm-moe-routing status` in an environment with vLLM.
#
#   bash scripts/status.sh [status options]     e.g. --capability 10.0 --json
#
# MOE_ROUTING_ENV picks the environment (scripts/env.sh; default
# vllm-0.19.1-fi0.6.7: vLLM 0.19.1 with FlashInfer 0.6.7 over its pins).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv=$(bash scripts/env.sh "${MOE_ROUTING_ENV:-vllm-0.19.1-fi0.6.7}")
exec "$venv/bin/vllm-moe-routing" status "$@"
