"""The sigmoid of the path a guarded no-group layer takes in vLLM 0.34.0 on
CUDA: FusedTopKBiasRouter -> ops.topk_sigmoid -> vllm::moe::topkGating<...,
SCORING_SIGMOID> (256 experts, fp32 logits), launched from the wheel's own
sm_90 cubin (_moe_C_stable_libtorch.abi3.so, cuobjdump -xelf), and torch's
fp32 sigmoid on CUDA, against the exact sigmoid (float64), per band of logits."""
import math
import numpy as np
import cupy as cp
import torch

NAME = ("_ZN4vllm3moe10topkGatingILi8ELi256ELi4ELi16ELi32EifLNS0_11ScoringFunc"
        "E1EEEvPKT5_PKbPfiPT4_PiiiibPKfdS7_")
rows, experts, k = 8192, 256, 8
low, high = -96.0, 0.0
planted = np.linspace(low, high, rows * k, endpoint=False, dtype=np.float32).reshape(rows, k)
logits = np.full((rows, experts), -100.0, dtype=np.float32)
rng = np.random.default_rng(0)
cols = np.stack([rng.permutation(experts)[:k] for _ in range(rows)])
np.put_along_axis(logits, cols, planted, axis=1)
x = cp.asarray(logits)
out = cp.zeros((rows, k), dtype=cp.float32)
idx = cp.zeros((rows, k), dtype=cp.int32)
src = cp.zeros((rows, k), dtype=cp.int32)
bias = cp.zeros(experts, dtype=cp.float32)
kernel = cp.RawModule(path="vllm/moe_C_topk_sm_90.cubin").get_function(NAME)
kernel(((rows + 3) // 4,), (32, 4), (x, np.uint64(0), out, np.int32(rows), idx, src,
        np.int32(k), np.int32(0), np.int32(experts), np.bool_(False), bias,
        np.float64(1.0), np.uint64(0)))
cp.cuda.runtime.deviceSynchronize()
got_ids = cp.asnumpy(idx); got = cp.asnumpy(out)
picked = np.take_along_axis(logits, got_ids.astype(np.int64), axis=1)
assert (np.sort(picked, 1) == np.sort(planted, 1)).all(), "topkGating picked other experts"
vllm_x, vllm_s = picked.ravel().astype(np.float64), got.ravel().astype(np.float64)
t = torch.from_numpy(planted.ravel().copy()).cuda()
torch_s = torch.sigmoid(t).cpu().double().numpy()
torch_x = planted.ravel().astype(np.float64)
def table(name, xs, ss):
    exact = 1.0 / (1.0 + np.exp(-xs))
    err = np.abs(ss - exact) / exact
    zero = ss == 0
    print(f"{name}: {xs.size} logits in [{low:g}, {high:g}); weight 0 up to a logit of "
          f"{xs[zero].max() if zero.any() else None}; max rel error above that {err[~zero].max():.3e}")
    for b in np.arange(low, high, 8.0):
        m = (xs >= b) & (xs < b + 8)
        print(f"  [{b:g},{b+8:g})  n={m.sum():5d}  zero={zero[m].sum():5d}  max_rel_err={err[m & ~zero].max() if (m & ~zero).any() else float('nan'):.3e}")
table("vLLM 0.34.0 topkGating<8,256,4,16,32,int,float,SIGMOID> (sm_90 cubin)", vllm_x, vllm_s)
table(f"torch {torch.__version__} torch.sigmoid fp32 on CUDA", torch_x, torch_s)
