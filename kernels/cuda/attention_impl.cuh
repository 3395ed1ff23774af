// What attention.cu and attention_wgmma.cu share (an internal header of kernels/cuda/*.cu): the
// kernels' parameters, the mask's first-key computation, and the launch helpers of both forwards.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <limits>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/runtime.h"

namespace llm::cuda::attention_impl {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr unsigned kFullMask = 0xffffffffu;

// ---- masks -------------------------------------------------------------------------------------
// Query t sees keys [first(t), t], first(t) = max(start of t's document run, t - window + 1).

// Warp-collective: lane i returns first(t0 + i) for t0 + i < T, and T for rows past the end (they
// see nothing). doc_row is the batch row's [T] document ids, or null; t0 < T.
__device__ __forceinline__ int warp_first_keys(const int32_t* doc_row, int T, int window, int t0) {
  const int lane = threadIdx.x & 31;
  int first = 0;
  if (doc_row) {
    // The run holding t0 begins at the last position p ≤ t0 with p == 0 or doc[p] != doc[p - 1]:
    // look back 32 positions at a time (the lowest lane that finds one has the highest position).
    int run_start = 0;
    for (int hi = t0; hi > 0; hi -= 32) {
      const int p = hi - lane;
      const unsigned found = __ballot_sync(kFullMask, p > 0 && doc_row[p] != doc_row[p - 1]);
      if (found) {
        run_start = hi - (__ffs(found) - 1);
        break;
      }
    }
    // Runs that begin in (t0, t0 + lane]: the latest one is lane i's.
    const int p = t0 + lane;
    const unsigned begins = __ballot_sync(kFullMask, lane > 0 && p < T && doc_row[p] != doc_row[p - 1]);
    const unsigned upto_me = begins & (kFullMask >> (31 - lane));
    first = upto_me ? t0 + 31 - __clz(upto_me) : run_start;
  }
  const int t = t0 + lane;
  if (window > 0) first = max(first, t - window + 1);
  return t < T ? first : T;
}

// ---- shared parameters -------------------------------------------------------------------------

struct Params {
  int B, T, Hq, Hkv, D, group, window;
  int q_stride, kv_stride;  // elements between tokens of q, dq and of k, v, dk, dv (never 0 here)
  float scale;
  const bf16 *q, *k, *v, *out, *dout;
  const int32_t* doc;  // forward: document ids (or null)
  const int32_t* first_key;  // backward: first(t) per [B, T] (in the workspace)
  const float* lse;
  float* lse_out;
  float* delta;  // [B, Hq, T]
  bf16 *o, *dq, *dk, *dv;

  // Offsets of head h of token t of batch row b: in q and dq; in k, v, dk and dv; in the dense out and dout.
  __device__ int64_t q_row(int b, int t, int h) const { return (static_cast<int64_t>(b) * T + t) * q_stride + h * D; }
  __device__ int64_t kv_row(int b, int t, int h) const { return (static_cast<int64_t>(b) * T + t) * kv_stride + h * D; }
  __device__ int64_t o_row(int b, int t, int h) const { return ((static_cast<int64_t>(b) * T + t) * Hq + h) * D; }
  __device__ int64_t stat(int b, int h, int t) const { return (static_cast<int64_t>(b) * Hq + h) * T + t; }
};

// ---- host side ---------------------------------------------------------------------------------

// Blocks of per_block items each for n items, within a grid's x dimension.
inline unsigned int blocks_for(int64_t n, int64_t per_block, const char* fn) {
  const int64_t blocks = detail::ceil_div(n, per_block);
  detail::require(blocks <= std::numeric_limits<int>::max(), fn, "shape too large for one launch");
  return static_cast<unsigned int>(blocks);
}

template <class Kernel>
void allow_shared_memory(Kernel kernel, size_t bytes, const char* fn) {
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)), fn);
}

// attention.cu: the FlashAttention-2 mma.sync forward of p (D = 64 or 128, p.o and p.lse_out set).
void flash_forward(const Params& p, cudaStream_t stream);

// attention.cu: the backward's first step: first(t) into first_key (where p.first_key points) and
// Δ = rowsum(dO ⊙ O) into p.delta (p.out, p.dout set).
void backward_prologue(const Params& p, const int32_t* doc, int32_t* first_key, cudaStream_t stream);
// attention.cu: the mma.sync dK, dV and dQ kernels (after backward_prologue; p.lse, p.dout and the
// outputs set).
void flash_dkv(const Params& p, cudaStream_t stream);
void flash_dq(const Params& p, cudaStream_t stream);

// attention_wgmma.cu: whether the wgmma forward takes head dimension D now (compiled in, device of
// compute capability 9.0, the process-wide switch on). The first time it would say yes for a D, it
// runs the self-check first (the wgmma kernel against flash_forward on a small problem), which
// turns the switch off, with one line on stderr, when the two disagree.
bool forward_wgmma_usable(int64_t D);
// The wgmma forward of p (D = 64 or 128, 16-byte aligned q, k, v, out).
void flash_forward_wgmma(const Params& p, cudaStream_t stream);
// attention_wgmma.cu: which backward kernels run on wgmma for head dimension D now: as
// forward_wgmma_usable, with a self-check of their own against flash_dkv and flash_dq on first use
// per D (a kernel that fails it stays off for the process, with one line on stderr; the forward
// is not affected).
struct BackwardKernels {
  bool dkv = false, dq = false;
};
BackwardKernels backward_wgmma_usable(int64_t D);
// The wgmma dK, dV and dQ of p (as flash_dkv, flash_dq).
void flash_dkv_wgmma(const Params& p, cudaStream_t stream);
void flash_dq_wgmma(const Params& p, cudaStream_t stream);

}  // namespace llm::cuda::attention_impl
