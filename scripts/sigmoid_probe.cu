// FlashInfer's routing sigmoid, `sigmoid_accurate` in
// include/flashinfer/trtllm/fused_moe/RoutingKernel.cuh (0.5f * tanhf(0.5f * x) + 0.5f),
// against the exact sigmoid, per band of logits. FlashInfer's JIT builds with
// -use_fast_math, which makes tanhf tanh.approx.f32 (check: nvcc -ptx).
//
//   nvcc -arch=sm_90a -O3 -use_fast_math scripts/sigmoid_probe.cu -o sigmoid_probe && ./sigmoid_probe
//
// On an H200 (docs/evidence/2026-12-02-h200-routing-2/sigmoid-fast-math.txt): within
// 1e-4 above a logit of -7, 1.4 % at -13 to -12, 25 % at -15 to -14, 0 below about -16.
#include <cstdio>
#include <cmath>
__global__ void k(float* o, const float* x, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) o[i] = 0.5f * tanhf(0.5f * x[i]) + 0.5f;
}
int main() {
  const int n = 2401;  // x = -24.00 .. 0.00 step 0.01
  float hx[n], ho[n];
  for (int i = 0; i < n; ++i) hx[i] = -24.0f + 0.01f * i;
  float *dx, *dout;
  cudaMalloc(&dx, n * 4); cudaMalloc(&dout, n * 4);
  cudaMemcpy(dx, hx, n * 4, cudaMemcpyHostToDevice);
  k<<<(n + 255) / 256, 256>>>(dout, dx, n);
  cudaMemcpy(ho, dout, n * 4, cudaMemcpyDeviceToHost);
  printf("# band  max_rel_err  zeros  (of 100 logits per band)\n");
  for (int b = 0; b < 24; ++b) {
    double worst = 0; int zeros = 0;
    for (int i = b * 100; i < (b + 1) * 100; ++i) {
      double exact = 1.0 / (1.0 + exp(-(double)hx[i]));
      if (ho[i] == 0.0f) ++zeros;
      double rel = fabs(ho[i] - exact) / exact;
      if (rel > worst) worst = rel;
    }
    printf("[%6.2f,%6.2f)  %.3e  %d\n", hx[b * 100], hx[b * 100] + 1.0, worst, zeros);
  }
  return 0;
}
