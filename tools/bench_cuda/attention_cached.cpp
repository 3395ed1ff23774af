// `llm-bench cuda` section "attention_cached": one decoding step's attention over a full KV cache at
// Llama-3-8B's attention shape (32 query heads, 8 kv heads, head dim 128, bf16), 4096 cached
// positions, one sequence and 16. Decoding is bound by reading the cache, so rows are GB/s of cached
// keys and values read against the H200's HBM bandwidth, for the split kernel (fast) and the simple
// one-warp-per-head kernel.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cuda/attention_cached.h"
#include "kernels/cuda/fused.h"
#include "tools/bench_cuda/bench_cuda.h"

namespace llm::bench_cuda {
namespace {

constexpr double kHbmGBs = 4800.0;  // H200 HBM3e

void bench_attention_cached() {
  using cuda::bf16;
  cudaStream_t stream;
  cudaStreamCreate(&stream);
  const int64_t S = 4096, Hq = 32, Hkv = 8, D = 128;
  for (const int64_t B : {int64_t(1), int64_t(16)}) {
    const size_t cache = size_t(B * S * Hkv * D), q = size_t(B * Hq * D);
    bf16 *k, *v, *x, *out;
    int32_t* past;
    cudaMalloc(&k, cache * sizeof(bf16));
    cudaMalloc(&v, cache * sizeof(bf16));
    cudaMalloc(&x, q * sizeof(bf16));
    cudaMalloc(&out, q * sizeof(bf16));
    cudaMalloc(&past, size_t(B) * sizeof(int32_t));
    for (bf16* p : {k, v, x}) cudaMemset(p, 0x3c, (p == x ? q : cache) * sizeof(bf16));  // small finite values
    const std::vector<int32_t> full(size_t(B), int32_t(S - 1));  // the query is the cache's last slot
    cudaMemcpy(past, full.data(), full.size() * sizeof(int32_t), cudaMemcpyHostToDevice);
    const double bytes = 2.0 * double(cache) * sizeof(bf16);
    const std::string shape = "B=" + std::to_string(B) + " S=" + std::to_string(S) + " 32/8x128";
    for (const cuda::FusedVariant variant : {cuda::FusedVariant::kFast, cuda::FusedVariant::kSimple}) {
      cuda::set_fused_variant(variant);
      const double ms = median_ms([&] {
        cuda::attention_cached_forward<bf16>(B, 1, S, Hq, Hkv, D, x, k, v, past, 0.088f, out, 0, stream);
      }, stream);
      print_row("attn cached", shape, cuda::to_string(variant), bytes / (ms * 1e-3) / 1e9, "GB/s", kHbmGBs);
    }
    cuda::set_fused_variant(cuda::FusedVariant::kFast);
    for (void* p : {static_cast<void*>(k), static_cast<void*>(v), static_cast<void*>(x), static_cast<void*>(out),
                    static_cast<void*>(past)})
      cudaFree(p);
  }
  cudaStreamDestroy(stream);
}

const Section section(25, "attention_cached", &bench_attention_cached);

}  // namespace
}  // namespace llm::bench_cuda
