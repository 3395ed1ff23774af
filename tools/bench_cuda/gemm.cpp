// `llm-bench cuda` gemm section: the native tensor-core kernels against cuBLASLt, in TFLOP/s, at
// 4096³ (on Hopper once per native kernel: wgmma with TMA loads, with cp.async loads, and mma.sync)
// and at every product of a GPT-2 124M training step with B·T = 8·1024 tokens (forward x·Wᵀ with its
// epilogue, backward dX = dY·W and dW += dYᵀ·X in fp32).
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/gemm.h"
#include "tools/bench_cuda/bench_cuda.h"

namespace llm::bench_cuda {
namespace {

using cuda::bf16;

struct DeviceMemory {
  void* ptr = nullptr;
  explicit DeviceMemory(size_t bytes) { cuda::check(cudaMalloc(&ptr, bytes), "bench gemm (cudaMalloc)"); }
  ~DeviceMemory() { cudaFree(ptr); }
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
};

// Random bf16 values in [-1, 1): a block of them uploaded once, then copied over the buffer
// (constant data would make the tensor cores look faster than they are on real activations).
void fill_random(bf16* dst, size_t n, unsigned seed) {
  const size_t block = std::min<size_t>(n, size_t(1) << 22);
  std::vector<bf16> host(block);
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  for (auto& x : host) x = __float2bfloat16_rn(dist(gen));
  cuda::check(cudaMemcpy(dst, host.data(), block * sizeof(bf16), cudaMemcpyHostToDevice), "bench gemm (upload)");
  for (size_t done = block; done < n; done += block)
    cuda::check(cudaMemcpy(dst + done, dst, std::min(block, n - done) * sizeof(bf16), cudaMemcpyDeviceToDevice),
                "bench gemm (fill)");
}

struct Shape {
  std::string name;
  bool trans_a, trans_b;
  int64_t M, N, K;
  bool c_fp32 = false, bias = false, gelu = false, residual = false, accumulate = false;
};

void bench_gemm() {
  constexpr int64_t tokens = 8 * 1024, C = 768, vocab = 50304;
  std::vector<Shape> shapes = {{"4096^3 NT", false, true, 4096, 4096, 4096}};
  struct Layer {
    const char* name;
    int64_t in, out;
    bool bias, gelu, residual;
  };
  const Layer layers[] = {{"qkv", C, 3 * C, true, false, false},
                          {"attn proj", C, C, true, false, true},
                          {"fc", C, 4 * C, true, true, false},
                          {"fc proj", 4 * C, C, true, false, true},
                          {"lm head", C, vocab, false, false, false}};
  for (const auto& l : layers) {
    Shape fwd{std::string(l.name) + " fwd NT", false, true, tokens, l.out, l.in};
    fwd.bias = l.bias, fwd.gelu = l.gelu, fwd.residual = l.residual;
    shapes.push_back(fwd);
    shapes.push_back({std::string(l.name) + " dX NN", false, false, tokens, l.in, l.out});
    Shape dw{std::string(l.name) + " dW TN", true, false, l.out, l.in, tokens};
    dw.c_fp32 = true, dw.accumulate = true;
    shapes.push_back(dw);
  }

  // One allocation per role, sized for the largest use (the lm head's tokens × vocab).
  const size_t max_elems = size_t(tokens) * vocab;
  DeviceMemory a(max_elems * sizeof(bf16)), b(max_elems * sizeof(bf16)), c(max_elems * sizeof(float)),
      pre(max_elems * sizeof(bf16)), residual(max_elems * sizeof(bf16)), bias(vocab * sizeof(float));
  fill_random(static_cast<bf16*>(a.ptr), max_elems, 1);
  fill_random(static_cast<bf16*>(b.ptr), max_elems, 2);
  fill_random(static_cast<bf16*>(residual.ptr), max_elems, 3);
  fill_random(static_cast<bf16*>(c.ptr), 2 * max_elems, 4);  // fp32 accumulation targets: finite values
  cuda::check(cudaMemset(bias.ptr, 0, vocab * sizeof(float)), "bench gemm (bias)");

  cudaStream_t stream;
  cuda::check(cudaStreamCreate(&stream), "bench gemm (stream)");
  for (const auto& s : shapes) {
    cuda::Gemm g;
    g.trans_a = s.trans_a, g.trans_b = s.trans_b, g.M = s.M, g.N = s.N, g.K = s.K;
    g.A = static_cast<const bf16*>(a.ptr), g.lda = s.trans_a ? s.M : s.K;
    g.B = static_cast<const bf16*>(b.ptr), g.ldb = s.trans_b ? s.K : s.N;
    g.C = c.ptr, g.ldc = s.N, g.c_fp32 = s.c_fp32, g.beta = s.accumulate ? 1.f : 0.f;
    g.bias = s.bias ? static_cast<const float*>(bias.ptr) : nullptr;
    g.gelu = s.gelu, g.pre_gelu = s.gelu ? pre.ptr : nullptr, g.residual = s.residual ? residual.ptr : nullptr;
    const double flop = 2.0 * s.M * s.N * s.K;
    auto tflops = [&](cuda::GemmBackend backend) {
      const double ms = median_ms([&] { cuda::gemm(g, backend, stream); }, stream);
      return flop / (ms * 1e-3) / 1e12;
    };
    const double cublas = tflops(cuda::GemmBackend::kCublas);
    const std::string shape = std::to_string(s.M) + "x" + std::to_string(s.N) + "x" + std::to_string(s.K);
    print_row(s.name, shape, "cublas", cublas, "TFLOP/s");
    if (&s == &shapes.front() && cuda::gemm_wgmma_available()) {
      // The square NT product on each of kNative's tensor-core kernels; the other rows use the default.
      const bool wgmma_was = cuda::gemm_wgmma_enabled(), tma_was = cuda::gemm_tma_enabled();
      bool tma_failed = false;
      struct Kernel {
        bool wgmma, tma;
        const char* name;
      };
      for (const Kernel k : {Kernel{true, true, "native (wgmma TMA)"}, Kernel{true, false, "native (wgmma cp.async)"},
                             Kernel{false, false, "native (mma.sync)"}}) {
        if (k.tma && !cuda::gemm_tma_available()) continue;
        cuda::set_gemm_wgmma(k.wgmma);
        cuda::set_gemm_tma(k.tma);
        const double rate = tflops(cuda::GemmBackend::kNative);
        // A failed self-check turns the TMA switch off, and the row measures the cp.async kernel.
        tma_failed = tma_failed || (k.tma && !cuda::gemm_tma_enabled());
        print_row(s.name, shape, k.tma && tma_failed ? "native (wgmma TMA-off)" : k.name, rate, "TFLOP/s", cublas);
      }
      cuda::set_gemm_wgmma(wgmma_was);
      cuda::set_gemm_tma(tma_was && !tma_failed);
    } else {
      print_row(s.name, shape, "native", tflops(cuda::GemmBackend::kNative), "TFLOP/s", cublas);
    }
  }
  cuda::check(cudaStreamDestroy(stream), "bench gemm (stream)");
}

static Section gemm_section(10, "gemm", &bench_gemm);

}  // namespace
}  // namespace llm::bench_cuda
