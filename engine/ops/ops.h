// Differentiable ops. Each op is a forward function and, next to it in the same file, the autograd
// node with its backward (the MLX shape: adding an op touches one place per backend). Ops take
// tensors of any layout (they make inputs contiguous as needed) and return new contiguous tensors
// on their inputs' device; inputs on different devices are an error naming the op and both devices.
// Misuse (shape, dtype, device) throws llm::Error naming the op.
//
// Precision. On the CPU floating-point math is f32. On CUDA ops take f32 or bf16 tensors, compute in
// fp32 registers whatever the storage, and follow one mixed-precision rule, so that fp32 master
// weights meet bf16 activations and still receive fp32 gradients:
//   - ops with parameters (linear, layer_norm, rms_norm) read an f32 parameter at the activation's
//     precision (a bf16 copy made inside the op, outside the graph) and compute its gradient from
//     fp32 accumulators, returned in the parameter's own dtype; embedding returns rows in the table's
//     dtype (models cast them to their activation dtype) and its table gradient the same way;
//   - elementwise ops (add, sub, mul, swiglu) and cat whose floating inputs mix bf16 and f32 cast the f32 ones
//     to bf16 through ops::cast, whose backward returns the gradient in f32;
//   - matmul, linear and attention run on bf16 tensor cores: their result is bf16 when any floating
//     input is bf16, f32 otherwise (an all-f32 graph stays f32, with products of bf16-rounded operands);
//   - reductions to statistics (sum, mean, cross_entropy, token_logprobs) return f32;
//   - everything else returns its input's dtype, and every gradient has the dtype of the tensor it
//     is the gradient of (leaves accumulate .grad on their device).
// quantize_q8 and linear_q8 run on the CPU only (a clear error on CUDA).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/core/tensor.h"
#include "kernels/cpu/fused.h"

namespace llm::ops {

// ---- shapes and copies (views share storage) -- shape_ops.cpp ------------------------------
Tensor view(const Tensor& x, const Shape& shape);     // contiguous x; one dim may be -1
Tensor reshape(const Tensor& x, const Shape& shape);  // a view when possible, else a copy
Tensor transpose(const Tensor& x, int d0, int d1);
Tensor permute(const Tensor& x, const std::vector<int>& dims);
Tensor slice(const Tensor& x, int dim, int64_t start, int64_t end);
Tensor select(const Tensor& x, int dim, int64_t index);
Tensor unsqueeze(const Tensor& x, int dim);
Tensor squeeze(const Tensor& x, int dim);
Tensor clone(const Tensor& x);  // contiguous copy
// x converted to another floating dtype, differentiably: the gradient comes back in x's dtype.
Tensor cast(const Tensor& x, DType dtype);
// Concatenation along dim (all other sizes equal).
Tensor cat(const std::vector<Tensor>& xs, int dim);
// Splits x along dim into contiguous pieces of the given sizes (summing to x's size there); one node
// whose backward concatenates the pieces' gradients (e.g. a fused QKV projection into q, k, v).
std::vector<Tensor> split(const Tensor& x, int dim, const std::vector<int64_t>& sizes);

// ---- elementwise and reductions -- elementwise_ops.cpp --------------------------------------
// Broadcasting: b has a's shape, or a suffix of it (a bias row, [C] against [..., C]), or one element.
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor scale(const Tensor& x, float alpha);
Tensor sum(const Tensor& x);   // all elements → scalar
Tensor mean(const Tensor& x);  // all elements → scalar
// Inverted dropout with a counter-based mask from `seed` (same mask for any thread count).
// Identity when !training or p == 0.
Tensor dropout(const Tensor& x, float p, uint64_t seed, bool training = true);

// ---- matrix products -- matmul_ops.cpp ------------------------------------------------------
// op(a)·op(b) over the last two dimensions; leading (batch) dimensions of a and b must be equal,
// or b may be 2-D and shared by every batch.
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);
// x [..., in] · wᵀ (w [out, in], as nn.Linear) + bias [out] (optional) → [..., out].
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias = Tensor());
// A linear layer fused with what follows it in a transformer block (one op, on CUDA one GEMM with
// the rest in its epilogue): gelu(x·Wᵀ + bias), and residual + x·Wᵀ + bias (residual of the output's
// shape; its gradient is the output's).
Tensor linear_gelu(const Tensor& x, const Tensor& w, const Tensor& bias = Tensor());
Tensor linear_residual(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& residual);
// Which GEMM runs matmul and linear on CUDA, process-wide (config `kernels.matmul`): the hand-written
// tensor-core kernel, cuBLASLt, auto (each shape timed once, the faster kept), or the simple
// reference kernel (slow; the fallback should a fast one misbehave). No effect on the CPU.
enum class MatmulBackend { kNative, kCublas, kAuto, kSimple };
void set_matmul_backend(MatmulBackend backend);
MatmulBackend matmul_backend();
MatmulBackend parse_matmul_backend(const std::string& name);  // "native", "cublas", "auto", "simple"
const char* to_string(MatmulBackend backend);

// ---- neural-network ops -- nn_ops.cpp ---------------------------------------------------------
Tensor gelu(const Tensor& x);  // tanh approximation (GPT-2)
Tensor silu(const Tensor& x);
Tensor swiglu(const Tensor& gate, const Tensor& up);  // silu(gate) * up
Tensor softmax(const Tensor& x);                      // over the last dimension
// Over the last dimension; w and b have that dimension's size.
Tensor layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps = 1e-5f);
Tensor rms_norm(const Tensor& x, const Tensor& w, float eps = 1e-5f);
// ids (i32, any shape) into table [V, C] → [ids..., C]. Ids out of range are an error.
Tensor embedding(const Tensor& ids, const Tensor& table);
// x [B, T, H, D]; positions i32 [T] (shared by the batch) or [B, T]. freqs: a theta such as 10000.f,
// or a theta with a context-extension scaling (kernels/rope_frequencies.h).
Tensor rope(const Tensor& x, const Tensor& positions, const RopeFrequencies& freqs,
            cpu::RopeLayout layout = cpu::RopeLayout::kHalf);
// Causal attention. q [B, T, Hq, D], k and v [B, T, Hkv, D] (Hq a multiple of Hkv) → [B, T, Hq, D].
// doc (optional, i32 [B, T]): segment ids; each run of equal ids is one packed document, and a
// token attends only to earlier tokens of its own run. window > 0: a sliding window (Mistral), query
// t sees only keys t - window + 1 .. t. scale <= 0 means 1/sqrt(D).
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& doc = Tensor(),
                 float scale = 0.f, int64_t window = 0);
// The same over GPT-2's fused projection: qkv [B, T, 3·H·D] holds each token's q, k and v side by
// side; read in place (no split copies), the gradient comes back in the same layout. → [B, T, H, D].
Tensor attention_qkv(const Tensor& qkv, int64_t heads, const Tensor& doc = Tensor(), float scale = 0.f);
// Which kernels run attention on CUDA, process-wide (config `kernels.attention`): auto (tensor cores
// for head dims 64 and 128, else the simple kernels), simple (the slow reference everywhere) or
// tensor_core (an error where it does not apply). No effect on the CPU.
enum class AttentionBackend { kAuto, kSimple, kTensorCore };
void set_attention_backend(AttentionBackend backend);
AttentionBackend attention_backend();
AttentionBackend parse_attention_backend(const std::string& name);  // "auto", "simple", "tensor_core"
const char* to_string(AttentionBackend backend);
// Inference attention against a KV cache (not differentiable; no autograd recording allowed):
// q [B, Tq, Hq, D], k_cache/v_cache [B, S, Hkv, D], past i32 [B] (tokens cached before these queries).
// Query t of row b attends to cache slots 0 .. past[b] + t (the last `window` of them when window > 0).
// scale <= 0 means 1/sqrt(D). On CUDA q is read in the caches' dtype (f32 or bf16, fp32 softmax) and
// the result is bf16 when q or the caches are.
Tensor attention_cached(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& past,
                        float scale = 0.f, int64_t window = 0);
// Inference, in place: new keys or values x [B, T, H, D] into cache [B, S, H, D] (contiguous), x[b, t]
// into slot past[b] + t for t < n_new[b]; past and n_new are i32 [B] on the cache's device with
// past[b] + n_new[b] <= S (checked on the CPU; on CUDA slots past S are never written). x is converted
// to the cache's dtype. Not differentiable.
void kv_cache_write(const Tensor& x, const Tensor& past, const Tensor& n_new, const Tensor& cache);
// Weight-only int8 (Q8_0, kernels/cpu/quant.h) for inference: a [N, K] matrix as int8 blocks with
// scales. linear_q8 is x·Wᵀ + bias with such a matrix (not differentiable).
struct Q8Matrix {
  Tensor q;       // u8 storage of the int8 values, [N, K]
  Tensor scales;  // f32 [N, K/32]
  bool defined() const { return q.defined(); }
};
Q8Matrix quantize_q8(const Tensor& w);
Tensor linear_q8(const Tensor& x, const Q8Matrix& w, const Tensor& bias = Tensor());
// Mean over rows whose target is not ignore_index of -log softmax(logits)[target].
// logits [..., V], targets i32 with logits' leading shape. All rows ignored gives 0.
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int32_t ignore_index = -100);
// Each target's log-probability under softmax(logits): logits [..., V], targets [...] → f32 [...], 0 where
// the target is ignore_index. The per-token quantity of policy-gradient objectives and of scoring text.
Tensor token_logprobs(const Tensor& logits, const Tensor& targets, int32_t ignore_index = -100);

}  // namespace llm::ops

namespace llm {
inline Tensor operator+(const Tensor& a, const Tensor& b) { return ops::add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return ops::sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return ops::mul(a, b); }
inline Tensor operator*(const Tensor& a, float s) { return ops::scale(a, s); }
inline Tensor operator*(float s, const Tensor& a) { return ops::scale(a, s); }
}  // namespace llm
