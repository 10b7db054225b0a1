#!/usr/bin/env bash
# Evidence from a machine with a real NVIDIA GPU (docs/reliability.md, "Real GPU").
#
#   bash scripts/gpu_evidence.sh OUT_DIR [WHEEL]
#
# Installs the plugin (WHEEL, or this checkout) without its dependencies
# (packaging and nvidia-ml-py must be there; vLLM is not needed), then writes
# nvidia-smi's GPU list, `vllm-moe-routing status --json` with CUDA_VISIBLE_DEVICES
# unset and set to the GPU's UUID, and scripts/gpu_check.py's report.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${1:?usage: scripts/gpu_evidence.sh OUT_DIR [WHEEL]}
mkdir -p "$out"
python3 -m pip install --quiet --no-deps --no-index --target /tmp/moe-routing-site "${2:-.}"
export PYTHONPATH=/tmp/moe-routing-site${PYTHONPATH:+:$PYTHONPATH}
export PATH=/tmp/moe-routing-site/bin:$PATH
nvidia-smi -L >"$out/nvidia-smi.txt"
set +e
vllm-moe-routing status --json >"$out/status.json"
echo "exit status: $?" >>"$out/nvidia-smi.txt"
uuid=$(nvidia-smi --query-gpu=uuid --format=csv,noheader | head -1)
CUDA_VISIBLE_DEVICES=$uuid vllm-moe-routing status --json >"$out/status-uuid.json"
echo "exit status with CUDA_VISIBLE_DEVICES=$uuid: $?" >>"$out/nvidia-smi.txt"
python3 scripts/gpu_check.py >"$out/gpu-check.json"
rc=$?
echo "gpu_check exit status: $rc" >>"$out/nvidia-smi.txt"
exit $rc
