// Attention over a KV cache for generation. Decoding reads the whole visible cache once per query
// head, so one warp streams a head's slots: lanes hold strided elements of the D-vector (coalesced
// 32-element reads per slot), a butterfly sum gives every lane the score, and an online softmax keeps
// one pass over keys and values together.
#include <cmath>

#include "kernels/cuda/attention_cached.h"
#include "kernels/cuda/device_util.cuh"

namespace llm::cuda {

using namespace detail;

namespace {
constexpr int kMaxHeadDim = 256;
constexpr int kPerLane = kMaxHeadDim / 32;  // D-vector elements each lane holds
constexpr int kWarpsPerBlock = 4;

template <class T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    attention_cached_kernel(int64_t rows, int64_t Tq, int64_t S, int64_t Hq, int64_t Hkv, int D, const T* q,
                            const T* k_cache, const T* v_cache, const int32_t* past, float scale, T* out,
                            int64_t window) {
  const int64_t r = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;  // (b, t, h) flattened
  if (r >= rows) return;  // whole warps leave together, so the shuffles below see all 32 lanes
  const int lane = int(threadIdx.x) & 31;
  const int64_t h = r % Hq, t = (r / Hq) % Tq, b = r / (Hq * Tq), kvh = h / (Hq / Hkv);
  const int64_t visible = min(int64_t(past[b]) + t + 1, S);
  const int64_t first = window > 0 ? max(int64_t(0), visible - window) : 0;
  const int64_t slot_stride = Hkv * D;
  const T* kb = k_cache + (b * S * Hkv + kvh) * D;
  const T* vb = v_cache + (b * S * Hkv + kvh) * D;

  float qr[kPerLane], acc[kPerLane];
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int i = lane + 32 * j;
    qr[j] = i < D ? to_f32(q[r * D + i]) : 0.f;
    acc[j] = 0.f;
  }
  // Running max m and normalizer l of the scores so far; acc holds Σ exp(score − m)·v.
  float m = -INFINITY, l = 0.f;
  for (int64_t s = first; s < visible; ++s) {
    const T* kr = kb + s * slot_stride;
    float dot = 0.f;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int i = lane + 32 * j;
      if (i < D) dot += qr[j] * to_f32(kr[i]);
    }
    const float score = scale * warp_reduce(dot, Add{});
    const float m_new = fmaxf(m, score);
    const float rescale = expf(m - m_new);  // 0 at the first slot (m = −inf), when l and acc are 0
    const float p = expf(score - m_new);
    l = l * rescale + p;
    const T* vr = vb + s * slot_stride;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int i = lane + 32 * j;
      if (i < D) acc[j] = acc[j] * rescale + p * to_f32(vr[i]);
    }
    m = m_new;
  }
  const float inv = 1.f / l;  // l >= 1: the maximum's own term is exp(0)
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int i = lane + 32 * j;
    if (i < D) out[r * D + i] = from_f32<T>(acc[j] * inv);
  }
}

template <class T>
__global__ void kv_cache_write_kernel(int64_t B, int64_t T_new, int64_t S, int64_t row, const T* x,
                                      const int32_t* past, const int32_t* n_new, T* cache) {
  const int64_t n = B * T_new * row;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e % row, t = (e / row) % T_new, b = e / (row * T_new);
    const int64_t slot = int64_t(past[b]) + t;
    if (t < n_new[b] && slot < S) cache[(b * S + slot) * row + i] = x[e];
  }
}
}  // namespace

template <class T>
void attention_cached_forward(int64_t B, int64_t Tq, int64_t S, int64_t Hq, int64_t Hkv, int64_t D, const T* q,
                              const T* k_cache, const T* v_cache, const int32_t* past, float scale, T* out,
                              int64_t window, cudaStream_t stream) {
  constexpr const char* kName = "cuda::attention_cached_forward";
  require(B >= 0 && Tq >= 0 && S >= 1, kName, "needs B, Tq >= 0 and a cache capacity S >= 1");
  require(Hkv >= 1 && Hq >= 1 && Hq % Hkv == 0, kName, "the query heads Hq must be a multiple of the kv heads Hkv");
  require(D >= 1 && D <= kMaxHeadDim, kName, "the head dimension D must be in [1, 256]");
  require(window >= 0, kName, "the window must be >= 0 (0: unlimited)");
  const int64_t rows = B * Tq * Hq;
  if (rows == 0) return;
  const int64_t blocks = ceil_div(rows, kWarpsPerBlock);
  require(blocks <= 0x7fffffff, kName, "too many (row, query, head) triples for one grid");
  attention_cached_kernel<T><<<unsigned(blocks), kWarpsPerBlock * 32, 0, stream>>>(
      rows, Tq, S, Hq, Hkv, int(D), q, k_cache, v_cache, past, scale, out, window);
  check_launch(kName);
}

template <class T>
void kv_cache_write(int64_t B, int64_t T_new, int64_t S, int64_t row, const T* x, const int32_t* past,
                    const int32_t* n_new, T* cache, cudaStream_t stream) {
  constexpr const char* kName = "cuda::kv_cache_write";
  require(B >= 0 && T_new >= 0 && S >= 1 && row >= 1, kName, "needs B, T_new >= 0, S >= 1 and rows of at least one element");
  const int64_t n = B * T_new * row;
  if (n == 0) return;
  kv_cache_write_kernel<T><<<grid_blocks(n, 256), 256, 0, stream>>>(B, T_new, S, row, x, past, n_new, cache);
  check_launch(kName);
}

template void attention_cached_forward<float>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const float*,
                                              const float*, const float*, const int32_t*, float, float*, int64_t,
                                              cudaStream_t);
template void attention_cached_forward<bf16>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const bf16*,
                                             const bf16*, const bf16*, const int32_t*, float, bf16*, int64_t,
                                             cudaStream_t);
template void kv_cache_write<float>(int64_t, int64_t, int64_t, int64_t, const float*, const int32_t*, const int32_t*,
                                    float*, cudaStream_t);
template void kv_cache_write<bf16>(int64_t, int64_t, int64_t, int64_t, const bf16*, const int32_t*, const int32_t*,
                                   bf16*, cudaStream_t);

}  // namespace llm::cuda
