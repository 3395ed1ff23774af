// Elementwise GPU kernels under the engine's CUDA ops: dtype casts, strided copies (contiguous() of
// views), fill, broadcasting add/mul, scale, gradient accumulation, deterministic sums and dropout.
// Each mirrors the CPU kernel of the same name in kernels/cpu/elementwise.h; T is float or bf16
// (bf16 values are computed in fp32 and rounded once). Outputs may alias inputs of the same type
// (element i only reads index i before writing it). All launches go to `stream`, none synchronizes.
#pragma once
#include <cstdint>

#include "kernels/cuda/runtime.h"

namespace llm::cuda {

// ---- dtype conversion (round to nearest even; NaN stays NaN) --------------------------------
void f32_to_bf16(int64_t n, const float* x, bf16* y, cudaStream_t stream);
void bf16_to_f32(int64_t n, const bf16* x, float* y, cudaStream_t stream);

// ---- strided copy ----------------------------------------------------------------------------
constexpr int kMaxCopyDims = 5;
// dst[i0..i4] = src[i0..i4] for every index of `shape` (ndim ≤ kMaxCopyDims), element offsets given
// by each side's strides (in elements, any sign). Elements are moved as raw bits of elem_size bytes
// (1, 2, 4 or 8: f32, bf16, i32 ... alike). src and dst must not overlap.
struct StridedCopy {
  int ndim = 0;
  int64_t shape[kMaxCopyDims] = {};
  int64_t src_strides[kMaxCopyDims] = {};
  int64_t dst_strides[kMaxCopyDims] = {};
};
void copy_strided(const StridedCopy& layout, int elem_size, const void* src, void* dst, cudaStream_t stream);

// ---- maps --------------------------------------------------------------------------------------
template <class T> void fill(int64_t n, float value, T* y, cudaStream_t stream);
void fill(int64_t n, int32_t value, int32_t* y, cudaStream_t stream);
// y[i] = alpha_a·a[i] + alpha_b·b[i mod nb]: nb == n is the plain sum, nb < n repeats b (a row of nb
// values over n / nb rows, or nb == 1 one value): the CPU ops' broadcasting. n is a multiple of nb.
template <class T>
void add(int64_t n, const T* a, float alpha_a, int64_t nb, const T* b, float alpha_b, T* y, cudaStream_t stream);
// y[i] = a[i]·b[i mod nb], broadcasting as add.
template <class T> void mul(int64_t n, const T* a, int64_t nb, const T* b, T* y, cudaStream_t stream);
template <class T> void scale(int64_t n, const T* x, float alpha, T* y, cudaStream_t stream);
// dst[i] += src[i] (gradient accumulation; dst fp32, src float or bf16).
template <class T> void accumulate(int64_t n, const T* src, float* dst, cudaStream_t stream);

// ---- deterministic reductions ------------------------------------------------------------------
// *out = Σ x[i] (squares when `squares`), fp32 out. Two passes in a fixed order (blocks of a fixed
// size, then their partial sums in one block, in fp64): bit-identical from run to run. workspace
// holds sum_workspace_elems(n) doubles.
int64_t sum_workspace_elems(int64_t n);
template <class T>
void sum(int64_t n, const T* x, bool squares, float* out, double* workspace, cudaStream_t stream);
// y[c] = Σ_i x[i, c] over N rows of C (fp32 out, fp64 accumulation in row order): the gradient of
// a broadcast row.
template <class T> void sum_rows(int64_t N, int64_t C, const T* x, float* y, cudaStream_t stream);

// ---- dropout (the mask of kernels/dropout_mask.h, identical to the CPU's) ---------------------
// y[i] = x[i]/(1 − p) where element i is kept, else 0; backward is the same call on dy.
template <class T> void dropout(int64_t n, const T* x, float p, uint64_t seed, T* y, cudaStream_t stream);

}  // namespace llm::cuda
