// Fused, OpenMP-parallel, vectorized CPU kernels: norms, activations, RoPE, softmax, cross-entropy,
// embedding, AdamW. Every kernel writes (never accumulates into) its outputs. Reductions across rows
// (weight/bias gradients) use a fixed partition, so results are bit-identical at a fixed thread count.
#pragma once
#include <cstdint>

#include "kernels/rope_frequencies.h"

namespace llm::cpu {

// ---- norms over the last dimension C of N rows ---------------------------------------------
// y = (x - mean) * rstd * w + b; saves mean[N] and rstd[N] = 1/sqrt(var + eps) (biased variance).
void layernorm_forward(int64_t N, int64_t C, const float* x, const float* w, const float* b, float eps,
                       float* y, float* mean, float* rstd);
void layernorm_backward(int64_t N, int64_t C, const float* dy, const float* x, const float* w,
                        const float* mean, const float* rstd, float* dx, float* dw, float* db);
// y = x * rstd * w with rstd = 1/sqrt(mean(x²) + eps); saves rstd[N].
void rmsnorm_forward(int64_t N, int64_t C, const float* x, const float* w, float eps, float* y, float* rstd);
void rmsnorm_backward(int64_t N, int64_t C, const float* dy, const float* x, const float* w,
                      const float* rstd, float* dx, float* dw);

// ---- activations over n elements -------------------------------------------------------------
// GELU, tanh approximation (GPT-2): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x³))).
void gelu_forward(int64_t n, const float* x, float* y);
void gelu_backward(int64_t n, const float* x, const float* dy, float* dx);
// SiLU: x * sigmoid(x).
void silu_forward(int64_t n, const float* x, float* y);
void silu_backward(int64_t n, const float* x, const float* dy, float* dx);
// SwiGLU: y = silu(gate) * up.
void swiglu_forward(int64_t n, const float* gate, const float* up, float* y);
void swiglu_backward(int64_t n, const float* gate, const float* up, const float* dy, float* dgate, float* dup);

// ---- rotary position embedding -------------------------------------------------------------
enum class RopeLayout {
  kHalf,         // Hugging Face rotate_half: dimension i pairs with i + D/2
  kInterleaved,  // Meta / llama2.c: dimension 2i pairs with 2i+1
};
// x, out: [N, H, D] (N tokens of H heads); positions: [N]. Pair i rotates by pos * f_i, f_i as
// kernels/rope_frequencies.h defines it (theta^(-2i/D), optionally rescaled). inverse rotates by the
// negative angle (that is the backward). out may equal x. D must be even.
void rope(int64_t N, int64_t H, int64_t D, const float* x, const int32_t* positions, const RopeFrequencies& freqs,
          RopeLayout layout, bool inverse, float* out);

// ---- softmax and cross-entropy over rows ----------------------------------------------------
void softmax_forward(int64_t N, int64_t C, const float* x, float* y);
void softmax_backward(int64_t N, int64_t C, const float* y, const float* dy, float* dx);
// losses[i] = logsumexp(logits[i]) - logits[i, targets[i]]; lse[i] = logsumexp(logits[i]).
// Rows whose target equals ignore_index get loss 0 (lse is still written). Targets must be in [0, V)
// otherwise (the caller checks).
void cross_entropy_forward(int64_t N, int64_t V, const float* logits, const int32_t* targets,
                           int32_t ignore_index, float* losses, float* lse);
// dlogits[i] = dloss[i] * (softmax(logits[i]) - onehot(targets[i])); zero rows for ignored targets.
// dlogits may equal logits (the gradient overwrites the logits in place).
void cross_entropy_backward(int64_t N, int64_t V, const float* logits, const int32_t* targets,
                            int32_t ignore_index, const float* lse, const float* dloss, float* dlogits);

// ---- embedding -----------------------------------------------------------------------------
// out[i] = table[ids[i]] for N ids into a V×C table (ids checked by the caller).
void embedding_forward(int64_t N, int64_t C, const int32_t* ids, const float* table, float* out);
// dtable (V×C) = sum over i of dout[i] scattered to row ids[i]. Deterministic for any thread count.
void embedding_backward(int64_t N, int64_t C, int64_t V, const int32_t* ids, const float* dout, float* dtable);

// ---- AdamW ---------------------------------------------------------------------------------
struct AdamWHyper {
  float lr;
  float beta1;
  float beta2;
  float eps;
  float weight_decay;  // decoupled: param -= lr * weight_decay * param
  int64_t step;        // 1-based step count, for bias correction
  float grad_scale;    // grad is multiplied by this first (global-norm clipping, loss scaling); 1 = off
};
// m, v (fp32 moments) and param are updated in place.
void adamw_update(int64_t n, float* param, const float* grad, float* m, float* v, const AdamWHyper& h);

}  // namespace llm::cpu
