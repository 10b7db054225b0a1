// SPDX-License-Identifier: Apache-2.0
// Drives the installed FlashInfer's own routing kernels through its own
// Routing::Runner::run (csrc/trtllm_fused_moe_runner.cu, compiled next to this
// file from the wheel's sources) and writes what the MoE GEMMs would consume.
//
//   routing_driver CASES OUTDIR [FIRST]
//
// CASES has one case a line:
//   name method tokens experts top_k n_group topk_group scale logits_dtype logits_file
//   bias_dtype bias_file
// (method: FlashInfer's RoutingMethodType value; dtypes: bf16 | fp32 | none).
// For case i it writes OUTDIR/i.bin: int32 [tokens, top_k, permuted_size,
// non_exiting_ctas, tile], then per expanded index t*top_k+k: int32 expert as the
// GEMMs see it (the CTA's batch through expandedIdxToPermutedIdx, -1 where the
// slot is not mapped), float32 weight (mPtrTopKWeights), int32 expert and
// float32 score of the packed top-k (mPtrTopKPacked). A failed FlashInfer check
// writes OUTDIR/i.err; a CUDA error ends the program (the caller resumes at
// FIRST = i + 1).
//
// The call's argument list comes from the release's runner.h
// (ROUTING_RUNNER_ARGS in the generated routing_call.h).
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "flashinfer/trtllm/fused_moe/RoutingKernel.h"
#include "routing_runner.h"  // the release's runner.h, up to its Routing namespace

namespace tk = tensorrt_llm::kernels::trtllmgen_moe;
namespace btg = batchedGemm::trtllm::gen;

#define CUDA_OK(call)                                                          \
  do {                                                                         \
    cudaError_t err_ = (call);                                                 \
    if (err_ != cudaSuccess) {                                                 \
      std::fprintf(stderr, "CUDA error %s at %s:%d\n", cudaGetErrorString(err_), \
                   __FILE__, __LINE__);                                        \
      std::exit(3);                                                            \
    }                                                                          \
  } while (0)

static std::vector<char> read_file(std::string const& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  return std::vector<char>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

static btg::Dtype dtype_of(std::string const& name) {
  return name == "fp32" ? btg::Dtype::Fp32 : btg::Dtype::Bfloat16;
}

template <typename T>
static T* device_copy(std::vector<char> const& bytes) {
  T* ptr = nullptr;
  CUDA_OK(cudaMalloc(&ptr, bytes.size()));
  CUDA_OK(cudaMemcpy(ptr, bytes.data(), bytes.size(), cudaMemcpyHostToDevice));
  return ptr;
}

template <typename T>
static T* device_fill(size_t count, int byte) {
  T* ptr = nullptr;
  CUDA_OK(cudaMalloc(&ptr, count * sizeof(T) + 16));
  CUDA_OK(cudaMemset(ptr, byte, count * sizeof(T) + 16));
  return ptr;
}

template <typename T>
static std::vector<T> host_copy(T const* ptr, size_t count) {
  std::vector<T> out(count);
  CUDA_OK(cudaMemcpy(out.data(), ptr, count * sizeof(T), cudaMemcpyDeviceToHost));
  return out;
}

static int32_t tile_for(int32_t tokens, int32_t top_k, int32_t experts) {
  // FlashInfer's launcher (computeSelectedTileN): the next power of two of the
  // average tokens per expert, within the tiles its GEMMs support (8 - 64).
  float average = static_cast<float>(tokens) * top_k / experts;
  int32_t tile = 8;
  while (tile < average && tile < 64) tile *= 2;
  return tile;
}

static void run_case(std::istringstream& line, std::string const& outdir, int index) {
  std::string name, logits_dtype, logits_file, bias_dtype, bias_file;
  int method = 0, numTokens = 0, numExperts = 0, topK = 0, nGroup = 0, topkGroup = 0;
  float routedScalingFactor = 1.f;
  line >> name >> method >> numTokens >> numExperts >> topK >> nGroup >> topkGroup >>
      routedScalingFactor >> logits_dtype >> logits_file >> bias_dtype >> bias_file;
  if (!line) throw std::runtime_error("malformed case line");

  int32_t const tile = tile_for(numTokens, topK, numExperts);
  int32_t const expanded = numTokens * topK;
  int32_t const maxPadded = tk::Routing::getMaxPermutedPaddedCount(numTokens, topK, numExperts, tile);
  int32_t const maxCtas = tk::Routing::getMaxNumCtasInBatchDim(numTokens, topK, numExperts, tile);

  void* routingLogits = device_copy<char>(read_file(logits_file));
  void* routingBias = bias_dtype == "none" ? nullptr : device_copy<char>(read_file(bias_file));
  // Filled with 0xff so that anything the kernels leave unwritten reads as -1 / NaN.
  int32_t* routingExpertIndexes = device_fill<int32_t>(expanded, 0xff);
  int32_t* expertCountHistogram = device_fill<int32_t>(std::max(numExperts * 2, 256 * 2), 0);
  int32_t* permutedIdxSize = device_fill<int32_t>(1, 0xff);
  int32_t* expandedIdxToPermutedIdx = device_fill<int32_t>(expanded, 0xff);
  int32_t* permutedIdxToExpandedIdx = nullptr;  // FlashInfer's launcher passes none
  int32_t* permutedIdxToTokenIdx = device_fill<int32_t>(maxPadded + 1, 0xff);
  int32_t* expertIds = nullptr;  // route from the logits, not pre-computed ids
  __nv_bfloat16* expertWeights = device_fill<__nv_bfloat16>(expanded, 0xff);
  int32_t* numTokensPerExpert = device_fill<int32_t>(numExperts, 0);
  int32_t* ctaIdxXyToBatchIdx = device_fill<int32_t>(maxCtas, 0xff);
  int32_t* ctaIdxXyToMnLimit = device_fill<int32_t>(maxCtas, 0xff);
  int32_t* numNonExitingCtas = device_fill<int32_t>(1, 0xff);
  int32_t const numFusedSharedExpert = 0;
  int32_t const localExpertOffset = 0;
  int32_t const localNumExperts = numExperts;
  btg::Dtype const dtypeElt = btg::Dtype::Bfloat16;
  btg::Dtype const dtypeBias = dtype_of(bias_dtype);
  btg::Dtype const dtypeLogits = dtype_of(logits_dtype);
  bool const useRoutingScalesOnInput = false;
  bool const useDeepSeekFp8 = false;
  bool const normTopkProb = true;
  int16_t* routing_replay_out = nullptr;
  bool const enable_pdl = true;  // FlashInfer enables PDL on SM90 and newer
  auto const routingMethodType = static_cast<tk::Routing::RoutingMethodType>(method);
  cudaStream_t stream;
  CUDA_OK(cudaStreamCreate(&stream));

  std::string const base = outdir + "/" + std::to_string(index);
  try {
    tk::Routing::Runner runner(tile);
    runner.run(ROUTING_RUNNER_ARGS);
  } catch (std::exception const& e) {
    std::ofstream(base + ".err") << e.what() << "\n";
    return;
  }
  CUDA_OK(cudaGetLastError());
  CUDA_OK(cudaStreamSynchronize(stream));

  auto const size = host_copy(permutedIdxSize, 1)[0];
  auto const ctas = host_copy(numNonExitingCtas, 1)[0];
  auto const toPermuted = host_copy(expandedIdxToPermutedIdx, expanded);
  auto const toToken = host_copy(permutedIdxToTokenIdx, maxPadded + 1);
  auto const batch = host_copy(ctaIdxXyToBatchIdx, maxCtas);
  auto const limit = host_copy(ctaIdxXyToMnLimit, maxCtas);
  auto const weights = host_copy(expertWeights, expanded);
  auto const packed =
      host_copy(reinterpret_cast<moe::dev::routing::PackedScoreIdx<__nv_bfloat16>*>(routingExpertIndexes),
                expanded);

  std::ofstream out(base + ".bin", std::ios::binary);
  int32_t header[5] = {numTokens, topK, size, ctas, tile};
  out.write(reinterpret_cast<char const*>(header), sizeof(header));
  for (int32_t e = 0; e < expanded; ++e) {
    int32_t expert = -1;
    int32_t const p = toPermuted[e];
    // The GEMMs read row p in CTA p / tile, of expert (batch) ctaIdxXyToBatchIdx,
    // if p lies below that CTA's limit and is mapped back to this token.
    if (p >= 0 && p < size && p < maxPadded && p / tile < maxCtas && p / tile < ctas &&
        p < limit[p / tile] && toToken[p] == e / topK) {
      expert = batch[p / tile] + localExpertOffset;
    }
    float const weight = __bfloat162float(weights[e]);
    int32_t const packedExpert = packed[e].idx;
    float const packedScore = __bfloat162float(packed[e].score);
    out.write(reinterpret_cast<char const*>(&expert), 4);
    out.write(reinterpret_cast<char const*>(&weight), 4);
    out.write(reinterpret_cast<char const*>(&packedExpert), 4);
    out.write(reinterpret_cast<char const*>(&packedScore), 4);
  }
  for (void* ptr : {routingLogits, routingBias, static_cast<void*>(routingExpertIndexes),
                    static_cast<void*>(expertCountHistogram), static_cast<void*>(permutedIdxSize),
                    static_cast<void*>(expandedIdxToPermutedIdx),
                    static_cast<void*>(permutedIdxToTokenIdx), static_cast<void*>(expertWeights),
                    static_cast<void*>(numTokensPerExpert), static_cast<void*>(ctaIdxXyToBatchIdx),
                    static_cast<void*>(ctaIdxXyToMnLimit), static_cast<void*>(numNonExitingCtas)}) {
    if (ptr != nullptr) CUDA_OK(cudaFree(ptr));
  }
  CUDA_OK(cudaStreamDestroy(stream));
}

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s CASES OUTDIR [FIRST]\n", argv[0]);
    return 2;
  }
  int const first = argc > 3 ? std::atoi(argv[3]) : 0;
  std::ifstream cases(argv[1]);
  std::string text;
  for (int index = 0; std::getline(cases, text); ++index) {
    if (index < first || text.empty()) continue;
    std::istringstream line(text);
    try {
      run_case(line, argv[2], index);
    } catch (std::exception const& e) {
      std::ofstream(std::string(argv[2]) + "/" + std::to_string(index) + ".err") << e.what() << "\n";
    }
    std::printf("case %d done\n", index);
    std::fflush(stdout);
  }
  return 0;
}
