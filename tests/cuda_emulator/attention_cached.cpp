// kernels/cuda/attention_cached.h on the CPU: cpu::attention_cached_forward in fp32 on the inputs,
// the output rounded to T; the cache write as a plain copy. The real kernels' argument checks.
#include "kernels/cuda/attention_cached.h"

#include <stdexcept>
#include <string>

#include "kernels/cpu/attention.h"
#include "tests/cuda_emulator/kernel_util.h"

namespace llm::cuda {

namespace emu = cuda_emulator;

namespace {
void require(bool ok, const char* kernel, const char* what) {
  if (!ok) throw std::runtime_error(std::string(kernel) + ": " + what);
}
}  // namespace

template <class T>
void attention_cached_forward(int64_t B, int64_t Tq, int64_t S, int64_t Hq, int64_t Hkv, int64_t D, const T* q,
                              const T* k_cache, const T* v_cache, const int32_t* past, float scale, T* out,
                              int64_t window, cudaStream_t stream) {
  constexpr const char* kFn = "cuda::attention_cached_forward";
  emu::require_stream(stream, kFn);
  require(B >= 0 && Tq >= 0 && S >= 1, kFn, "needs B, Tq >= 0 and a cache capacity S >= 1");
  require(Hkv >= 1 && Hq >= 1 && Hq % Hkv == 0, kFn, "the query heads Hq must be a multiple of the kv heads Hkv");
  require(D >= 1 && D <= 256, kFn, "the head dimension D must be in [1, 256]");
  require(window >= 0, kFn, "the window must be >= 0 (0: unlimited)");
  if (B * Tq * Hq == 0) return;
  const int64_t nq = B * Tq * Hq * D, nkv = B * S * Hkv * D;
  const std::vector<float> qf = emu::read(q, nq, kFn, "q"), kf = emu::read(k_cache, nkv, kFn, "k_cache"),
                           vf = emu::read(v_cache, nkv, kFn, "v_cache");
  emu::require(past, B, kFn, "past");
  std::vector<float> o(static_cast<size_t>(nq));
  cpu::attention_cached_forward(B, Tq, S, Hq, Hkv, D, qf.data(), kf.data(), vf.data(), past, scale, o.data(), window);
  emu::write(o, out, kFn, "out");
}

template <class T>
void kv_cache_write(int64_t B, int64_t T_new, int64_t S, int64_t row, const T* x, const int32_t* past,
                    const int32_t* n_new, T* cache, cudaStream_t stream) {
  constexpr const char* kFn = "cuda::kv_cache_write";
  emu::require_stream(stream, kFn);
  require(B >= 0 && T_new >= 0 && S >= 1 && row >= 1, kFn, "needs B, T_new >= 0, S >= 1 and rows of at least one element");
  if (B * T_new * row == 0) return;
  emu::require(x, B * T_new * row, kFn, "x");
  emu::require(past, B, kFn, "past");
  emu::require(n_new, B, kFn, "n_new");
  emu::require(cache, B * S * row, kFn, "cache");
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < n_new[b] && t < T_new; ++t) {
      const int64_t slot = past[b] + t;
      if (slot >= S) break;  // never written, as the real kernel
      for (int64_t i = 0; i < row; ++i) cache[(b * S + slot) * row + i] = x[(b * T_new + t) * row + i];
    }
}

template void attention_cached_forward<float>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const float*,
                                              const float*, const float*, const int32_t*, float, float*, int64_t,
                                              cudaStream_t);
template void attention_cached_forward<bf16>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const bf16*,
                                             const bf16*, const bf16*, const int32_t*, float, bf16*, int64_t,
                                             cudaStream_t);
template void kv_cache_write<float>(int64_t, int64_t, int64_t, int64_t, const float*, const int32_t*, const int32_t*,
                                    float*, cudaStream_t);
template void kv_cache_write<bf16>(int64_t, int64_t, int64_t, int64_t, const bf16*, const int32_t*, const int32_t*,
                                   bf16*, cudaStream_t);

}  // namespace llm::cuda
