#!/bin/bash
# One device call: build and check FlashInfer 0.7.4 and 0.7.2.post1's routing
# kernels side by side (sm_90a), then vLLM 0.34.0's fallback sigmoid.
set -u
cd "$(dirname "$0")"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
export CUBLAS_INCLUDE_DIR=$PWD/cublas-include VLLM_MOE_ROUTING_CACHE=/tmp/rk-cache
export VLLM_MOE_ROUTING_BUILD_JOBS=${JOBS:-6} VLLM_MOE_ROUTING_SPLIT_COMPILE=${SPLIT:-2}
env_file=$OUT/device-env.txt
{ date -u; nvidia-smi; nvcc --version | tail -1; echo "cores $(nproc)"; python3 --version
  python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))'
  echo "JOBS=$VLLM_MOE_ROUTING_BUILD_JOBS SPLIT=$VLLM_MOE_ROUTING_SPLIT_COMPILE per release"; } > "$env_file" 2>&1
start=$(date +%s)
timeout 90 python3 vllm_sigmoid.py > "$OUT/vllm-sigmoid.txt" 2>&1
echo "vllm sigmoid exit $? at $(( $(date +%s) - start )) s" >> "$env_file"
for v in 0.7.4 0.7.2.post1; do
  (
    timeout ${LIMIT:-540} python3 -m vllm_moe_routing_plugin verify --json --no-topk-probe \
      --flashinfer-include fi/$v --flashinfer-version $v \
      --trtllm-headers bmm/trtllmGen_bmm_export > "$OUT/routing-$v.json" \
      2> >(while IFS= read -r line; do echo "$(( $(date +%s) - start ))s $line"; done > "$OUT/build-$v.log")
    rc=$?
    echo "FlashInfer $v: verify exit $rc at $(( $(date +%s) - start )) s" >> "$env_file"
    python3 render.py "$OUT/routing-$v.json" > "$OUT/routing-$v.txt" 2>&1
  ) &
done
wait
cat "$env_file"; grep -h -E '^(FINDING|verdict|routing kernels|  flashinfer#|    no groups|    8 groups)' "$OUT"/routing-*.txt
head -30 "$OUT/vllm-sigmoid.txt"
