// Attention over a KV cache for generation. Decoding reads the whole visible cache once per query
// head, so a warp streams a head's slots: lanes hold strided elements of the D-vector (coalesced
// 32-element reads per slot), a butterfly sum gives every lane the score, and an online softmax keeps
// one pass over keys and values together. The simple kernel gives each query head one warp; the
// split kernel (the fast variant, for caches longer than kSplitSlots) gives each chunk of
// kSplitSlots slots its own warp, so a single decoding sequence with few heads still fills the GPU,
// and combines the chunks' partial softmax sums in a second pass.
#include <cmath>

#include "kernels/cuda/attention_cached.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/fused.h"

namespace llm::cuda {

using namespace detail;

namespace {
constexpr int kMaxHeadDim = 256;
constexpr int kPerLane = kMaxHeadDim / 32;  // D-vector elements each lane holds
constexpr int kWarpsPerBlock = 4;
constexpr int64_t kSplitSlots = 128;  // cache slots per warp in the split kernel

// Where query row r = (b, t, h) reads: its kv head's first slot and the visible slots [first, visible).
struct QueryRow {
  int64_t base, first, visible;
};
__device__ __forceinline__ QueryRow locate(int64_t r, int64_t Tq, int64_t S, int64_t Hq, int64_t Hkv, int D,
                                           const int32_t* past, int64_t window) {
  const int64_t h = r % Hq, t = (r / Hq) % Tq, b = r / (Hq * Tq), kvh = h / (Hq / Hkv);
  QueryRow q;
  q.base = (b * S * Hkv + kvh) * D;
  q.visible = min(int64_t(past[b]) + t + 1, S);
  q.first = window > 0 ? max(int64_t(0), q.visible - window) : 0;
  return q;
}

// One warp's online softmax over slots [begin, end) of one query head: m is the running maximum of
// the scores, l the sum of exp(score − m), acc (lane's elements) the sum of exp(score − m)·v. With no
// slots they stay −inf, 0, 0.
template <class T>
__device__ __forceinline__ void attend(const T* kb, const T* vb, int64_t slot_stride, int D, int lane,
                                       const float (&qr)[kPerLane], float scale, int64_t begin, int64_t end, float& m,
                                       float& l, float (&acc)[kPerLane]) {
  for (int64_t s = begin; s < end; ++s) {
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
}

template <class T>
__device__ __forceinline__ void load_query(const T* q, int64_t r, int D, int lane, float (&qr)[kPerLane],
                                           float (&acc)[kPerLane]) {
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int i = lane + 32 * j;
    qr[j] = i < D ? to_f32(q[r * D + i]) : 0.f;
    acc[j] = 0.f;
  }
}

// The simple kernel: one warp per query row (b, t, h) over all its visible slots.
template <class T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    attention_cached_simple(int64_t rows, int64_t Tq, int64_t S, int64_t Hq, int64_t Hkv, int D, const T* q,
                            const T* k_cache, const T* v_cache, const int32_t* past, float scale, T* out,
                            int64_t window) {
  const int64_t r = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (r >= rows) return;  // whole warps leave together, so the shuffles see all 32 lanes
  const int lane = int(threadIdx.x) & 31;
  const QueryRow row = locate(r, Tq, S, Hq, Hkv, D, past, window);
  float qr[kPerLane], acc[kPerLane];
  load_query(q, r, D, lane, qr, acc);
  float m = -INFINITY, l = 0.f;
  attend(k_cache + row.base, v_cache + row.base, Hkv * D, D, lane, qr, scale, row.first, row.visible, m, l, acc);
  const float inv = 1.f / l;  // l >= 1: the maximum's own term is exp(0)
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int i = lane + 32 * j;
    if (i < D) out[r * D + i] = from_f32<T>(acc[j] * inv);
  }
}

// Split kernel, pass 1: warp (r, split) covers the visible slots in [split·kSplitSlots,
// (split + 1)·kSplitSlots) and writes its partial m, l (ml[2·(r·splits + split) + 0, 1]) and acc
// (part[(r·splits + split)·D + i]); a split with no visible slots writes −inf, 0, 0.
template <class T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    attention_cached_split(int64_t rows, int64_t Tq, int64_t S, int64_t Hq, int64_t Hkv, int D, const T* q,
                           const T* k_cache, const T* v_cache, const int32_t* past, float scale, int64_t window,
                           float* ml, float* part) {
  const int64_t r = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32, split = blockIdx.y, splits = gridDim.y;
  if (r >= rows) return;
  const int lane = int(threadIdx.x) & 31;
  const QueryRow row = locate(r, Tq, S, Hq, Hkv, D, past, window);
  float qr[kPerLane], acc[kPerLane];
  load_query(q, r, D, lane, qr, acc);
  float m = -INFINITY, l = 0.f;
  const int64_t begin = max(row.first, split * kSplitSlots), end = min(row.visible, (split + 1) * kSplitSlots);
  attend(k_cache + row.base, v_cache + row.base, Hkv * D, D, lane, qr, scale, begin, end, m, l, acc);
  const int64_t slot = r * splits + split;
  if (lane == 0) {
    ml[2 * slot] = m;
    ml[2 * slot + 1] = l;
  }
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int i = lane + 32 * j;
    if (i < D) part[slot * D + i] = acc[j];
  }
}

// Split kernel, pass 2: one thread per output element rescales every split's partial sums to the
// common maximum M: out = Σ_s acc_s·exp(m_s − M) / Σ_s l_s·exp(m_s − M). At least one split of every
// row saw a slot (slot `visible − 1` always is), so M is finite.
template <class T>
__global__ void attention_cached_combine(int64_t rows, int D, int64_t splits, const float* ml, const float* part,
                                         T* out) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= rows * D) return;
  const int64_t r = e / D, i = e % D;
  const float* mlr = ml + 2 * r * splits;
  float M = -INFINITY;
  for (int64_t s = 0; s < splits; ++s) M = fmaxf(M, mlr[2 * s]);
  float l = 0.f, acc = 0.f;
  for (int64_t s = 0; s < splits; ++s) {
    if (mlr[2 * s] == -INFINITY) continue;  // an empty split
    const float w = expf(mlr[2 * s] - M);
    l += mlr[2 * s + 1] * w;
    acc += part[(r * splits + s) * D + i] * w;
  }
  out[e] = from_f32<T>(acc / l);
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
  const int64_t blocks = ceil_div(rows, kWarpsPerBlock), splits = ceil_div(S, kSplitSlots);
  require(blocks <= 0x7fffffff, kName, "too many (row, query, head) triples for one grid");
  if (fused_variant() == FusedVariant::kSimple || splits == 1) {
    attention_cached_simple<T><<<unsigned(blocks), kWarpsPerBlock * 32, 0, stream>>>(
        rows, Tq, S, Hq, Hkv, int(D), q, k_cache, v_cache, past, scale, out, window);
    check_launch(kName);
    return;
  }
  require(splits <= 65535, kName, "the cache capacity S is too large for the split kernel (use LLM_CUDA_FUSED=simple)");
  const int64_t partials = rows * splits;
  StreamScratch scratch(size_t(partials) * size_t(D + 2) * sizeof(float), stream, kName);
  float* ml = scratch.as<float>();
  float* part = ml + 2 * partials;
  attention_cached_split<T><<<dim3(unsigned(blocks), unsigned(splits)), kWarpsPerBlock * 32, 0, stream>>>(
      rows, Tq, S, Hq, Hkv, int(D), q, k_cache, v_cache, past, scale, window, ml, part);
  check_launch(kName);
  attention_cached_combine<T><<<grid_blocks(rows * D, 256, 0x7fffffff), 256, 0, stream>>>(rows, int(D), splits, ml,
                                                                                           part, out);
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
