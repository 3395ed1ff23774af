#include "kernels/cpu/quant.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/gemm.h"
#include "kernels/cpu/parallel.h"

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#include <immintrin.h>
#define LLM_Q8_VNNI 1
#endif

namespace llm::cpu {

namespace {
// One row of K floats → int8 blocks with their scales.
void quantize_row(int64_t K, const float* w, int8_t* q, float* scales) {
  for (int64_t b = 0; b < K / kQ8Block; ++b) {
    const float* src = w + b * kQ8Block;
    float amax = 0.f;
    for (int64_t i = 0; i < kQ8Block; ++i) amax = std::max(amax, std::fabs(src[i]));
    const float scale = amax / 127.f, inv = scale > 0.f ? 1.f / scale : 0.f;
    for (int64_t i = 0; i < kQ8Block; ++i)
      q[b * kQ8Block + i] = static_cast<int8_t>(std::clamp(static_cast<int>(std::lrintf(src[i] * inv)), -127, 127));
    scales[b] = scale;
  }
}

// out[r] = Σ_b (x_b · w_{r,b}) · xs_b · ws_{r,b} for R consecutive weight rows against one quantized
// activation row (nb blocks each).
// GCC 12 warns inside its own AVX-512 headers (the "undefined" source operands of cvtepi32_ps and
// reduce_add_ps) once these are inlined into an array of accumulators: a false positive.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
template <int R>
void dot_rows(int64_t nb, const int8_t* xq, const float* xs, const int8_t* w, const float* ws, float* out) {
  const int64_t K = nb * kQ8Block;
#if defined(LLM_Q8_VNNI)
  // VNNI multiplies unsigned by signed bytes: x·w = |x|·(sign(x)·w), and neither side is ever -128.
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  int64_t b = 0;
  for (; b + 2 <= nb; b += 2) {  // two blocks per 512-bit vector: lanes 0-7 block b, 8-15 block b + 1
    const __m512i xv = _mm512_loadu_si512(xq + b * kQ8Block);
    const __m512i ax = _mm512_abs_epi8(xv);
    const __mmask64 negative = _mm512_movepi8_mask(xv);
    const __m512 xscale = _mm512_insertf32x8(_mm512_set1_ps(xs[b]), _mm256_set1_ps(xs[b + 1]), 1);
    for (int r = 0; r < R; ++r) {
      const __m512i wv = _mm512_loadu_si512(w + r * K + b * kQ8Block);
      const __m512i sw = _mm512_mask_sub_epi8(wv, negative, _mm512_setzero_si512(), wv);
      const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ax, sw);
      const __m512 wscale = _mm512_insertf32x8(_mm512_set1_ps(ws[r * nb + b]), _mm256_set1_ps(ws[r * nb + b + 1]), 1);
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(xscale, wscale), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = _mm512_reduce_add_ps(acc[r]);
  if (b < nb) {  // an odd last block
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + b * kQ8Block));
    const __m256i ax = _mm256_abs_epi8(xv);
    for (int r = 0; r < R; ++r) {
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + r * K + b * kQ8Block));
      const __m256i dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, _mm256_sign_epi8(wv, xv));
      const __m128 h = _mm_add_ps(_mm256_castps256_ps128(_mm256_cvtepi32_ps(dot)),
                                  _mm256_extractf128_ps(_mm256_cvtepi32_ps(dot), 1));
      const __m128 h2 = _mm_add_ps(h, _mm_movehl_ps(h, h));
      out[r] += _mm_cvtss_f32(_mm_add_ss(h2, _mm_shuffle_ps(h2, h2, 1))) * (xs[b] * ws[r * nb + b]);
    }
  }
#else
  for (int r = 0; r < R; ++r) {
    float total = 0.f;
    for (int64_t b = 0; b < nb; ++b) {
      int32_t dot = 0;
      for (int64_t k = 0; k < kQ8Block; ++k) dot += int32_t(xq[b * kQ8Block + k]) * w[r * K + b * kQ8Block + k];
      total += static_cast<float>(dot) * (xs[b] * ws[r * nb + b]);
    }
    out[r] = total;
  }
#endif
}
#pragma GCC diagnostic pop

int q8_threads(int64_t N, int64_t K) {
  return omp_in_parallel() ? 1 : int(std::max<int64_t>(1, std::min<int64_t>(num_threads(), N * K / 65536)));
}
}  // namespace

void quantize_q8_rows(int64_t N, int64_t K, const float* w, int8_t* q, float* scales) {
  const int64_t nb = K / kQ8Block;
#pragma omp parallel for schedule(static) if (N * K > (1 << 16))
  for (int64_t j = 0; j < N; ++j) quantize_row(K, w + j * K, q + j * K, scales + j * nb);
}

#if defined(LLM_Q8_VNNI)
const char* q8_isa() { return "avx512-vnni"; }
#else
const char* q8_isa() { return "scalar"; }
#endif

void gemm_q8(int64_t M, int64_t N, int64_t K, const float* x, const int8_t* wq, const float* w_scales,
             const float* bias, float* C) {
  const int64_t nb = K / kQ8Block;
  if (M >= kQ8DequantRows) {
    // Panels as wide as fit 16 MB of floats: few GEMM calls (each packs X again), bounded scratch.
    const int64_t kPanel = std::max<int64_t>(1, std::min<int64_t>(N, (int64_t(4) << 20) / K));
    std::vector<float> panel(static_cast<size_t>(kPanel * K));
    for (int64_t j0 = 0; j0 < N; j0 += kPanel) {
      const int64_t rows = std::min(kPanel, N - j0);
      parallel_ranges(rows, q8_threads(rows, K), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t b = 0; b < nb; ++b) {
            const float scale = w_scales[(j0 + r) * nb + b];
            const int8_t* q = wq + (j0 + r) * K + b * kQ8Block;
            float* out = panel.data() + r * K + b * kQ8Block;
#pragma omp simd
            for (int64_t i = 0; i < kQ8Block; ++i) out[i] = scale * static_cast<float>(q[i]);
          }
      });
      sgemm(false, true, M, rows, K, 1.f, x, K, panel.data(), K, 0.f, C + j0, N, bias ? bias + j0 : nullptr);
    }
    return;
  }
  // The activations, quantized once per call.
  std::vector<int8_t> xq(static_cast<size_t>(M * K));
  std::vector<float> xs(static_cast<size_t>(M * nb));
  for (int64_t i = 0; i < M; ++i) quantize_row(K, x + i * K, xq.data() + i * K, xs.data() + i * nb);
  auto outputs = [&](int64_t j0, int64_t j1) {
    float out[4];
    for (int64_t i = 0; i < M; ++i) {
      const int8_t* a = xq.data() + i * K;
      const float* as = xs.data() + i * nb;
      int64_t j = j0;
      for (; j + 4 <= j1; j += 4) {
        dot_rows<4>(nb, a, as, wq + j * K, w_scales + j * nb, out);
        for (int r = 0; r < 4; ++r) C[i * N + j + r] = out[r] + (bias ? bias[j + r] : 0.f);
      }
      for (; j < j1; ++j) {
        dot_rows<1>(nb, a, as, wq + j * K, w_scales + j * nb, out);
        C[i * N + j] = out[0] + (bias ? bias[j] : 0.f);
      }
    }
  };
  parallel_ranges(N, q8_threads(N, K), outputs);
}

}  // namespace llm::cpu
