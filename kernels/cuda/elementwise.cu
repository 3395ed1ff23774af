// Elementwise GPU kernels: grid-stride loops over 64-bit indices, fp32 arithmetic for every type.
#include "kernels/cuda/elementwise.h"

#include <algorithm>
#include <string>

#include "kernels/dropout_mask.h"

namespace llm::cuda {

namespace {
constexpr int kThreads = 256;

// Enough blocks to fill the GPU several times over; grid-stride loops cover the rest.
unsigned blocks_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 65536));
}

void check_args(bool ok, const char* kernel, const std::string& why) {
  if (!ok) throw std::runtime_error(std::string(kernel) + ": " + why);
}

__device__ __forceinline__ float load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load(const bf16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(bf16* p, int64_t i, float v) { p[i] = __float2bfloat16_rn(v); }

#define LLM_GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

__global__ void f32_to_bf16_kernel(int64_t n, const float* x, bf16* y) {
  LLM_GRID_STRIDE(i, n) y[i] = __float2bfloat16_rn(x[i]);
}
__global__ void bf16_to_f32_kernel(int64_t n, const bf16* x, float* y) {
  LLM_GRID_STRIDE(i, n) y[i] = __bfloat162float(x[i]);
}

// One thread per element: the linear index is split into coordinates of `shape` (last dimension
// fastest), and each side's offset is the dot product with its strides.
template <class E>
__global__ void copy_strided_kernel(int64_t n, StridedCopy layout, const E* src, E* dst) {
  LLM_GRID_STRIDE(i, n) {
    int64_t rest = i, src_off = 0, dst_off = 0;
#pragma unroll
    for (int d = kMaxCopyDims - 1; d >= 0; --d) {  // constant indices keep `layout` in registers
      if (d >= layout.ndim) continue;
      const int64_t coord = rest % layout.shape[d];
      rest /= layout.shape[d];
      src_off += coord * layout.src_strides[d];
      dst_off += coord * layout.dst_strides[d];
    }
    dst[dst_off] = src[src_off];
  }
}

template <class T>
__global__ void fill_kernel(int64_t n, float value, T* y) {
  LLM_GRID_STRIDE(i, n) store(y, i, value);
}
__global__ void fill_i32_kernel(int64_t n, int32_t value, int32_t* y) {
  LLM_GRID_STRIDE(i, n) y[i] = value;
}

template <class T>
__global__ void add_kernel(int64_t n, const T* a, float alpha_a, int64_t nb, const T* b, float alpha_b, T* y) {
  LLM_GRID_STRIDE(i, n) store(y, i, alpha_a * load(a, i) + alpha_b * load(b, nb == n ? i : i % nb));
}
template <class T>
__global__ void mul_kernel(int64_t n, const T* a, int64_t nb, const T* b, T* y) {
  LLM_GRID_STRIDE(i, n) store(y, i, load(a, i) * load(b, nb == n ? i : i % nb));
}
template <class T>
__global__ void scale_kernel(int64_t n, const T* x, float alpha, T* y) {
  LLM_GRID_STRIDE(i, n) store(y, i, alpha * load(x, i));
}
template <class T>
__global__ void accumulate_kernel(int64_t n, const T* src, float* dst) {
  LLM_GRID_STRIDE(i, n) dst[i] += load(src, i);
}

// ---- sum: pass 1 gives each block of kSumChunk consecutive elements one fp64 partial (a fixed
// per-thread stride, then a fixed shared-memory tree); pass 2 reduces the partials the same way in
// a single block. The order of additions depends only on n.
constexpr int kSumThreads = 256;
constexpr int64_t kSumChunk = 16 * kSumThreads;

__device__ double block_reduce(double v, double* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int half = kSumThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) shared[threadIdx.x] += shared[threadIdx.x + half];
    __syncthreads();
  }
  return shared[0];
}

template <class T>
__global__ void sum_partials_kernel(int64_t n, const T* x, bool squares, double* partials) {
  __shared__ double shared[kSumThreads];
  const int64_t begin = blockIdx.x * kSumChunk, end = min(begin + kSumChunk, n);
  double s = 0.0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kSumThreads) {
    const double v = load(x, i);
    s += squares ? v * v : v;
  }
  const double total = block_reduce(s, shared);
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

__global__ void sum_final_kernel(int64_t count, const double* partials, float* out) {
  __shared__ double shared[kSumThreads];
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += kSumThreads) s += partials[i];
  const double total = block_reduce(s, shared);
  if (threadIdx.x == 0) *out = static_cast<float>(total);
}

// One thread per column, rows in increasing order: coalesced across the warp, deterministic.
template <class T>
__global__ void sum_rows_kernel(int64_t N, int64_t C, const T* x, float* y) {
  LLM_GRID_STRIDE(c, C) {
    double s = 0.0;
    for (int64_t i = 0; i < N; ++i) s += load(x, i * C + c);
    y[c] = static_cast<float>(s);
  }
}

template <class T>
__global__ void dropout_kernel(int64_t n, const T* x, float p, uint64_t key, float keep_scale, T* y) {
  LLM_GRID_STRIDE(i, n) store(y, i, dropout_mask::keep(key, i, p) ? load(x, i) * keep_scale : 0.0f);
}
}  // namespace

void f32_to_bf16(int64_t n, const float* x, bf16* y, cudaStream_t stream) {
  if (n <= 0) return;
  f32_to_bf16_kernel<<<blocks_for(n), kThreads, 0, stream>>>(n, x, y);
  check_launch("f32_to_bf16");
}

void bf16_to_f32(int64_t n, const bf16* x, float* y, cudaStream_t stream) {
  if (n <= 0) return;
  bf16_to_f32_kernel<<<blocks_for(n), kThreads, 0, stream>>>(n, x, y);
  check_launch("bf16_to_f32");
}

void copy_strided(const StridedCopy& layout, int elem_size, const void* src, void* dst, cudaStream_t stream) {
  check_args(layout.ndim >= 0 && layout.ndim <= kMaxCopyDims, "copy_strided",
             "ndim " + std::to_string(layout.ndim) + " is outside [0, " + std::to_string(kMaxCopyDims) + "]");
  int64_t n = 1;
  for (int d = 0; d < layout.ndim; ++d) {
    check_args(layout.shape[d] >= 0, "copy_strided", "negative size in dimension " + std::to_string(d));
    n *= layout.shape[d];
  }
  if (n == 0) return;
  switch (elem_size) {
    case 1: copy_strided_kernel<<<blocks_for(n), kThreads, 0, stream>>>(n, layout, static_cast<const uint8_t*>(src), static_cast<uint8_t*>(dst)); break;
    case 2: copy_strided_kernel<<<blocks_for(n), kThreads, 0, stream>>>(n, layout, static_cast<const uint16_t*>(src), static_cast<uint16_t*>(dst)); break;
    case 4: copy_strided_kernel<<<blocks_for(n), kThreads, 0, stream>>>(n, layout, static_cast<const uint32_t*>(src), static_cast<uint32_t*>(dst)); break;
    case 8: copy_strided_kernel<<<blocks_for(n), kThreads, 0, stream>>>(n, layout, static_cast<const uint64_t*>(src), static_cast<uint64_t*>(dst)); break;
    default: check_args(false, "copy_strided", "element size " + std::to_string(elem_size) + " is not 1, 2, 4 or 8");
  }
  check_launch("copy_strided");
}

template <class T>
void fill(int64_t n, float value, T* y, cudaStream_t stream) {
  if (n <= 0) return;
  fill_kernel<<<blocks_for(n), kThreads, 0, stream>>>(n, value, y);
  check_launch("fill");
}

void fill(int64_t n, int32_t value, int32_t* y, cudaStream_t stream) {
  if (n <= 0) return;
  fill_i32_kernel<<<blocks_for(n), kThreads, 0, stream>>>(n, value, y);
  check_launch("fill");
}

template <class T>
void add(int64_t n, const T* a, float alpha_a, int64_t nb, const T* b, float alpha_b, T* y, cudaStream_t stream) {
  if (n <= 0) return;
  check_args(nb >= 1 && n % nb == 0, "add", "b's " + std::to_string(nb) + " elements do not tile " + std::to_string(n));
  add_kernel<<<blocks_for(n), kThreads, 0, stream>>>(n, a, alpha_a, nb, b, alpha_b, y);
  check_launch("add");
}

template <class T>
void mul(int64_t n, const T* a, int64_t nb, const T* b, T* y, cudaStream_t stream) {
  if (n <= 0) return;
  check_args(nb >= 1 && n % nb == 0, "mul", "b's " + std::to_string(nb) + " elements do not tile " + std::to_string(n));
  mul_kernel<<<blocks_for(n), kThreads, 0, stream>>>(n, a, nb, b, y);
  check_launch("mul");
}

template <class T>
void scale(int64_t n, const T* x, float alpha, T* y, cudaStream_t stream) {
  if (n <= 0) return;
  scale_kernel<<<blocks_for(n), kThreads, 0, stream>>>(n, x, alpha, y);
  check_launch("scale");
}

template <class T>
void accumulate(int64_t n, const T* src, float* dst, cudaStream_t stream) {
  if (n <= 0) return;
  accumulate_kernel<<<blocks_for(n), kThreads, 0, stream>>>(n, src, dst);
  check_launch("accumulate");
}

int64_t sum_workspace_elems(int64_t n) { return std::max<int64_t>((n + kSumChunk - 1) / kSumChunk, 1); }

template <class T>
void sum(int64_t n, const T* x, bool squares, float* out, double* workspace, cudaStream_t stream) {
  check_args(n >= 0, "sum", "negative size " + std::to_string(n));
  const int64_t chunks = (n + kSumChunk - 1) / kSumChunk;  // 0 for n == 0: the final pass writes 0
  check_args(chunks <= INT32_MAX, "sum", std::to_string(n) + " elements are too many");
  if (chunks > 0) {
    sum_partials_kernel<<<static_cast<unsigned>(chunks), kSumThreads, 0, stream>>>(n, x, squares, workspace);
    check_launch("sum (partials)");
  }
  sum_final_kernel<<<1, kSumThreads, 0, stream>>>(chunks, workspace, out);
  check_launch("sum (final)");
}

template <class T>
void sum_rows(int64_t N, int64_t C, const T* x, float* y, cudaStream_t stream) {
  if (C <= 0) return;
  check_args(N >= 0, "sum_rows", "negative row count " + std::to_string(N));
  sum_rows_kernel<<<blocks_for(C), kThreads, 0, stream>>>(N, C, x, y);
  check_launch("sum_rows");
}

template <class T>
void dropout(int64_t n, const T* x, float p, uint64_t seed, T* y, cudaStream_t stream) {
  if (n <= 0) return;
  check_args(p >= 0.f && p <= 1.f, "dropout", "probability " + std::to_string(p) + " is outside [0, 1]");
  dropout_kernel<<<blocks_for(n), kThreads, 0, stream>>>(n, x, p, dropout_mask::key(seed), dropout_mask::keep_scale(p), y);
  check_launch("dropout");
}

#define LLM_INSTANTIATE(T)                                                                                 \
  template void fill<T>(int64_t, float, T*, cudaStream_t);                                                 \
  template void add<T>(int64_t, const T*, float, int64_t, const T*, float, T*, cudaStream_t);              \
  template void mul<T>(int64_t, const T*, int64_t, const T*, T*, cudaStream_t);                            \
  template void scale<T>(int64_t, const T*, float, T*, cudaStream_t);                                      \
  template void accumulate<T>(int64_t, const T*, float*, cudaStream_t);                                    \
  template void sum<T>(int64_t, const T*, bool, float*, double*, cudaStream_t);                            \
  template void sum_rows<T>(int64_t, int64_t, const T*, float*, cudaStream_t);                             \
  template void dropout<T>(int64_t, const T*, float, uint64_t, T*, cudaStream_t);
LLM_INSTANTIATE(float)
LLM_INSTANTIATE(bf16)
#undef LLM_INSTANTIATE

}  // namespace llm::cuda
