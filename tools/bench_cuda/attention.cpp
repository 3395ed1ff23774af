// `llm-bench cuda` attention rows: the tensor-core flash attention, forward (on the wgmma kernel's TMA
// and cp.async forms and on the mma.sync kernel) and backward (on wgmma and on mma.sync), causal,
// at the shape of a mid-sized model's layer (B = 8, 16 heads of 128) for T = 1024 and 4096.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cuda/attention.h"
#include "tools/bench_cuda/bench_cuda.h"

namespace llm::bench_cuda {
namespace {

constexpr double kPeakTflops = 989.0;  // H100/H200 SXM dense bf16 tensor-core peak

// A device array of n values uniform in [-1, 1), made on the host (this file has no kernels).
template <class T>
T* device_random(size_t n, uint64_t seed) {
  std::vector<T> host(n);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (auto& h : host) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    h = static_cast<T>(static_cast<float>(static_cast<int64_t>(x >> 40) - (int64_t(1) << 23)) / float(1 << 23));
  }
  T* dev = nullptr;
  cuda::check(cudaMalloc(&dev, n * sizeof(T)), "bench attention: cudaMalloc");
  cuda::check(cudaMemcpy(dev, host.data(), n * sizeof(T), cudaMemcpyHostToDevice), "bench attention: upload");
  return dev;
}
template <class T>
T* device_array(size_t n) {
  T* dev = nullptr;
  cuda::check(cudaMalloc(&dev, n * sizeof(T)), "bench attention: cudaMalloc");
  return dev;
}

void bench_attention() {
  constexpr int64_t B = 8, H = 16, D = 128;
  cudaStream_t stream = nullptr;
  for (int64_t T : {1024, 4096}) {
    const cuda::AttentionShape s{B, T, H, H, D, 0};
    const size_t n = static_cast<size_t>(B * T * H * D);
    cuda::bf16* q = device_random<cuda::bf16>(n, 1);
    cuda::bf16* k = device_random<cuda::bf16>(n, 2);
    cuda::bf16* v = device_random<cuda::bf16>(n, 3);
    cuda::bf16* dout = device_random<cuda::bf16>(n, 4);
    cuda::bf16* out = device_array<cuda::bf16>(n);
    cuda::bf16* dq = device_array<cuda::bf16>(n);
    cuda::bf16* dk = device_array<cuda::bf16>(n);
    cuda::bf16* dv = device_array<cuda::bf16>(n);
    float* lse = device_array<float>(static_cast<size_t>(B * H * T));
    void* workspace = device_array<unsigned char>(cuda::attention_backward_workspace_bytes(s));
    const float scale = 1.f / std::sqrt(static_cast<float>(D));
    const auto kernel = cuda::AttentionKernel::kTensorCore;

    const auto forward = [&] { cuda::attention_forward(s, q, k, v, nullptr, scale, out, lse, stream, kernel); };
    const auto backward = [&] {
      cuda::attention_backward(s, q, k, v, nullptr, scale, out, lse, dout, dq, dk, dv, workspace, stream, kernel);
    };
    // FLOP convention (as the FlashAttention papers): full attention's forward is two products of
    // 2·B·H·T²·D (Q·Kᵀ and P·V), causal counts half of that, and the backward 2.5× the forward
    // (five products instead of two).
    const double forward_flops = 0.5 * 4.0 * B * H * double(T) * T * D, backward_flops = 2.5 * forward_flops;
    const std::string shape = "B8 H16 T" + std::to_string(T) + " D128 causal";
    // The forward on each of its kernels: wgmma in its TMA and cp.async forms (Hopper; where they can
    // run) and mma.sync. A form whose self-check failed is switched off: its row says "-off".
    const bool wgmma_was = cuda::attention_wgmma_enabled(), tma_was = cuda::attention_tma_enabled();
    bool wgmma_failed = false, tma_failed = false;
    struct Kernel {
      bool wgmma, tma;
      const char* name;
      const char* off;
    };
    for (const Kernel kf : {Kernel{true, true, "wgmma TMA", "wgmma TMA-off"},
                            Kernel{true, false, "wgmma cp.async", "wgmma-off"}, Kernel{false, false, "mma.sync", ""}}) {
      if ((kf.tma && !cuda::attention_tma_available()) || (kf.wgmma && !cuda::attention_wgmma_available())) continue;
      cuda::set_attention_wgmma(kf.wgmma && !wgmma_failed);
      cuda::set_attention_tma(kf.tma && !tma_failed);
      const double fwd_ms = median_ms(forward, stream);
      wgmma_failed = wgmma_failed || (kf.wgmma && !cuda::attention_wgmma_enabled());
      tma_failed = tma_failed || (kf.tma && !cuda::attention_tma_enabled());
      const bool off = (kf.wgmma && wgmma_failed) || (kf.tma && tma_failed);
      print_row("attention fwd", shape, off ? kf.off : kf.name, forward_flops / fwd_ms / 1e9, "TFLOP/s", kPeakTflops);
    }
    // The backward on each of its kernel sets.
    for (bool wgmma : {true, false}) {
      if (wgmma && !cuda::attention_backward_wgmma_available()) continue;
      cuda::set_attention_wgmma(wgmma);
      const double bwd_ms = median_ms(backward, stream);
      // A wgmma kernel that failed its self-check runs on mma.sync: "wgmma-part".
      const char* name = !wgmma ? "mma.sync" : cuda::attention_backward_wgmma_in_use(128) ? "wgmma" : "wgmma-part";
      print_row("attention bwd", shape, name, backward_flops / bwd_ms / 1e9, "TFLOP/s", kPeakTflops);
    }
    cuda::set_attention_wgmma(wgmma_was && !wgmma_failed);
    cuda::set_attention_tma(tma_was && !tma_failed);
    cuda::check(cudaGetLastError(), "bench attention");

    for (void* p : {static_cast<void*>(q), static_cast<void*>(k), static_cast<void*>(v), static_cast<void*>(dout),
                    static_cast<void*>(out), static_cast<void*>(dq), static_cast<void*>(dk), static_cast<void*>(dv),
                    static_cast<void*>(lse), workspace})
      cudaFree(p);
  }
}

const Section attention_section(20, "attention", &bench_attention);

}  // namespace
}  // namespace llm::bench_cuda
