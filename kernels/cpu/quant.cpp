#include "kernels/cpu/quant.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/parallel.h"

#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#include <immintrin.h>
#define LLM_Q8_VNNI 1
#endif

namespace llm::cpu {

namespace {
// One row of K floats → int8 blocks with their scales (and block sums).
void quantize_row(int64_t K, const float* w, int8_t* q, float* scales, int32_t* sums) {
  for (int64_t b = 0; b < K / kQ8Block; ++b) {
    const float* src = w + b * kQ8Block;
    float amax = 0.f;
    for (int64_t i = 0; i < kQ8Block; ++i) amax = std::max(amax, std::fabs(src[i]));
    const float scale = amax / 127.f, inv = scale > 0.f ? 1.f / scale : 0.f;
    int32_t sum = 0;
    for (int64_t i = 0; i < kQ8Block; ++i) {
      const int v = static_cast<int>(std::lrintf(src[i] * inv));
      q[b * kQ8Block + i] = static_cast<int8_t>(std::clamp(v, -127, 127));
      sum += q[b * kQ8Block + i];
    }
    scales[b] = scale;
    if (sums) sums[b] = sum;
  }
}
}  // namespace

void quantize_q8_rows(int64_t N, int64_t K, const float* w, int8_t* q, float* scales, int32_t* block_sums) {
  const int64_t nb = K / kQ8Block;
#pragma omp parallel for schedule(static) if (N * K > (1 << 16))
  for (int64_t j = 0; j < N; ++j) quantize_row(K, w + j * K, q + j * K, scales + j * nb, block_sums + j * nb);
}

#if defined(LLM_Q8_VNNI)
const char* q8_isa() { return "avx512-vnni"; }
#else
const char* q8_isa() { return "scalar"; }
#endif

void gemm_q8(int64_t M, int64_t N, int64_t K, const float* x, const int8_t* wq, const float* w_scales,
             const int32_t* w_block_sums, const float* bias, float* C) {
  const int64_t nb = K / kQ8Block;
  // The activations, quantized once per call. VNNI multiplies unsigned by signed bytes, so they are
  // stored offset by 128 (1..255); the offset's contribution, 128·Σq_w, is taken back per block.
  std::vector<uint8_t> xq(static_cast<size_t>(M * K));
  std::vector<float> xs(static_cast<size_t>(M * nb));
  std::vector<int8_t> tmp(static_cast<size_t>(K));
  for (int64_t i = 0; i < M; ++i) {
    quantize_row(K, x + i * K, tmp.data(), xs.data() + i * nb, nullptr);
    for (int64_t k = 0; k < K; ++k) xq[i * K + k] = static_cast<uint8_t>(tmp[k] + 128);
  }
  auto outputs = [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      const int8_t* w = wq + j * K;
      const float* ws = w_scales + j * nb;
      const int32_t* wsum = w_block_sums + j * nb;
      for (int64_t i = 0; i < M; ++i) {
        const uint8_t* a = xq.data() + i * K;
        const float* as = xs.data() + i * nb;
        float total = 0.f;
#if defined(LLM_Q8_VNNI)
        __m256 acc = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; ++b) {
          const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + b * kQ8Block));
          const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + b * kQ8Block));
          __m256i dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), av, wv);
          // Lane 0 also carries the offset correction, so each block is one fused multiply-add.
          dot = _mm256_sub_epi32(dot, _mm256_setr_epi32(128 * wsum[b], 0, 0, 0, 0, 0, 0, 0));
          acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(ws[b] * as[b]), acc);
        }
        const __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        const __m128 h2 = _mm_add_ps(h, _mm_movehl_ps(h, h));
        total = _mm_cvtss_f32(_mm_add_ss(h2, _mm_shuffle_ps(h2, h2, 1)));
#else
        for (int64_t b = 0; b < nb; ++b) {
          int32_t dot = 0;
          for (int64_t k = 0; k < kQ8Block; ++k) dot += int32_t(a[b * kQ8Block + k]) * w[b * kQ8Block + k];
          total += static_cast<float>(dot - 128 * wsum[b]) * (ws[b] * as[b]);
        }
#endif
        C[i * N + j] = total + (bias ? bias[j] : 0.f);
      }
    }
  };
  parallel_ranges(N, omp_in_parallel() ? 1 : int(std::max<int64_t>(1, std::min<int64_t>(num_threads(), N * K / 65536))),
                  outputs);
}

}  // namespace llm::cpu
