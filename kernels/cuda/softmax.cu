// Row softmax and fused cross-entropy (kernels/cuda/fused.h), as kernels/cpu/softmax.cpp.
// Fast: one block per row striding over 16-byte packs. The max and the sum of exponentials come from
// one sweep (online: the running sum is rescaled when the running max grows, once per pack), combined
// across the block in a fixed order. Cross-entropy backward reads each logit once and writes its
// gradient once, in the same thread, so dlogits may alias logits.
// Simple: one thread per row, a max pass then a sum pass.
#include <cmath>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/fused.h"

namespace llm::cuda {

namespace {
using namespace detail;

// Running max m and sum s of exp(x - m) over part of a row; {-inf, 0} is empty.
struct MaxSum {
  float m, s;
};
__device__ __forceinline__ MaxSum shfl_xor(MaxSum v, int offset) {
  return {__shfl_xor_sync(0xffffffffu, v.m, offset), __shfl_xor_sync(0xffffffffu, v.s, offset)};
}
// Symmetric in a and b, so the butterfly reduction leaves the same bits in every lane: the products
// are rounded on their own (__fmul_rn is never contracted into an fma, which would round one side
// but not the other).
struct MergeMaxSum {
  __device__ __forceinline__ MaxSum operator()(MaxSum a, MaxSum b) const {
    const float m = fmaxf(a.m, b.m);
    if (m == -INFINITY) return {m, 0.f};  // both empty: -inf - -inf would be NaN
    return {m, __fmul_rn(a.s, expf(a.m - m)) + __fmul_rn(b.s, expf(b.m - m))};
  }
};

// Adds W values to a running MaxSum: one rescale per pack when its max is larger, then one exp per
// value. A NaN is dropped by fmaxf but still poisons the sum, as on the CPU.
template <int W>
__device__ __forceinline__ void accumulate(MaxSum& acc, const float (&v)[W]) {
  float pm = v[0];
#pragma unroll
  for (int k = 1; k < W; ++k) pm = fmaxf(pm, v[k]);
  if (pm > acc.m) {
    acc.s *= expf(acc.m - pm);  // 0 · 0 while the row was empty
    acc.m = pm;
  }
  if (acc.m == -INFINITY) return;  // all -inf so far: the sum stays 0
#pragma unroll
  for (int k = 0; k < W; ++k) acc.s += expf(v[k] - acc.m);
}

// The block's MaxSum over a row of C = packs * W values.
template <class T, int W>
__device__ MaxSum row_max_sum(const T* row, int64_t packs) {
  MaxSum acc{-INFINITY, 0.f};
  for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
    float v[W];
    load_pack<W>(row + p * W, v);
    accumulate<W>(acc, v);
  }
  return block_reduce(acc, MergeMaxSum{}, MaxSum{-INFINITY, 0.f});
}

// ---- fast: one block per row ----------------------------------------------------------------------
template <class T, int W>
__global__ void __launch_bounds__(1024) softmax_forward_fast(int64_t C, const T* x, T* y) {
  const int64_t row = blockIdx.x, packs = C / W;
  const T* xr = x + row * C;
  T* yr = y + row * C;
  const MaxSum ms = row_max_sum<T, W>(xr, packs);
  const float inv = 1.f / ms.s;
  for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
    float v[W];
    load_pack<W>(xr + p * W, v);
#pragma unroll
    for (int k = 0; k < W; ++k) v[k] = expf(v[k] - ms.m) * inv;
    store_pack<W>(yr + p * W, v);
  }
}

// dx = y (dy - sum(y dy)).
template <class T, int W>
__global__ void __launch_bounds__(1024) softmax_backward_fast(int64_t C, const T* y, const T* dy, T* dx) {
  const int64_t row = blockIdx.x, packs = C / W;
  const T* yr = y + row * C;
  const T* dyr = dy + row * C;
  T* dxr = dx + row * C;
  float acc = 0.f;
  for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
    float yv[W], dv[W];
    load_pack<W>(yr + p * W, yv);
    load_pack<W>(dyr + p * W, dv);
#pragma unroll
    for (int k = 0; k < W; ++k) acc += yv[k] * dv[k];
  }
  const float dot = block_sum(acc);
  for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
    float yv[W], dv[W];
    load_pack<W>(yr + p * W, yv);
    load_pack<W>(dyr + p * W, dv);
#pragma unroll
    for (int k = 0; k < W; ++k) yv[k] = yv[k] * (dv[k] - dot);
    store_pack<W>(dxr + p * W, yv);
  }
}

template <class T, int W>
__global__ void __launch_bounds__(1024) cross_entropy_forward_fast(int64_t V, const T* logits, const int32_t* targets,
                                                                   int32_t ignore_index, float* losses, float* lse) {
  const int64_t row = blockIdx.x;
  const T* xr = logits + row * V;
  const MaxSum ms = row_max_sum<T, W>(xr, V / W);
  if (threadIdx.x == 0) {
    const float l = ms.m + logf(ms.s);
    const int32_t t = targets[row];
    lse[row] = l;
    losses[row] = t == ignore_index ? 0.f : l - to_f32(xr[t]);
  }
}

// dlogits = dloss (exp(x - lse) - onehot(target)); each element read, then written, by one thread.
template <class T, int W>
__global__ void __launch_bounds__(1024)
    cross_entropy_backward_fast(int64_t V, const T* logits, const int32_t* targets, int32_t ignore_index,
                                const float* lse, const float* dloss, T* dlogits, int64_t ldd) {
  const int64_t row = blockIdx.x, packs = V / W;
  const T* xr = logits + row * V;
  T* dr = dlogits + row * ldd;
  const int32_t t = targets[row];
  if (t == ignore_index) {
    float zeros[W];
#pragma unroll
    for (int k = 0; k < W; ++k) zeros[k] = 0.f;
    for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) store_pack<W>(dr + p * W, zeros);
    return;
  }
  const float l = lse[row], d = dloss[row];
  for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
    float v[W];
    load_pack<W>(xr + p * W, v);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      v[k] = d * expf(v[k] - l);
      if (p * W + k == t) v[k] -= d;
    }
    store_pack<W>(dr + p * W, v);
  }
}

// ---- simple: one thread per row -------------------------------------------------------------------
template <class T>
__device__ MaxSum row_max_sum_simple(const T* row, int64_t C) {
  float m = -INFINITY;
  for (int64_t c = 0; c < C; ++c) m = fmaxf(m, to_f32(row[c]));
  float s = 0.f;
  if (m != -INFINITY)
    for (int64_t c = 0; c < C; ++c) s += expf(to_f32(row[c]) - m);
  return {m, s};
}

template <class T>
__global__ void softmax_forward_simple(int64_t N, int64_t C, const T* x, T* y) {
  const int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= N) return;
  const T* xr = x + row * C;
  T* yr = y + row * C;
  const MaxSum ms = row_max_sum_simple(xr, C);
  const float inv = 1.f / ms.s;
  for (int64_t c = 0; c < C; ++c) yr[c] = from_f32<T>(expf(to_f32(xr[c]) - ms.m) * inv);
}

template <class T>
__global__ void softmax_backward_simple(int64_t N, int64_t C, const T* y, const T* dy, T* dx) {
  const int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= N) return;
  const T* yr = y + row * C;
  const T* dyr = dy + row * C;
  T* dxr = dx + row * C;
  float dot = 0.f;
  for (int64_t c = 0; c < C; ++c) dot += to_f32(yr[c]) * to_f32(dyr[c]);
  for (int64_t c = 0; c < C; ++c) dxr[c] = from_f32<T>(to_f32(yr[c]) * (to_f32(dyr[c]) - dot));
}

template <class T>
__global__ void cross_entropy_forward_simple(int64_t N, int64_t V, const T* logits, const int32_t* targets,
                                             int32_t ignore_index, float* losses, float* lse) {
  const int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= N) return;
  const T* xr = logits + row * V;
  const MaxSum ms = row_max_sum_simple(xr, V);
  const float l = ms.m + logf(ms.s);
  lse[row] = l;
  losses[row] = targets[row] == ignore_index ? 0.f : l - to_f32(xr[targets[row]]);
}

template <class T>
__global__ void cross_entropy_backward_simple(int64_t N, int64_t V, const T* logits, const int32_t* targets,
                                              int32_t ignore_index, const float* lse, const float* dloss,
                                              T* dlogits, int64_t ldd) {
  const int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= N) return;
  const T* xr = logits + row * V;
  T* dr = dlogits + row * ldd;
  const int32_t t = targets[row];
  const float l = lse[row], d = dloss[row];
  for (int64_t c = 0; c < V; ++c) {
    float g = 0.f;
    if (t != ignore_index) {
      g = d * expf(to_f32(xr[c]) - l);
      if (c == t) g -= d;
    }
    dr[c] = from_f32<T>(g);
  }
}
}  // namespace

template <class T>
void softmax_forward(int64_t N, int64_t C, const T* x, T* y, cudaStream_t stream) {
  constexpr const char* kName = "cuda::softmax_forward";
  require_rows(N, C, kName);
  if (N == 0) return;
  constexpr int W = kVecWidth<T>;
  if (fused_variant() == FusedVariant::kSimple)
    softmax_forward_simple<T><<<simple_blocks(N), kSimpleThreads, 0, stream>>>(N, C, x, y);
  else if (packable<T>(C, {x, y}))
    softmax_forward_fast<T, W><<<unsigned(N), row_block_threads(C / W), 0, stream>>>(C, x, y);
  else
    softmax_forward_fast<T, 1><<<unsigned(N), row_block_threads(C), 0, stream>>>(C, x, y);
  check_launch(kName);
}

template <class T>
void softmax_backward(int64_t N, int64_t C, const T* y, const T* dy, T* dx, cudaStream_t stream) {
  constexpr const char* kName = "cuda::softmax_backward";
  require_rows(N, C, kName);
  if (N == 0) return;
  constexpr int W = kVecWidth<T>;
  if (fused_variant() == FusedVariant::kSimple)
    softmax_backward_simple<T><<<simple_blocks(N), kSimpleThreads, 0, stream>>>(N, C, y, dy, dx);
  else if (packable<T>(C, {y, dy, dx}))
    softmax_backward_fast<T, W><<<unsigned(N), row_block_threads(C / W), 0, stream>>>(C, y, dy, dx);
  else
    softmax_backward_fast<T, 1><<<unsigned(N), row_block_threads(C), 0, stream>>>(C, y, dy, dx);
  check_launch(kName);
}

template <class T>
void cross_entropy_forward(int64_t N, int64_t V, const T* logits, const int32_t* targets, int32_t ignore_index,
                           float* losses, float* lse, cudaStream_t stream) {
  constexpr const char* kName = "cuda::cross_entropy_forward";
  require_rows(N, V, kName);
  if (N == 0) return;
  constexpr int W = kVecWidth<T>;
  if (fused_variant() == FusedVariant::kSimple)
    cross_entropy_forward_simple<T><<<simple_blocks(N), kSimpleThreads, 0, stream>>>(N, V, logits, targets,
                                                                                    ignore_index, losses, lse);
  else if (packable<T>(V, {logits}))
    cross_entropy_forward_fast<T, W><<<unsigned(N), row_block_threads(V / W), 0, stream>>>(V, logits, targets,
                                                                                          ignore_index, losses, lse);
  else
    cross_entropy_forward_fast<T, 1><<<unsigned(N), row_block_threads(V), 0, stream>>>(V, logits, targets,
                                                                                      ignore_index, losses, lse);
  check_launch(kName);
}

template <class T>
void cross_entropy_backward(int64_t N, int64_t V, const T* logits, const int32_t* targets, int32_t ignore_index,
                            const float* lse, const float* dloss, T* dlogits, int64_t ld_dlogits,
                            cudaStream_t stream) {
  constexpr const char* kName = "cuda::cross_entropy_backward";
  require_rows(N, V, kName);
  require(ld_dlogits >= V, kName, "the row stride of dlogits must be at least V");
  require(dlogits != logits || ld_dlogits == V, kName, "in place needs the row stride of dlogits to be V");
  if (N == 0) return;
  constexpr int W = kVecWidth<T>;
  if (fused_variant() == FusedVariant::kSimple)
    cross_entropy_backward_simple<T><<<simple_blocks(N), kSimpleThreads, 0, stream>>>(
        N, V, logits, targets, ignore_index, lse, dloss, dlogits, ld_dlogits);
  else if (packable<T>(V, {logits, dlogits}) && ld_dlogits % W == 0)
    cross_entropy_backward_fast<T, W><<<unsigned(N), row_block_threads(V / W), 0, stream>>>(
        V, logits, targets, ignore_index, lse, dloss, dlogits, ld_dlogits);
  else
    cross_entropy_backward_fast<T, 1><<<unsigned(N), row_block_threads(V), 0, stream>>>(
        V, logits, targets, ignore_index, lse, dloss, dlogits, ld_dlogits);
  check_launch(kName);
}

#define LLM_INSTANTIATE_SOFTMAX(T)                                                                                  \
  template void softmax_forward<T>(int64_t, int64_t, const T*, T*, cudaStream_t);                                  \
  template void softmax_backward<T>(int64_t, int64_t, const T*, const T*, T*, cudaStream_t);                       \
  template void cross_entropy_forward<T>(int64_t, int64_t, const T*, const int32_t*, int32_t, float*, float*,      \
                                         cudaStream_t);                                                            \
  template void cross_entropy_backward<T>(int64_t, int64_t, const T*, const int32_t*, int32_t, const float*,       \
                                          const float*, T*, int64_t, cudaStream_t);
LLM_INSTANTIATE_SOFTMAX(float)
LLM_INSTANTIATE_SOFTMAX(bf16)
#undef LLM_INSTANTIATE_SOFTMAX

}  // namespace llm::cuda
