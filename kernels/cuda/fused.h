// Fused GPU kernels: norms, activations, RoPE, softmax, cross-entropy, embedding, AdamW, gradient
// norm. Each mirrors the CPU kernel of the same name in kernels/cpu/fused.h (same layouts, same
// formulas) with T = float or bf16 for activations; statistics, losses and parameter gradients are
// fp32 and reductions accumulate in fp32. Every kernel writes (never accumulates into) its outputs
// unless it says otherwise, and results do not depend on launch timing (no float atomics).
#pragma once
#include <cstdint>

#include "kernels/cpu/fused.h"  // RopeLayout, AdamWHyper: one definition for both backends
#include "kernels/cuda/runtime.h"

namespace llm::cuda {

using cpu::AdamWHyper;
using cpu::RopeLayout;

// Every function below has two implementations, both tested against the CPU kernels: kFast
// (16-byte vector loads, block-per-row reductions, multi-block partial sums) and kSimple (scalar
// loops, one thread per row, column or element, one launch per tensor: obviously correct, slow),
// kept as the fallback should a fast kernel prove wrong on some GPU. The choice is process-wide; it starts as kFast, or kSimple
// when the environment variable LLM_CUDA_FUSED=simple is set.
enum class FusedVariant { kFast, kSimple };
void set_fused_variant(FusedVariant variant);
FusedVariant fused_variant();
const char* to_string(FusedVariant variant);

// ---- norms over the last dimension C of N rows ---------------------------------------------
template <class T>
void layernorm_forward(int64_t N, int64_t C, const T* x, const T* w, const T* b, float eps, T* y, float* mean,
                       float* rstd, cudaStream_t stream);
template <class T>
void layernorm_backward(int64_t N, int64_t C, const T* dy, const T* x, const T* w, const float* mean,
                        const float* rstd, T* dx, float* dw, float* db, cudaStream_t stream);
template <class T>
void rmsnorm_forward(int64_t N, int64_t C, const T* x, const T* w, float eps, T* y, float* rstd, cudaStream_t stream);
template <class T>
void rmsnorm_backward(int64_t N, int64_t C, const T* dy, const T* x, const T* w, const float* rstd, T* dx, float* dw,
                      cudaStream_t stream);

// ---- activations over n elements -------------------------------------------------------------
template <class T> void gelu_forward(int64_t n, const T* x, T* y, cudaStream_t stream);
template <class T> void gelu_backward(int64_t n, const T* x, const T* dy, T* dx, cudaStream_t stream);
template <class T> void silu_forward(int64_t n, const T* x, T* y, cudaStream_t stream);
template <class T> void silu_backward(int64_t n, const T* x, const T* dy, T* dx, cudaStream_t stream);
template <class T> void swiglu_forward(int64_t n, const T* gate, const T* up, T* y, cudaStream_t stream);
template <class T>
void swiglu_backward(int64_t n, const T* gate, const T* up, const T* dy, T* dgate, T* dup, cudaStream_t stream);

// ---- rotary position embedding: x, out [N, H, D]; positions [N]; out may equal x ------------
template <class T>
void rope(int64_t N, int64_t H, int64_t D, const T* x, const int32_t* positions, const RopeFrequencies& freqs,
          RopeLayout layout, bool inverse, T* out, cudaStream_t stream);

// ---- softmax and cross-entropy over rows ----------------------------------------------------
template <class T> void softmax_forward(int64_t N, int64_t C, const T* x, T* y, cudaStream_t stream);
template <class T> void softmax_backward(int64_t N, int64_t C, const T* y, const T* dy, T* dx, cudaStream_t stream);
// losses[i] = lse[i] - logits[i, targets[i]] (0 where targets[i] == ignore_index); targets in [0, V)
// otherwise (the caller checks).
template <class T>
void cross_entropy_forward(int64_t N, int64_t V, const T* logits, const int32_t* targets, int32_t ignore_index,
                           float* losses, float* lse, cudaStream_t stream);
// dlogits[i] = dloss[i] · (softmax(logits[i]) − onehot(targets[i])), zero rows where ignored. Rows
// of dlogits are ld_dlogits ≥ V elements apart (the elements past V untouched): a row length that is a
// multiple of 8 keeps every row 16-byte aligned for the GEMMs that read the gradient next. dlogits
// may equal logits when ld_dlogits == V (overwritten in place, each element read once and written once).
template <class T>
void cross_entropy_backward(int64_t N, int64_t V, const T* logits, const int32_t* targets, int32_t ignore_index,
                            const float* lse, const float* dloss, T* dlogits, int64_t ld_dlogits, cudaStream_t stream);

// ---- embedding: table [V, C] ----------------------------------------------------------------
template <class T>
void embedding_forward(int64_t N, int64_t C, const int32_t* ids, const T* table, T* out, cudaStream_t stream);
// dtable[v] = sum of dout[i] over the i with ids[i] == v, summed in increasing i (deterministic:
// bit-identical from run to run). Rows of unused ids are zero.
template <class T>
void embedding_backward(int64_t N, int64_t C, int64_t V, const int32_t* ids, const T* dout, float* dtable,
                        cudaStream_t stream);

// ---- optimizer and gradient norm over many tensors at once ---------------------------------
struct AdamWTensor {
  float* param;         // fp32 master weights, updated in place
  const float* grad;    // fp32
  float* m;             // fp32 first moment
  float* v;             // fp32 second moment
  bf16* param_bf16;     // optional: also writes the updated parameter rounded to bf16 (the compute copy)
  int64_t n;
  bool decay;           // apply weight decay to this tensor
};
// One launch for all tensors (host array `tensors` of `count` entries). grad_scale_device (optional,
// one fp32 on the device) multiplies every gradient, on top of h.grad_scale: global-norm clipping
// without a host round trip.
void adamw_update(const AdamWTensor* tensors, int count, const AdamWHyper& h, const float* grad_scale_device,
                  cudaStream_t stream);
// *sumsq_device = Σ over all tensors of Σ g², accumulated in fp32 with a fixed order (deterministic).
void sum_of_squares(const float* const* grads, const int64_t* sizes, int count, float* sumsq_device,
                    cudaStream_t stream);
// *scale_device = the clipping factor for adamw_update from norm = sqrt(*sumsq_device), as
// optim::clip_scale: 1 when max_norm <= 0 or norm <= max_norm, else max_norm / (norm + 1e-6).
void clip_scale(const float* sumsq_device, float max_norm, float* scale_device, cudaStream_t stream);

}  // namespace llm::cuda
