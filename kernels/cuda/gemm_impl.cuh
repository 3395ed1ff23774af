// Shared by the gemm implementations (gemm.cu, gemm_native.cu, gemm_wgmma.cu, gemm_cublas.cu), not
// by callers: the per-element epilogue of kernels/cuda/gemm.h in one place, and each path's entry.
#pragma once
#include <algorithm>
#include <cstdint>

#include "kernels/cuda/gemm.h"
#ifdef __CUDACC__
#include "kernels/cuda/device_util.cuh"
#endif

namespace llm::cuda::gemm_impl {

// Everything after the product, per element of C (gemm.h's order). Pointers already point at
// the batch chunk being launched; batch item z is at + z·stride_c.
struct Epilogue {
  float alpha = 1.f, beta = 0.f;
  const float* bias = nullptr;
  bool gelu = false;
  void* pre_gelu = nullptr;
  const void* residual = nullptr;
  void* C = nullptr;
  int64_t ldc = 0, stride_c = 0;
  bool c_fp32 = false;
  bool pairs = false;  // C, pre_gelu, residual, ldc and stride_c allow 2-element vector access
};

Epilogue make_epilogue(const Gemm& g);
// e for batch items from `first` on (launches cover at most kMaxGridZ items each).
Epilogue shift_batch(Epilogue e, int64_t first);
constexpr int64_t kMaxGridZ = 65535;

// The reference kernel: one thread per output, fp32 accumulation. Any shape, layout, alignment.
void gemm_simple(const Gemm& g, cudaStream_t stream);
// The tensor-core kernel; only for shapes where native_fast_supported(g).
bool native_fast_supported(const Gemm& g);
void gemm_native_fast(const Gemm& g, cudaStream_t stream);
// Hopper's wgmma kernel for the NT case (A M×K, B N×K); only where wgmma_usable(g): g is NT, meets
// native_fast_supported's alignment rules, the kernel was compiled in (sm_90a), the current device
// is compute capability 9.0 and the switch in gemm.h is on.
bool wgmma_usable(const Gemm& g);
void gemm_wgmma(const Gemm& g, cudaStream_t stream);
// cuBLASLt; returns false (having launched nothing) when it cannot express g.
bool gemm_cublas(const Gemm& g, cudaStream_t stream);
// Whether x and reference, two results of g's product (extent elements of C's type, on the device),
// agree to within bf16 rounding; diff and scale get the largest difference and largest |reference|.
// Synchronizes the stream.
bool results_agree(const Gemm& g, const void* x, const void* reference, int64_t extent, cudaStream_t stream,
                   float& diff, float& scale);
// C = epilogue(P) where P (C's type, ldc, stride_c) holds the product: the part of the epilogue
// that cuBLASLt could not fuse. P may be C or pre_gelu (each element is read before it is written).
void epilogue_from(const Epilogue& e, const void* P, int64_t M, int64_t N, int64_t batch, cudaStream_t stream);

#ifdef __CUDACC__
constexpr float kGeluK0 = 0.7978845608028654f;  // sqrt(2/pi), as kernels/cpu/activation.cpp
constexpr float kGeluK1 = 0.044715f;

// x · sigmoid(2u) == 0.5 x (1 + tanh(u)); the sigmoid form has no cancellation for large negative u.
__device__ __forceinline__ float gelu_tanh(float x) {
  const float u = kGeluK0 * (x + kGeluK1 * x * x * x);
  return x / (1.f + expf(-2.f * u));
}

using detail::from_f32;
using detail::to_f32;

template <class T>
__device__ __forceinline__ void finish_one(const Epilogue& e, int64_t idx, int64_t n, float acc) {
  float v = e.alpha * acc;
  if (e.bias) v += e.bias[n];
  if (e.gelu) {
    if (e.pre_gelu) static_cast<T*>(e.pre_gelu)[idx] = from_f32<T>(v);
    v = gelu_tanh(v);
  }
  if (e.beta != 0.f) v += e.beta * to_f32(static_cast<const T*>(e.C)[idx]);
  if (e.residual) v += to_f32(static_cast<const T*>(e.residual)[idx]);
  static_cast<T*>(e.C)[idx] = from_f32<T>(v);
}

// The (block row, block column) of C this block computes, for a grid of gridDim.y × gridDim.x tiles.
// The operands of a tiled tensor-core kernel (gemm_native.cu, gemm_wgmma.cu).
struct TileArgs {
  const bf16* A;
  const bf16* B;
  int64_t lda, ldb, stride_a, stride_b;
  int64_t M, N, K;
  Epilogue ep;
};

// Calls launch(chunk, grid) over g's bm×bn block tiles, the batch along z in chunks of at most
// kMaxGridZ items (chunk: the operands and epilogue shifted to the chunk's first item).
template <class Launch>
void for_each_chunk(const Gemm& g, int64_t bm, int64_t bn, Launch launch) {
  const TileArgs args{g.A, g.B, g.lda, g.ldb, g.stride_a, g.stride_b, g.M, g.N, g.K, make_epilogue(g)};
  for (int64_t first = 0; first < g.batch; first += kMaxGridZ) {
    const dim3 grid(static_cast<unsigned>((g.N + bn - 1) / bn), static_cast<unsigned>((g.M + bm - 1) / bm),
                    static_cast<unsigned>(std::min<int64_t>(g.batch - first, kMaxGridZ)));
    TileArgs chunk = args;
    chunk.A += first * g.stride_a;
    chunk.B += first * g.stride_b;
    chunk.ep = shift_batch(args.ep, first);
    launch(static_cast<const TileArgs&>(chunk), grid);
  }
}
// Launches `kernel` over g's bm×bn block tiles with `smem` bytes of dynamic shared memory; `what`
// names the kernel in errors.
template <class Kernel>
void launch_tiles(Kernel kernel, const Gemm& g, int64_t bm, int64_t bn, int threads, int smem, cudaStream_t stream,
                  const char* what) {
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem), what);
  for_each_chunk(g, bm, bn, [&](const TileArgs& chunk, dim3 grid) {
    kernel<<<grid, threads, smem, stream>>>(chunk);
    check_launch(what);
  });
}
// Blocks start in launch order (x fastest). Walking the tiles in bands of kBandRows block rows,
// column by column within a band, keeps a band's A rows and a few B columns in L2 together
// instead of streaming all of B once per block row. A bijection on the grid's tiles.
__device__ __forceinline__ void banded_tile(int64_t& tile_m, int64_t& tile_n) {
  constexpr int64_t kBandRows = 8;
  const int64_t grid_n = gridDim.x, grid_m = gridDim.y;
  const int64_t linear = static_cast<int64_t>(blockIdx.y) * grid_n + blockIdx.x;
  const int64_t band = linear / (kBandRows * grid_n), in_band = linear % (kBandRows * grid_n);
  const int64_t band_rows = grid_m - band * kBandRows < kBandRows ? grid_m - band * kBandRows : kBandRows;
  tile_m = band * kBandRows + in_band % band_rows;
  tile_n = in_band / band_rows;
}

// Element (m, n) of batch item z.
__device__ __forceinline__ void finish(const Epilogue& e, int64_t z, int64_t m, int64_t n, float acc) {
  const int64_t idx = z * e.stride_c + m * e.ldc + n;
  if (e.c_fp32)
    finish_one<float>(e, idx, n, acc);
  else
    finish_one<bf16>(e, idx, n, acc);
}

template <class T> struct Pair;
template <> struct Pair<float> { using type = float2; };
template <> struct Pair<bf16> { using type = __nv_bfloat162; };

template <class T>
__device__ __forceinline__ void finish_pair_vec(const Epilogue& e, int64_t idx, int64_t n, float a0, float a1) {
  using P = typename Pair<T>::type;
  float v0 = e.alpha * a0, v1 = e.alpha * a1;
  if (e.bias) v0 += e.bias[n], v1 += e.bias[n + 1];
  if (e.gelu) {
    if (e.pre_gelu) {
      P p;
      p.x = from_f32<T>(v0), p.y = from_f32<T>(v1);
      *reinterpret_cast<P*>(static_cast<T*>(e.pre_gelu) + idx) = p;
    }
    v0 = gelu_tanh(v0), v1 = gelu_tanh(v1);
  }
  if (e.beta != 0.f) {
    const P c = *reinterpret_cast<const P*>(static_cast<const T*>(e.C) + idx);
    v0 += e.beta * to_f32(c.x), v1 += e.beta * to_f32(c.y);
  }
  if (e.residual) {
    const P r = *reinterpret_cast<const P*>(static_cast<const T*>(e.residual) + idx);
    v0 += to_f32(r.x), v1 += to_f32(r.y);
  }
  P out;
  out.x = from_f32<T>(v0), out.y = from_f32<T>(v1);
  *reinterpret_cast<P*>(static_cast<T*>(e.C) + idx) = out;
}

// Elements (m, n) and (m, n + 1) of batch item z, n even; columns ≥ N are skipped.
__device__ __forceinline__ void finish_pair(const Epilogue& e, int64_t z, int64_t m, int64_t n, int64_t N, float a0,
                                            float a1) {
  if (n + 1 < N && e.pairs) {
    const int64_t idx = z * e.stride_c + m * e.ldc + n;
    if (e.c_fp32)
      finish_pair_vec<float>(e, idx, n, a0, a1);
    else
      finish_pair_vec<bf16>(e, idx, n, a0, a1);
    return;
  }
  if (n < N) finish(e, z, m, n, a0);
  if (n + 1 < N) finish(e, z, m, n + 1, a1);
}
#endif  // __CUDACC__

}  // namespace llm::cuda::gemm_impl
