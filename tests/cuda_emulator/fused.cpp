// kernels/cuda/fused.h on the CPU: each function is its cpu:: namesake on fp32 copies of the
// inputs, with T-typed outputs rounded once (statistics, losses and parameter gradients stay fp32).
#include "kernels/cuda/fused.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "tests/cuda_emulator/kernel_util.h"

namespace llm::cuda {

namespace emu = cuda_emulator;

namespace {
std::vector<float> buffer(int64_t n) { return std::vector<float>(static_cast<size_t>(n)); }
}  // namespace

// ---- norms -----------------------------------------------------------------------------------

template <class T>
void layernorm_forward(int64_t N, int64_t C, const T* x, const T* w, const T* b, float eps, T* y, float* mean,
                       float* rstd, cudaStream_t stream) {
  constexpr const char* kFn = "cuda::layernorm_forward";
  emu::require_stream(stream, kFn);
  const auto xf = emu::read(x, N * C, kFn, "x"), wf = emu::read(w, C, kFn, "w"), bf = emu::read(b, C, kFn, "b");
  auto yf = buffer(N * C), mf = buffer(N), rf = buffer(N);
  cpu::layernorm_forward(N, C, xf.data(), wf.data(), bf.data(), eps, yf.data(), mf.data(), rf.data());
  emu::write(yf, y, kFn, "y");
  emu::write(mf, mean, kFn, "mean");
  emu::write(rf, rstd, kFn, "rstd");
}

template <class T>
void layernorm_backward(int64_t N, int64_t C, const T* dy, const T* x, const T* w, const float* mean,
                        const float* rstd, T* dx, float* dw, float* db, cudaStream_t stream) {
  constexpr const char* kFn = "cuda::layernorm_backward";
  emu::require_stream(stream, kFn);
  const auto dyf = emu::read(dy, N * C, kFn, "dy"), xf = emu::read(x, N * C, kFn, "x"), wf = emu::read(w, C, kFn, "w"),
             mf = emu::read(mean, N, kFn, "mean"), rf = emu::read(rstd, N, kFn, "rstd");
  auto dxf = buffer(N * C), dwf = buffer(C), dbf = buffer(C);
  cpu::layernorm_backward(N, C, dyf.data(), xf.data(), wf.data(), mf.data(), rf.data(), dxf.data(), dwf.data(), dbf.data());
  emu::write(dxf, dx, kFn, "dx");
  emu::write(dwf, dw, kFn, "dw");
  emu::write(dbf, db, kFn, "db");
}

template <class T>
void rmsnorm_forward(int64_t N, int64_t C, const T* x, const T* w, float eps, T* y, float* rstd, cudaStream_t stream) {
  constexpr const char* kFn = "cuda::rmsnorm_forward";
  emu::require_stream(stream, kFn);
  const auto xf = emu::read(x, N * C, kFn, "x"), wf = emu::read(w, C, kFn, "w");
  auto yf = buffer(N * C), rf = buffer(N);
  cpu::rmsnorm_forward(N, C, xf.data(), wf.data(), eps, yf.data(), rf.data());
  emu::write(yf, y, kFn, "y");
  emu::write(rf, rstd, kFn, "rstd");
}

template <class T>
void rmsnorm_backward(int64_t N, int64_t C, const T* dy, const T* x, const T* w, const float* rstd, T* dx, float* dw,
                      cudaStream_t stream) {
  constexpr const char* kFn = "cuda::rmsnorm_backward";
  emu::require_stream(stream, kFn);
  const auto dyf = emu::read(dy, N * C, kFn, "dy"), xf = emu::read(x, N * C, kFn, "x"), wf = emu::read(w, C, kFn, "w"),
             rf = emu::read(rstd, N, kFn, "rstd");
  auto dxf = buffer(N * C), dwf = buffer(C);
  cpu::rmsnorm_backward(N, C, dyf.data(), xf.data(), wf.data(), rf.data(), dxf.data(), dwf.data());
  emu::write(dxf, dx, kFn, "dx");
  emu::write(dwf, dw, kFn, "dw");
}

// ---- activations -------------------------------------------------------------------------------

namespace {
// y = f(x) for a cpu:: map f(n, x, y).
template <class T, class F>
void unary(const char* fn, F f, int64_t n, const T* x, T* y, cudaStream_t stream) {
  emu::require_stream(stream, fn);
  const auto xf = emu::read(x, n, fn, "x");
  auto yf = buffer(n);
  f(n, xf.data(), yf.data());
  emu::write(yf, y, fn, "y");
}
// out = f(a, b) for a cpu:: map f(n, a, b, out).
template <class T, class F>
void binary(const char* fn, F f, int64_t n, const T* a, const char* a_name, const T* b, const char* b_name, T* out,
            const char* out_name, cudaStream_t stream) {
  emu::require_stream(stream, fn);
  const auto af = emu::read(a, n, fn, a_name), bf = emu::read(b, n, fn, b_name);
  auto of = buffer(n);
  f(n, af.data(), bf.data(), of.data());
  emu::write(of, out, fn, out_name);
}
}  // namespace

template <class T> void gelu_forward(int64_t n, const T* x, T* y, cudaStream_t stream) {
  unary("cuda::gelu_forward", cpu::gelu_forward, n, x, y, stream);
}
template <class T> void gelu_backward(int64_t n, const T* x, const T* dy, T* dx, cudaStream_t stream) {
  binary("cuda::gelu_backward", cpu::gelu_backward, n, x, "x", dy, "dy", dx, "dx", stream);
}
template <class T> void silu_forward(int64_t n, const T* x, T* y, cudaStream_t stream) {
  unary("cuda::silu_forward", cpu::silu_forward, n, x, y, stream);
}
template <class T> void silu_backward(int64_t n, const T* x, const T* dy, T* dx, cudaStream_t stream) {
  binary("cuda::silu_backward", cpu::silu_backward, n, x, "x", dy, "dy", dx, "dx", stream);
}
template <class T> void swiglu_forward(int64_t n, const T* gate, const T* up, T* y, cudaStream_t stream) {
  binary("cuda::swiglu_forward", cpu::swiglu_forward, n, gate, "gate", up, "up", y, "y", stream);
}
template <class T>
void swiglu_backward(int64_t n, const T* gate, const T* up, const T* dy, T* dgate, T* dup, cudaStream_t stream) {
  constexpr const char* kFn = "cuda::swiglu_backward";
  emu::require_stream(stream, kFn);
  const auto gf = emu::read(gate, n, kFn, "gate"), uf = emu::read(up, n, kFn, "up"), dyf = emu::read(dy, n, kFn, "dy");
  auto dgf = buffer(n), duf = buffer(n);
  cpu::swiglu_backward(n, gf.data(), uf.data(), dyf.data(), dgf.data(), duf.data());
  emu::write(dgf, dgate, kFn, "dgate");
  emu::write(duf, dup, kFn, "dup");
}

// ---- rope, softmax, cross-entropy --------------------------------------------------------------

template <class T>
void rope(int64_t N, int64_t H, int64_t D, const T* x, const int32_t* positions, const RopeFrequencies& freqs,
          RopeLayout layout, bool inverse, T* out, cudaStream_t stream) {
  constexpr const char* kFn = "cuda::rope";
  emu::require_stream(stream, kFn);
  const auto xf = emu::read(x, N * H * D, kFn, "x");
  emu::require(positions, N, kFn, "positions");
  auto of = buffer(N * H * D);
  cpu::rope(N, H, D, xf.data(), positions, freqs, layout, inverse, of.data());
  emu::write(of, out, kFn, "out");
}

template <class T> void softmax_forward(int64_t N, int64_t C, const T* x, T* y, cudaStream_t stream) {
  constexpr const char* kFn = "cuda::softmax_forward";
  emu::require_stream(stream, kFn);
  const auto xf = emu::read(x, N * C, kFn, "x");
  auto yf = buffer(N * C);
  cpu::softmax_forward(N, C, xf.data(), yf.data());
  emu::write(yf, y, kFn, "y");
}

template <class T> void softmax_backward(int64_t N, int64_t C, const T* y, const T* dy, T* dx, cudaStream_t stream) {
  constexpr const char* kFn = "cuda::softmax_backward";
  emu::require_stream(stream, kFn);
  const auto yf = emu::read(y, N * C, kFn, "y"), dyf = emu::read(dy, N * C, kFn, "dy");
  auto dxf = buffer(N * C);
  cpu::softmax_backward(N, C, yf.data(), dyf.data(), dxf.data());
  emu::write(dxf, dx, kFn, "dx");
}

template <class T>
void cross_entropy_forward(int64_t N, int64_t V, const T* logits, const int32_t* targets, int32_t ignore_index,
                           float* losses, float* lse, cudaStream_t stream) {
  constexpr const char* kFn = "cuda::cross_entropy_forward";
  emu::require_stream(stream, kFn);
  const auto lf = emu::read(logits, N * V, kFn, "logits");
  emu::require(targets, N, kFn, "targets");
  auto lossf = buffer(N), lsef = buffer(N);
  cpu::cross_entropy_forward(N, V, lf.data(), targets, ignore_index, lossf.data(), lsef.data());
  emu::write(lossf, losses, kFn, "losses");
  emu::write(lsef, lse, kFn, "lse");
}

template <class T>
void cross_entropy_backward(int64_t N, int64_t V, const T* logits, const int32_t* targets, int32_t ignore_index,
                            const float* lse, const float* dloss, T* dlogits, int64_t ld_dlogits,
                            cudaStream_t stream) {
  constexpr const char* kFn = "cuda::cross_entropy_backward";
  emu::require_stream(stream, kFn);
  if (ld_dlogits < V || (static_cast<const void*>(dlogits) == logits && ld_dlogits != V))
    throw std::runtime_error(std::string(kFn) + ": bad row stride of dlogits");
  const auto lf = emu::read(logits, N * V, kFn, "logits"), lsef = emu::read(lse, N, kFn, "lse"),
             dlf = emu::read(dloss, N, kFn, "dloss");
  emu::require(targets, N, kFn, "targets");
  auto df = buffer(N * V);
  cpu::cross_entropy_backward(N, V, lf.data(), targets, ignore_index, lsef.data(), dlf.data(), df.data());
  emu::write_rows(df, V, dlogits, ld_dlogits, N, V, kFn, "dlogits");
}

// ---- embedding ---------------------------------------------------------------------------------

template <class T>
void embedding_forward(int64_t N, int64_t C, const int32_t* ids, const T* table, T* out, cudaStream_t stream) {
  constexpr const char* kFn = "cuda::embedding_forward";
  emu::require_stream(stream, kFn);
  emu::require(ids, N, kFn, "ids");
  // The table's row count is not an argument: each row read must lie inside table's allocation.
  auto of = buffer(N * C);
  for (int64_t i = 0; i < N; ++i) {
    const auto row = emu::read(table + static_cast<int64_t>(ids[i]) * C, C, kFn, "table (row ids[i])");
    std::copy(row.begin(), row.end(), of.begin() + i * C);
  }
  emu::write(of, out, kFn, "out");
}

template <class T>
void embedding_backward(int64_t N, int64_t C, int64_t V, const int32_t* ids, const T* dout, float* dtable,
                        cudaStream_t stream) {
  constexpr const char* kFn = "cuda::embedding_backward";
  emu::require_stream(stream, kFn);
  emu::require(ids, N, kFn, "ids");
  const auto df = emu::read(dout, N * C, kFn, "dout");
  auto tf = buffer(V * C);
  cpu::embedding_backward(N, C, V, ids, df.data(), tf.data());
  emu::write(tf, dtable, kFn, "dtable");
}

// ---- optimizer and gradient norm ---------------------------------------------------------------

void adamw_update(const AdamWTensor* tensors, int count, const AdamWHyper& h, const float* grad_scale_device,
                  cudaStream_t stream) {
  constexpr const char* kFn = "cuda::adamw_update";
  emu::require_stream(stream, kFn);
  if (count < 0 || (count > 0 && !tensors)) throw std::runtime_error(std::string(kFn) + ": needs count >= 0 tensors");
  emu::require_host(tensors, sizeof(AdamWTensor) * count, kFn, "tensors (the host array of tensors)");
  AdamWHyper hyper = h;
  if (grad_scale_device) hyper.grad_scale *= emu::read(grad_scale_device, 1, kFn, "grad_scale_device")[0];
  for (int k = 0; k < count; ++k) {
    const AdamWTensor& t = tensors[k];
    if (t.n < 0) throw std::runtime_error(std::string(kFn) + ": a tensor has a negative size");
    emu::require(t.param, t.n, kFn, "tensors[k].param");
    emu::require(t.grad, t.n, kFn, "tensors[k].grad");
    emu::require(t.m, t.n, kFn, "tensors[k].m");
    emu::require(t.v, t.n, kFn, "tensors[k].v");
    if (t.param_bf16) emu::require(t.param_bf16, t.n, kFn, "tensors[k].param_bf16");
    AdamWHyper th = hyper;
    if (!t.decay) th.weight_decay = 0.f;  // a decay factor of exactly 1
    cpu::adamw_update(t.n, t.param, t.grad, t.m, t.v, th);
    for (int64_t i = 0; t.param_bf16 && i < t.n; ++i) emu::narrow(t.param[i], t.param_bf16 + i);
  }
}

void sum_of_squares(const float* const* grads, const int64_t* sizes, int count, float* sumsq_device,
                    cudaStream_t stream) {
  constexpr const char* kFn = "cuda::sum_of_squares";
  emu::require_stream(stream, kFn);
  if (count < 0 || (count > 0 && (!grads || !sizes)))
    throw std::runtime_error(std::string(kFn) + ": needs count >= 0 tensors");
  emu::require_host(grads, sizeof(float*) * count, kFn, "grads (the host array of pointers)");
  emu::require_host(sizes, sizeof(int64_t) * count, kFn, "sizes (the host array)");
  float total = 0.f;
  for (int k = 0; k < count; ++k) {
    if (sizes[k] < 0) throw std::runtime_error(std::string(kFn) + ": a tensor has a negative size");
    for (float g : emu::read(grads[k], sizes[k], kFn, "grads[k]")) total += g * g;
  }
  emu::write(std::vector<float>{total}, sumsq_device, kFn, "sumsq_device");
}

void clip_scale(const float* sumsq_device, float max_norm, float* scale_device, cudaStream_t stream) {
  constexpr const char* kFn = "cuda::clip_scale";
  emu::require_stream(stream, kFn);
  const double norm = std::sqrt(double(emu::read(sumsq_device, 1, kFn, "sumsq_device")[0]));
  const float s = max_norm <= 0.f || !(norm > double(max_norm)) ? 1.f : float(double(max_norm) / (norm + 1e-6));
  emu::write(std::vector<float>{s}, scale_device, kFn, "scale_device");
}

#define LLM_INSTANTIATE(T)                                                                                          \
  template void layernorm_forward<T>(int64_t, int64_t, const T*, const T*, const T*, float, T*, float*, float*,     \
                                     cudaStream_t);                                                                 \
  template void layernorm_backward<T>(int64_t, int64_t, const T*, const T*, const T*, const float*, const float*,   \
                                      T*, float*, float*, cudaStream_t);                                            \
  template void rmsnorm_forward<T>(int64_t, int64_t, const T*, const T*, float, T*, float*, cudaStream_t);          \
  template void rmsnorm_backward<T>(int64_t, int64_t, const T*, const T*, const T*, const float*, T*, float*,       \
                                    cudaStream_t);                                                                  \
  template void gelu_forward<T>(int64_t, const T*, T*, cudaStream_t);                                               \
  template void gelu_backward<T>(int64_t, const T*, const T*, T*, cudaStream_t);                                    \
  template void silu_forward<T>(int64_t, const T*, T*, cudaStream_t);                                               \
  template void silu_backward<T>(int64_t, const T*, const T*, T*, cudaStream_t);                                    \
  template void swiglu_forward<T>(int64_t, const T*, const T*, T*, cudaStream_t);                                   \
  template void swiglu_backward<T>(int64_t, const T*, const T*, const T*, T*, T*, cudaStream_t);                    \
  template void rope<T>(int64_t, int64_t, int64_t, const T*, const int32_t*, const RopeFrequencies&, RopeLayout,     \
                        bool, T*, cudaStream_t);                                                                    \
  template void softmax_forward<T>(int64_t, int64_t, const T*, T*, cudaStream_t);                                   \
  template void softmax_backward<T>(int64_t, int64_t, const T*, const T*, T*, cudaStream_t);                        \
  template void cross_entropy_forward<T>(int64_t, int64_t, const T*, const int32_t*, int32_t, float*, float*,       \
                                         cudaStream_t);                                                             \
  template void cross_entropy_backward<T>(int64_t, int64_t, const T*, const int32_t*, int32_t, const float*,        \
                                          const float*, T*, int64_t, cudaStream_t);                                 \
  template void embedding_forward<T>(int64_t, int64_t, const int32_t*, const T*, T*, cudaStream_t);                 \
  template void embedding_backward<T>(int64_t, int64_t, int64_t, const int32_t*, const T*, float*, cudaStream_t);
LLM_INSTANTIATE(float)
LLM_INSTANTIATE(bf16)
#undef LLM_INSTANTIATE

}  // namespace llm::cuda
