// LayerNorm and RMSNorm over the last dimension (kernels/cuda/fused.h), mirroring kernels/cpu/norm.cpp
// formula by formula. Fast: one block per row striding over 16-byte packs, fp32 block reductions.
// Simple: one thread per row. Weight (and bias) gradients are per-column sums over the rows in a fixed
// order: the fast path sums fixed chunks of rows into a scratch buffer and then adds the chunks in
// order; the simple path is the same column kernel with a single chunk of all rows.
#include <algorithm>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/fused.h"

namespace llm::cuda {

namespace {
using namespace detail;

// 1/sqrt(v + eps) in double, rounded once, as the CPU kernels do.
__device__ __forceinline__ float inv_sqrt(float v, float eps) { return float(1.0 / sqrt(double(v) + double(eps))); }

// ---- fast: one block per row ----------------------------------------------------------------------
template <class T, int W>
__global__ void __launch_bounds__(1024)
    layernorm_forward_fast(int64_t C, const T* x, const T* w, const T* b, float eps, T* y, float* mean, float* rstd) {
  const int64_t row = blockIdx.x, packs = C / W;
  const T* xr = x + row * C;
  T* yr = y + row * C;
  float sum = 0.f;
  for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
    float v[W];
    load_pack<W>(xr + p * W, v);
#pragma unroll
    for (int k = 0; k < W; ++k) sum += v[k];
  }
  const float m = block_sum(sum) / float(C);
  // Second sweep (cached) for the variance: no E[x²] - E[x]² cancellation.
  float sq = 0.f;
  for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
    float v[W];
    load_pack<W>(xr + p * W, v);
#pragma unroll
    for (int k = 0; k < W; ++k) sq += (v[k] - m) * (v[k] - m);
  }
  const float r = inv_sqrt(block_sum(sq) / float(C), eps);
  for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
    float v[W], wv[W], bv[W], out[W];
    load_pack<W>(xr + p * W, v);
    load_pack<W>(w + p * W, wv);
    load_pack<W>(b + p * W, bv);
#pragma unroll
    for (int k = 0; k < W; ++k) out[k] = (v[k] - m) * r * wv[k] + bv[k];
    store_pack<W>(yr + p * W, out);
  }
  if (threadIdx.x == 0) {
    mean[row] = m;
    rstd[row] = r;
  }
}

// dx = rstd (g - mean(g) - xhat mean(g xhat)) with xhat = (x - mean) rstd, g = dy w.
template <class T, int W>
__global__ void __launch_bounds__(1024) layernorm_backward_dx_fast(int64_t C, const T* dy, const T* x, const T* w,
                                                                   const float* mean, const float* rstd, T* dx) {
  const int64_t row = blockIdx.x, packs = C / W;
  const T* xr = x + row * C;
  const T* dyr = dy + row * C;
  T* dxr = dx + row * C;
  const float m = mean[row], r = rstd[row];
  float sum_g = 0.f, sum_gx = 0.f;
  for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
    float xv[W], dv[W], wv[W];
    load_pack<W>(xr + p * W, xv);
    load_pack<W>(dyr + p * W, dv);
    load_pack<W>(w + p * W, wv);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      const float g = dv[k] * wv[k];
      sum_g += g;
      sum_gx += g * ((xv[k] - m) * r);
    }
  }
  const float mean_g = block_sum(sum_g) / float(C);
  const float mean_gx = block_sum(sum_gx) / float(C);
  for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
    float xv[W], dv[W], wv[W], out[W];
    load_pack<W>(xr + p * W, xv);
    load_pack<W>(dyr + p * W, dv);
    load_pack<W>(w + p * W, wv);
#pragma unroll
    for (int k = 0; k < W; ++k) out[k] = r * (dv[k] * wv[k] - mean_g - (xv[k] - m) * r * mean_gx);
    store_pack<W>(dxr + p * W, out);
  }
}

template <class T, int W>
__global__ void __launch_bounds__(1024)
    rmsnorm_forward_fast(int64_t C, const T* x, const T* w, float eps, T* y, float* rstd) {
  const int64_t row = blockIdx.x, packs = C / W;
  const T* xr = x + row * C;
  T* yr = y + row * C;
  float sq = 0.f;
  for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
    float v[W];
    load_pack<W>(xr + p * W, v);
#pragma unroll
    for (int k = 0; k < W; ++k) sq += v[k] * v[k];
  }
  const float r = inv_sqrt(block_sum(sq) / float(C), eps);
  for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
    float v[W], wv[W], out[W];
    load_pack<W>(xr + p * W, v);
    load_pack<W>(w + p * W, wv);
#pragma unroll
    for (int k = 0; k < W; ++k) out[k] = v[k] * r * wv[k];
    store_pack<W>(yr + p * W, out);
  }
  if (threadIdx.x == 0) rstd[row] = r;
}

// dx = rstd (g - x rstd² mean(g x)) with g = dy w.
template <class T, int W>
__global__ void __launch_bounds__(1024)
    rmsnorm_backward_dx_fast(int64_t C, const T* dy, const T* x, const T* w, const float* rstd, T* dx) {
  const int64_t row = blockIdx.x, packs = C / W;
  const T* xr = x + row * C;
  const T* dyr = dy + row * C;
  T* dxr = dx + row * C;
  const float r = rstd[row];
  float sum_gx = 0.f;
  for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
    float xv[W], dv[W], wv[W];
    load_pack<W>(xr + p * W, xv);
    load_pack<W>(dyr + p * W, dv);
    load_pack<W>(w + p * W, wv);
#pragma unroll
    for (int k = 0; k < W; ++k) sum_gx += dv[k] * wv[k] * xv[k];
  }
  const float coef = r * r * block_sum(sum_gx) / float(C);
  for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
    float xv[W], dv[W], wv[W], out[W];
    load_pack<W>(xr + p * W, xv);
    load_pack<W>(dyr + p * W, dv);
    load_pack<W>(w + p * W, wv);
#pragma unroll
    for (int k = 0; k < W; ++k) out[k] = r * (dv[k] * wv[k] - xv[k] * coef);
    store_pack<W>(dxr + p * W, out);
  }
}

// ---- simple: one thread per row -------------------------------------------------------------------
template <class T>
__global__ void layernorm_forward_simple(int64_t N, int64_t C, const T* x, const T* w, const T* b, float eps, T* y,
                                         float* mean, float* rstd) {
  const int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= N) return;
  const T* xr = x + row * C;
  T* yr = y + row * C;
  float sum = 0.f;
  for (int64_t c = 0; c < C; ++c) sum += to_f32(xr[c]);
  const float m = sum / float(C);
  float sq = 0.f;
  for (int64_t c = 0; c < C; ++c) sq += (to_f32(xr[c]) - m) * (to_f32(xr[c]) - m);
  const float r = inv_sqrt(sq / float(C), eps);
  for (int64_t c = 0; c < C; ++c) yr[c] = from_f32<T>((to_f32(xr[c]) - m) * r * to_f32(w[c]) + to_f32(b[c]));
  mean[row] = m;
  rstd[row] = r;
}

template <class T>
__global__ void layernorm_backward_dx_simple(int64_t N, int64_t C, const T* dy, const T* x, const T* w,
                                             const float* mean, const float* rstd, T* dx) {
  const int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= N) return;
  const T* xr = x + row * C;
  const T* dyr = dy + row * C;
  T* dxr = dx + row * C;
  const float m = mean[row], r = rstd[row];
  float sum_g = 0.f, sum_gx = 0.f;
  for (int64_t c = 0; c < C; ++c) {
    const float g = to_f32(dyr[c]) * to_f32(w[c]);
    sum_g += g;
    sum_gx += g * ((to_f32(xr[c]) - m) * r);
  }
  const float mean_g = sum_g / float(C), mean_gx = sum_gx / float(C);
  for (int64_t c = 0; c < C; ++c) {
    const float xhat = (to_f32(xr[c]) - m) * r;
    dxr[c] = from_f32<T>(r * (to_f32(dyr[c]) * to_f32(w[c]) - mean_g - xhat * mean_gx));
  }
}

template <class T>
__global__ void rmsnorm_forward_simple(int64_t N, int64_t C, const T* x, const T* w, float eps, T* y, float* rstd) {
  const int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= N) return;
  const T* xr = x + row * C;
  T* yr = y + row * C;
  float sq = 0.f;
  for (int64_t c = 0; c < C; ++c) sq += to_f32(xr[c]) * to_f32(xr[c]);
  const float r = inv_sqrt(sq / float(C), eps);
  for (int64_t c = 0; c < C; ++c) yr[c] = from_f32<T>(to_f32(xr[c]) * r * to_f32(w[c]));
  rstd[row] = r;
}

template <class T>
__global__ void rmsnorm_backward_dx_simple(int64_t N, int64_t C, const T* dy, const T* x, const T* w,
                                           const float* rstd, T* dx) {
  const int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= N) return;
  const T* xr = x + row * C;
  const T* dyr = dy + row * C;
  T* dxr = dx + row * C;
  const float r = rstd[row];
  float sum_gx = 0.f;
  for (int64_t c = 0; c < C; ++c) sum_gx += to_f32(dyr[c]) * to_f32(w[c]) * to_f32(xr[c]);
  const float coef = r * r * sum_gx / float(C);
  for (int64_t c = 0; c < C; ++c) dxr[c] = from_f32<T>(r * (to_f32(dyr[c]) * to_f32(w[c]) - to_f32(xr[c]) * coef));
}

// ---- weight / bias gradients: per-column sums over rows -------------------------------------------
constexpr int kColumnThreads = 256;
constexpr int64_t kMaxRowChunks = 256;

// Rows per chunk of the fast column sums. It depends on N alone (never on the device), so the
// order of additions, and with it every bit of dw and db, is the same on every GPU.
int64_t rows_per_chunk(int64_t N) { return std::max<int64_t>(32, ceil_div(N, kMaxRowChunks)); }

// Thread (column c, chunk blockIdx.y) sums rows [chunk * chunk_rows, +chunk_rows) in increasing order:
// dw += dy xhat and db += dy (LayerNorm), or dw += dy x rstd (RMSNorm, db unused), and writes
// dw_out[chunk * C + c] (db_out likewise).
template <class T, bool kLayerNorm>
__global__ void __launch_bounds__(kColumnThreads)
    norm_column_sums(int64_t N, int64_t C, int64_t chunk_rows, const T* dy, const T* x, const float* mean,
                     const float* rstd, float* dw_out, float* db_out) {
  const int64_t c = int64_t(blockIdx.x) * kColumnThreads + threadIdx.x;
  if (c >= C) return;
  const int64_t chunk = blockIdx.y;
  const int64_t begin = chunk * chunk_rows, end = N - begin < chunk_rows ? N : begin + chunk_rows;
  float dw = 0.f, db = 0.f;
  for (int64_t i = begin; i < end; ++i) {
    const float d = to_f32(dy[i * C + c]), xv = to_f32(x[i * C + c]);
    if (kLayerNorm) {
      dw += d * ((xv - mean[i]) * rstd[i]);
      db += d;
    } else {
      dw += d * (xv * rstd[i]);
    }
  }
  dw_out[chunk * C + c] = dw;
  if (kLayerNorm) db_out[chunk * C + c] = db;
}

// out[c] = sum over k < chunks, in increasing k, of partial[k * C + c].
__global__ void __launch_bounds__(kColumnThreads)
    sum_row_chunks(int64_t C, int64_t chunks, const float* partial, float* out) {
  const int64_t c = int64_t(blockIdx.x) * kColumnThreads + threadIdx.x;
  if (c >= C) return;
  float s = 0.f;
  for (int64_t k = 0; k < chunks; ++k) s += partial[k * C + c];
  out[c] = s;
}

// dw (and db for LayerNorm) of N rows: the simple variant is one chunk of all rows written straight
// to dw/db; the fast one sums fixed row chunks into scratch, then the chunks in order.
template <class T, bool kLayerNorm>
void norm_param_grads(int64_t N, int64_t C, const T* dy, const T* x, const float* mean, const float* rstd, float* dw,
                      float* db, cudaStream_t stream, const char* kernel) {
  const unsigned column_blocks = unsigned(ceil_div(C, kColumnThreads));
  if (fused_variant() == FusedVariant::kSimple || N == 0) {
    // N == 0 writes zeros: one empty chunk.
    norm_column_sums<T, kLayerNorm><<<dim3(column_blocks, 1), kColumnThreads, 0, stream>>>(N, C, N, dy, x, mean, rstd,
                                                                                          dw, db);
    check_launch(kernel);
    return;
  }
  const int64_t chunk_rows = rows_per_chunk(N), chunks = ceil_div(N, chunk_rows);
  const int outputs = kLayerNorm ? 2 : 1;
  StreamScratch scratch(size_t(outputs * chunks * C) * sizeof(float), stream, kernel);
  float* partial_dw = scratch.as<float>();
  float* partial_db = kLayerNorm ? partial_dw + chunks * C : nullptr;
  norm_column_sums<T, kLayerNorm><<<dim3(column_blocks, unsigned(chunks)), kColumnThreads, 0, stream>>>(
      N, C, chunk_rows, dy, x, mean, rstd, partial_dw, partial_db);
  check_launch(kernel);
  sum_row_chunks<<<column_blocks, kColumnThreads, 0, stream>>>(C, chunks, partial_dw, dw);
  check_launch(kernel);
  if (kLayerNorm) {
    sum_row_chunks<<<column_blocks, kColumnThreads, 0, stream>>>(C, chunks, partial_db, db);
    check_launch(kernel);
  }
}
}  // namespace

template <class T>
void layernorm_forward(int64_t N, int64_t C, const T* x, const T* w, const T* b, float eps, T* y, float* mean,
                       float* rstd, cudaStream_t stream) {
  constexpr const char* kName = "cuda::layernorm_forward";
  require_rows(N, C, kName);
  if (N == 0) return;
  constexpr int W = kVecWidth<T>;
  if (fused_variant() == FusedVariant::kSimple)
    layernorm_forward_simple<T><<<simple_blocks(N), kSimpleThreads, 0, stream>>>(N, C, x, w, b, eps, y, mean, rstd);
  else if (packable<T>(C, {x, w, b, y}))
    layernorm_forward_fast<T, W><<<unsigned(N), row_block_threads(C / W), 0, stream>>>(C, x, w, b, eps, y, mean, rstd);
  else
    layernorm_forward_fast<T, 1><<<unsigned(N), row_block_threads(C), 0, stream>>>(C, x, w, b, eps, y, mean, rstd);
  check_launch(kName);
}

template <class T>
void layernorm_backward(int64_t N, int64_t C, const T* dy, const T* x, const T* w, const float* mean,
                        const float* rstd, T* dx, float* dw, float* db, cudaStream_t stream) {
  constexpr const char* kName = "cuda::layernorm_backward";
  require_rows(N, C, kName);
  constexpr int W = kVecWidth<T>;
  if (N > 0) {
    if (fused_variant() == FusedVariant::kSimple)
      layernorm_backward_dx_simple<T><<<simple_blocks(N), kSimpleThreads, 0, stream>>>(N, C, dy, x, w, mean, rstd, dx);
    else if (packable<T>(C, {dy, x, w, dx}))
      layernorm_backward_dx_fast<T, W><<<unsigned(N), row_block_threads(C / W), 0, stream>>>(C, dy, x, w, mean, rstd,
                                                                                           dx);
    else
      layernorm_backward_dx_fast<T, 1><<<unsigned(N), row_block_threads(C), 0, stream>>>(C, dy, x, w, mean, rstd, dx);
    check_launch(kName);
  }
  norm_param_grads<T, true>(N, C, dy, x, mean, rstd, dw, db, stream, kName);
}

template <class T>
void rmsnorm_forward(int64_t N, int64_t C, const T* x, const T* w, float eps, T* y, float* rstd, cudaStream_t stream) {
  constexpr const char* kName = "cuda::rmsnorm_forward";
  require_rows(N, C, kName);
  if (N == 0) return;
  constexpr int W = kVecWidth<T>;
  if (fused_variant() == FusedVariant::kSimple)
    rmsnorm_forward_simple<T><<<simple_blocks(N), kSimpleThreads, 0, stream>>>(N, C, x, w, eps, y, rstd);
  else if (packable<T>(C, {x, w, y}))
    rmsnorm_forward_fast<T, W><<<unsigned(N), row_block_threads(C / W), 0, stream>>>(C, x, w, eps, y, rstd);
  else
    rmsnorm_forward_fast<T, 1><<<unsigned(N), row_block_threads(C), 0, stream>>>(C, x, w, eps, y, rstd);
  check_launch(kName);
}

template <class T>
void rmsnorm_backward(int64_t N, int64_t C, const T* dy, const T* x, const T* w, const float* rstd, T* dx, float* dw,
                      cudaStream_t stream) {
  constexpr const char* kName = "cuda::rmsnorm_backward";
  require_rows(N, C, kName);
  constexpr int W = kVecWidth<T>;
  if (N > 0) {
    if (fused_variant() == FusedVariant::kSimple)
      rmsnorm_backward_dx_simple<T><<<simple_blocks(N), kSimpleThreads, 0, stream>>>(N, C, dy, x, w, rstd, dx);
    else if (packable<T>(C, {dy, x, w, dx}))
      rmsnorm_backward_dx_fast<T, W><<<unsigned(N), row_block_threads(C / W), 0, stream>>>(C, dy, x, w, rstd, dx);
    else
      rmsnorm_backward_dx_fast<T, 1><<<unsigned(N), row_block_threads(C), 0, stream>>>(C, dy, x, w, rstd, dx);
    check_launch(kName);
  }
  norm_param_grads<T, false>(N, C, dy, x, nullptr, rstd, dw, nullptr, stream, kName);
}

#define LLM_INSTANTIATE_NORMS(T)                                                                                   \
  template void layernorm_forward<T>(int64_t, int64_t, const T*, const T*, const T*, float, T*, float*, float*,    \
                                     cudaStream_t);                                                                \
  template void layernorm_backward<T>(int64_t, int64_t, const T*, const T*, const T*, const float*, const float*, \
                                      T*, float*, float*, cudaStream_t);                                           \
  template void rmsnorm_forward<T>(int64_t, int64_t, const T*, const T*, float, T*, float*, cudaStream_t);         \
  template void rmsnorm_backward<T>(int64_t, int64_t, const T*, const T*, const T*, const float*, T*, float*,      \
                                    cudaStream_t);
LLM_INSTANTIATE_NORMS(float)
LLM_INSTANTIATE_NORMS(bf16)
#undef LLM_INSTANTIATE_NORMS

}  // namespace llm::cuda
