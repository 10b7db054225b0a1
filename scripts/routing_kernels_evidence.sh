#!/usr/bin/env bash
# FlashInfer's own routing kernels, release by release, on this machine's GPU
# (docs/verify.md, "Routing-kernel check"; docs/evidence/*-routing/).
#
#   bash scripts/routing_kernels_evidence.sh OUT_DIR VERSION...
#
# For each FlashInfer VERSION: if WHEELS (a folder) holds its flashinfer-python
# wheel, the wheel is installed (no dependencies) into a scratch folder and
# `vllm-moe-routing verify` checks it as the installed FlashInfer; otherwise
# verify runs with `--flashinfer-version VERSION` on the kernels already built
# for it in the cache (VLLM_MOE_ROUTING_CACHE or ~/.cache/vllm-moe-routing/
# routing-kernels; built where nvcc is, with `verify --flashinfer-include
# WHEEL_TREE --arch sm_90a`). Writes OUT_DIR/routing-VERSION.json (verify --json),
# OUT_DIR/routing-VERSION.txt (the same report as text) and OUT_DIR/summary.txt
# (each version's exit status and findings). The top-k probe is skipped: the
# routing kernels contain it.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${1:?usage: scripts/routing_kernels_evidence.sh OUT_DIR VERSION...}
shift
mkdir -p "$out"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
{
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    nvidia-smi -L
    nvcc --version | tail -1
    python3 -c 'import torch; print("torch", torch.__version__)'
} >"$out/summary.txt" 2>&1
for version in "$@"; do
    site=""
    how="from the cache, --flashinfer-version $version"
    options=(--flashinfer-version "$version")
    wheel=$(ls "${WHEELS:-/nonexistent}"/flashinfer_python-"$version"-*.whl 2>/dev/null | head -1)
    if [ -n "$wheel" ]; then
        site=$(mktemp -d)
        python3 -m pip install --quiet --no-deps --no-index --target "$site" "$wheel"
        options=()
        how="installed from $(basename "$wheel")"
    fi
    PYTHONPATH=${site:+$site:}$PYTHONPATH python3 -m vllm_moe_routing_plugin verify \
        --json --no-topk-probe "${options[@]}" >"$out/routing-$version.json"
    rc=$?
    python3 - "$out/routing-$version.json" >"$out/routing-$version.txt" <<'EOF'
import json, sys
from vllm_moe_routing_plugin.diagnostics import verify
print(verify.render(json.load(open(sys.argv[1]))))
EOF
    {
        echo "FlashInfer $version ($how): exit $rc"
        grep -E '^(FINDING|verdict|routing kernels)' "$out/routing-$version.txt" | sed 's/^/  /'
    } >>"$out/summary.txt"
    [ -n "$site" ] && rm -rf "$site"
done
cat "$out/summary.txt"
