// SPDX-License-Identifier: Apache-2.0
// Calls FlashInfer's routing top-k (RoutingKernelTopK.cuh, from the FlashInfer
// whose include directory is on the compiler's path) the way its Renormalize
// routing kernels do: one warp per token, lane l holding experts i*32+l, padding
// with -inf, top-k by topk::reduceTopK over the warp.
//
//   topk_probe INPUT OUTPUT
//
// INPUT:  int32 count, then per case: int32 tokens, experts, top_k, dtype
//         (0: fp32 keys, 1: bf16 keys as raw uint16 bits), then tokens*experts keys.
// OUTPUT: per case: tokens*top_k int32 expert ids, then tokens*top_k fp32 keys.
//
// PROBE_LAYOUT selects the template tiers of the header's FlashInfer:
//   66: <= 0.6.6, K = MaxNumTopK = 10, N = 4 (<= 128 experts) or 16 (<= 512)
//   67: >= 0.6.7, K = 8 / 16 / 32 by top_k, N = 4 / 16 / 64 (<= 128 / 512 / 2048)
// Before every case a kernel leaves non-negative values in local memory, as
// earlier kernels do in a real process (the <= 0.6.6 bug reads stale values).

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "RoutingKernelTopK.cuh"

namespace cg = cooperative_groups;
namespace topk = moe::dev::routing::topk;

#ifndef PROBE_LAYOUT
#error "define PROBE_LAYOUT as 66 or 67"
#endif

#define CHECK(call)                                                              \
  do {                                                                           \
    cudaError_t err_ = (call);                                                   \
    if (err_ != cudaSuccess) {                                                   \
      std::fprintf(stderr, "CUDA error %s at %s:%d\n", cudaGetErrorString(err_), \
                   __FILE__, __LINE__);                                          \
      std::exit(3);                                                              \
    }                                                                            \
  } while (0)

template <typename T>
__device__ inline T from_key(float v);
template <>
__device__ inline float from_key<float>(float v) { return v; }
template <>
__device__ inline __nv_bfloat16 from_key<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

template <typename T>
__device__ inline T load_key(const void* keys, size_t i);
template <>
__device__ inline float load_key<float>(const void* keys, size_t i) {
  return static_cast<const float*>(keys)[i];
}
template <>
__device__ inline __nv_bfloat16 load_key<__nv_bfloat16>(const void* keys, size_t i) {
  return static_cast<const __nv_bfloat16*>(keys)[i];
}

template <typename T, int N, int K>
__global__ void probe_kernel(const void* keys, int tokens, int experts, int top_k,
                             int32_t* out_ids, float* out_keys) {
  auto block = cg::this_thread_block();
  auto warp = cg::tiled_partition<topk::WarpSize>(block);
  int token = (blockIdx.x * blockDim.x + threadIdx.x) / topk::WarpSize;
  int lane = threadIdx.x % topk::WarpSize;
  if (token >= tokens) return;
  T minValue = from_key<T>(-INFINITY);
  T score[N];
  int32_t idx[N];
  for (int i = 0; i < N; ++i) {
    int expert = i * topk::WarpSize + lane;
    score[i] = expert < experts ? load_key<T>(keys, size_t(token) * experts + expert) : minValue;
    idx[i] = expert;
  }
  T out[K];
  int32_t outIdx[K];
  topk::reduceTopK(warp, out, outIdx, score, idx, minValue, top_k);
  if (lane == 0) {
    for (int k = 0; k < top_k; ++k) {
      out_ids[size_t(token) * top_k + k] = outIdx[k];
      out_keys[size_t(token) * top_k + k] = static_cast<float>(out[k]);
    }
  }
}

// Leaves non-negative values in the local memory of every thread.
__global__ void dirty_kernel(float* sink, int seed) {
  volatile float scratch[96];
  for (int i = 0; i < 96; ++i) scratch[i] = float((i * 7 + seed + threadIdx.x) % 13);
  float acc = 0.f;
  for (int i = 0; i < 96; ++i) acc += scratch[(i * 5) % 96];
  if (acc < -1.f) sink[threadIdx.x] = acc;
}

template <typename T, int N, int K>
void launch(const void* keys, int tokens, int experts, int top_k, int32_t* ids, float* vals) {
  int threads = 256;
  int blocks = (tokens * topk::WarpSize + threads - 1) / threads;
  probe_kernel<T, N, K><<<blocks, threads>>>(keys, tokens, experts, top_k, ids, vals);
}

template <typename T, int N>
bool dispatch_k(const void* keys, int tokens, int experts, int top_k, int32_t* ids,
                float* vals) {
#if PROBE_LAYOUT == 66
  if (top_k > topk::MaxNumTopK) return false;
  launch<T, N, topk::MaxNumTopK>(keys, tokens, experts, top_k, ids, vals);
  return true;
#else
  if (top_k <= 8) {
    launch<T, N, 8>(keys, tokens, experts, top_k, ids, vals);
  } else if (top_k <= 16) {
    launch<T, N, 16>(keys, tokens, experts, top_k, ids, vals);
  } else if (top_k <= topk::MaxSupportedTopExperts) {
    launch<T, N, 32>(keys, tokens, experts, top_k, ids, vals);
  } else {
    return false;
  }
  return true;
#endif
}

template <typename T>
bool dispatch(const void* keys, int tokens, int experts, int top_k, int32_t* ids, float* vals) {
  if (experts <= 128) return dispatch_k<T, 4>(keys, tokens, experts, top_k, ids, vals);
  if (experts <= 512) return dispatch_k<T, 16>(keys, tokens, experts, top_k, ids, vals);
#if PROBE_LAYOUT != 66
  if (experts <= 2048) return dispatch_k<T, 64>(keys, tokens, experts, top_k, ids, vals);
#endif
  return false;
}

static void read_exact(FILE* f, void* p, size_t n) {
  if (std::fread(p, 1, n, f) != n) {
    std::fprintf(stderr, "short input\n");
    std::exit(2);
  }
}

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s INPUT OUTPUT\n", argv[0]);
    return 2;
  }
  FILE* in = std::fopen(argv[1], "rb");
  FILE* out = std::fopen(argv[2], "wb");
  if (!in || !out) {
    std::fprintf(stderr, "cannot open files\n");
    return 2;
  }
  int32_t count = 0;
  read_exact(in, &count, sizeof(count));
  float* sink = nullptr;
  CHECK(cudaMalloc(&sink, 1024 * sizeof(float)));
  for (int c = 0; c < count; ++c) {
    int32_t header[4];
    read_exact(in, header, sizeof(header));
    int tokens = header[0], experts = header[1], top_k = header[2], dtype = header[3];
    size_t element = dtype == 1 ? 2 : 4;
    size_t bytes = size_t(tokens) * experts * element;
    std::vector<unsigned char> host(bytes);
    read_exact(in, host.data(), bytes);
    void* keys = nullptr;
    int32_t* ids = nullptr;
    float* vals = nullptr;
    size_t outputs = size_t(tokens) * top_k;
    CHECK(cudaMalloc(&keys, bytes));
    CHECK(cudaMalloc(&ids, outputs * sizeof(int32_t)));
    CHECK(cudaMalloc(&vals, outputs * sizeof(float)));
    CHECK(cudaMemcpy(keys, host.data(), bytes, cudaMemcpyHostToDevice));
    CHECK(cudaMemset(ids, 0xff, outputs * sizeof(int32_t)));
    dirty_kernel<<<64, 256>>>(sink, c);
    bool ok = dtype == 1 ? dispatch<__nv_bfloat16>(keys, tokens, experts, top_k, ids, vals)
                         : dispatch<float>(keys, tokens, experts, top_k, ids, vals);
    if (!ok) {
      std::fprintf(stderr, "case %d: experts %d / top_k %d outside this header's tiers\n", c,
                   experts, top_k);
      return 4;
    }
    CHECK(cudaGetLastError());
    CHECK(cudaDeviceSynchronize());
    std::vector<int32_t> host_ids(outputs);
    std::vector<float> host_vals(outputs);
    CHECK(cudaMemcpy(host_ids.data(), ids, outputs * sizeof(int32_t), cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(host_vals.data(), vals, outputs * sizeof(float), cudaMemcpyDeviceToHost));
    std::fwrite(host_ids.data(), sizeof(int32_t), outputs, out);
    std::fwrite(host_vals.data(), sizeof(float), outputs, out);
    CHECK(cudaFree(keys));
    CHECK(cudaFree(ids));
    CHECK(cudaFree(vals));
  }
  std::fclose(out);
  std::fclose(in);
  return 0;
}
