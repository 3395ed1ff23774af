// `llm-bench cuda` section "fused": the memory-bound fused kernels at GPT-2 124M training shapes
// (B·T = 8192 tokens, bf16 activations), in GB/s of the bytes each must move at least, against the
// H200's HBM bandwidth.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cuda/fused.h"
#include "tools/bench_cuda/bench_cuda.h"

namespace llm::bench_cuda {
namespace {

constexpr double kHbmGBs = 4800.0;  // H200 HBM3e

// Device memory of n elements, filled with a small non-zero byte pattern (finite, no NaN or inf).
template <class T>
struct Buffer {
  explicit Buffer(int64_t n) {
    cudaMalloc(&ptr, size_t(n > 0 ? n : 1) * sizeof(T));
    cudaMemset(ptr, 0x3c, size_t(n) * sizeof(T));
  }
  ~Buffer() { cudaFree(ptr); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  T* ptr = nullptr;
};

void row(const std::string& op, const std::string& shape, double bytes, const std::function<void()>& fn,
         cudaStream_t stream) {
  const double ms = median_ms(fn, stream);
  print_row(op, shape, "fast", bytes / (ms * 1e-3) / 1e9, "GB/s", kHbmGBs);
}

void bench_fused() {
  using cuda::bf16;
  cudaStream_t stream;
  cudaStreamCreate(&stream);
  cuda::set_fused_variant(cuda::FusedVariant::kFast);
  const int64_t N = 8192, C = 768, V = 50304, H = 3072;
  const double act = double(N * C) * sizeof(bf16);
  {
    Buffer<bf16> x(N * C), w(C), b(C), y(N * C), dy(N * C), dx(N * C);
    Buffer<float> mean(N), rstd(N), dw(C), db(C);
    const std::string shape = std::to_string(N) + "x" + std::to_string(C) + " bf16";
    row("layernorm fwd", shape, 2 * act,
        [&] { cuda::layernorm_forward<bf16>(N, C, x.ptr, w.ptr, b.ptr, 1e-5f, y.ptr, mean.ptr, rstd.ptr, stream); },
        stream);
    row("layernorm bwd", shape, 3 * act, [&] {
      cuda::layernorm_backward<bf16>(N, C, dy.ptr, x.ptr, w.ptr, mean.ptr, rstd.ptr, dx.ptr, dw.ptr, db.ptr, stream);
    }, stream);
    row("rmsnorm fwd", shape, 2 * act,
        [&] { cuda::rmsnorm_forward<bf16>(N, C, x.ptr, w.ptr, 1e-5f, y.ptr, rstd.ptr, stream); }, stream);
    row("rmsnorm bwd", shape, 3 * act,
        [&] { cuda::rmsnorm_backward<bf16>(N, C, dy.ptr, x.ptr, w.ptr, rstd.ptr, dx.ptr, dw.ptr, stream); }, stream);
  }
  {
    const int64_t n = N * H;
    Buffer<bf16> x(n), up(n), dy(n), y(n), dup(n);
    const double bytes = double(n) * sizeof(bf16);
    const std::string shape = std::to_string(N) + "x" + std::to_string(H) + " bf16";
    row("gelu fwd", shape, 2 * bytes, [&] { cuda::gelu_forward<bf16>(n, x.ptr, y.ptr, stream); }, stream);
    row("gelu bwd", shape, 3 * bytes, [&] { cuda::gelu_backward<bf16>(n, x.ptr, dy.ptr, y.ptr, stream); }, stream);
    row("swiglu bwd", shape, 5 * bytes,
        [&] { cuda::swiglu_backward<bf16>(n, x.ptr, up.ptr, dy.ptr, y.ptr, dup.ptr, stream); }, stream);
  }
  {
    const int64_t heads = 12, D = 64;
    Buffer<bf16> q(N * heads * D);
    Buffer<int32_t> pos(N);
    row("rope", std::to_string(N) + "x" + std::to_string(heads) + "x" + std::to_string(D) + " bf16",
        2.0 * double(N * heads * D) * sizeof(bf16), [&] {
          cuda::rope<bf16>(N, heads, D, q.ptr, pos.ptr, 10000.f, cuda::RopeLayout::kHalf, false, q.ptr, stream);
        }, stream);
  }
  {
    Buffer<bf16> logits(N * V);
    Buffer<int32_t> targets(N);  // 0x3c3c3c3c would be out of range: zero them
    cudaMemset(targets.ptr, 0, size_t(N) * sizeof(int32_t));
    Buffer<float> losses(N), lse(N), dloss(N);
    const double bytes = double(N * V) * sizeof(bf16);
    const std::string shape = std::to_string(N) + "x" + std::to_string(V) + " bf16";
    row("xent fwd", shape, bytes, [&] {
      cuda::cross_entropy_forward<bf16>(N, V, logits.ptr, targets.ptr, -100, losses.ptr, lse.ptr, stream);
    }, stream);
    // In place, as training uses it (the values drift from run to run; the traffic does not).
    row("xent bwd", shape, 2 * bytes, [&] {
      cuda::cross_entropy_backward<bf16>(N, V, logits.ptr, targets.ptr, -100, lse.ptr, dloss.ptr, logits.ptr, V, stream);
    }, stream);
  }
  {
    Buffer<int32_t> ids(N);
    std::vector<int32_t> host(static_cast<size_t>(N));
    for (int64_t i = 0; i < N; ++i) host[size_t(i)] = int32_t((i * 7919) % V);
    cudaMemcpy(ids.ptr, host.data(), host.size() * sizeof(int32_t), cudaMemcpyHostToDevice);
    Buffer<bf16> dout(N * C);
    Buffer<float> dtable(V * C);
    row("embed bwd", std::to_string(N) + " ids, " + std::to_string(V) + "x" + std::to_string(C),
        act + double(V * C) * sizeof(float),
        [&] { cuda::embedding_backward<bf16>(N, C, V, ids.ptr, dout.ptr, dtable.ptr, stream); }, stream);
  }
  {
    // GPT-2 124M's parameter tensors: embeddings, then 12 blocks of 12 tensors, then the final norm.
    std::vector<int64_t> sizes = {V * C, 1024 * C};
    for (int layer = 0; layer < 12; ++layer)
      for (int64_t n : {C, C, 3 * C * C, 3 * C, C * C, C, C, C, 4 * C * C, 4 * C, 4 * C * C, C}) sizes.push_back(n);
    sizes.push_back(C);
    sizes.push_back(C);
    int64_t total = 0;
    for (int64_t n : sizes) total += n;
    Buffer<float> param(total), grad(total), m(total), v(total), scale(1), sumsq(1);
    Buffer<bf16> copy(total);
    std::vector<cuda::AdamWTensor> tensors;
    std::vector<const float*> grads;
    int64_t offset = 0;
    for (int64_t n : sizes) {
      tensors.push_back({param.ptr + offset, grad.ptr + offset, m.ptr + offset, v.ptr + offset, copy.ptr + offset, n,
                         n > 4 * C});
      grads.push_back(grad.ptr + offset);
      offset += n;
    }
    const std::string shape = std::to_string(sizes.size()) + " tensors, " + std::to_string(total / 1000000) + "M";
    const cuda::AdamWHyper h{6e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 1, 1.f};
    row("adamw", shape, double(total) * (7 * sizeof(float) + sizeof(bf16)),
        [&] { cuda::adamw_update(tensors.data(), int(tensors.size()), h, nullptr, stream); }, stream);
    row("sum_of_squares", shape, double(total) * sizeof(float), [&] {
      cuda::sum_of_squares(grads.data(), sizes.data(), int(sizes.size()), sumsq.ptr, stream);
      cuda::clip_scale(sumsq.ptr, 1.f, scale.ptr, stream);
    }, stream);
  }
  cudaStreamDestroy(stream);
}

const Section fused_section(25, "fused", &bench_fused);

}  // namespace
}  // namespace llm::bench_cuda
