#include "kernels/cpu/quant.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/gemm.h"
#include "kernels/cpu/parallel.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define LLM_Q8_SIMD 1
#endif

namespace llm::cpu {

namespace {
// One row of K floats → int8 blocks with their scales; block b goes to q + b·q_stride and
// scales[b·scale_stride] (strides of one block for a plain row, of a row group's blocks in W).
void quantize_row(int64_t K, const float* w, int8_t* q, float* scales, int64_t q_stride = kQ8Block,
                  int64_t scale_stride = 1) {
  for (int64_t b = 0; b < K / kQ8Block; ++b) {
    const float* src = w + b * kQ8Block;
    float amax = 0.f;
    for (int64_t i = 0; i < kQ8Block; ++i) amax = std::max(amax, std::fabs(src[i]));
    const float scale = amax / 127.f, inv = scale > 0.f ? 1.f / scale : 0.f;
    for (int64_t i = 0; i < kQ8Block; ++i)
      q[b * q_stride + i] = static_cast<int8_t>(std::clamp(static_cast<int>(std::lrintf(src[i] * inv)), -127, 127));
    scales[b * scale_stride] = scale;
  }
}

#if defined(LLM_Q8_SIMD)
// Σ over the 32 lanes of |x|·(sign(x)·w) (= x·w), as eight 32-bit partial sums. Unsigned times signed
// bytes is what the hardware offers; neither side is ever -128. With VNNI one instruction; without,
// maddubs forms pairwise 16-bit sums, which cannot saturate here (a pair is at most 2·127² < 2¹⁵),
// and madd with ones widens them.
inline __m256i dot_block(__m256i ax, __m256i signed_w) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, signed_w);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(ax, signed_w), _mm256_set1_epi16(1));
#endif
}
#endif

// out[r] = Σ_b (x_b · w_{r,b}) · xs_b · ws_{r,b} for the R rows of one row group (w and ws at the
// group's start) against one quantized activation row (nb blocks). `prefetch` (may be null) is the
// next group's weights, requested from memory while these are multiplied: the hardware prefetcher
// alone leaves this loop waiting on memory about half the time.
template <int R>
void dot_rows(int64_t nb, const int8_t* xq, const float* xs, const int8_t* w, const float* ws, float* out,
              const int8_t* prefetch) {
#if defined(LLM_Q8_SIMD)
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const int8_t* wb = w + b * R * kQ8Block;
    if (prefetch)  // the same bytes of the next group: R blocks, R/2 cache lines
      for (int r = 0; r < R; r += 2) _mm_prefetch(reinterpret_cast<const char*>(prefetch + (b * R + r) * kQ8Block), _MM_HINT_T0);
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + b * kQ8Block));
    const __m256i ax = _mm256_sign_epi8(xv, xv);
    for (int r = 0; r < R; ++r) {
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + r * kQ8Block));
      const __m256 dot = _mm256_cvtepi32_ps(dot_block(ax, _mm256_sign_epi8(wv, xv)));
      acc[r] = _mm256_fmadd_ps(dot, _mm256_set1_ps(xs[b] * ws[b * R + r]), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    const __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc[r]), _mm256_extractf128_ps(acc[r], 1));
    const __m128 h2 = _mm_add_ps(h, _mm_movehl_ps(h, h));
    out[r] = _mm_cvtss_f32(_mm_add_ss(h2, _mm_shuffle_ps(h2, h2, 1)));
  }
#else
  (void)prefetch;
  for (int r = 0; r < R; ++r) {
    float total = 0.f;
    for (int64_t b = 0; b < nb; ++b) {
      int32_t dot = 0;
      for (int64_t k = 0; k < kQ8Block; ++k) dot += int32_t(xq[b * kQ8Block + k]) * w[(b * R + r) * kQ8Block + k];
      total += static_cast<float>(dot) * (xs[b] * ws[b * R + r]);
    }
    out[r] = total;
  }
#endif
}

int q8_threads(int64_t N, int64_t K) {
  return omp_in_parallel() ? 1 : int(std::max<int64_t>(1, std::min<int64_t>(num_threads(), N * K / 65536)));
}
}  // namespace

void quantize_q8_rows(int64_t N, int64_t K, const float* w, int8_t* q, float* scales) {
#pragma omp parallel for schedule(static) if (N * K > (1 << 16))
  for (int64_t j = 0; j < N; ++j) {
    const Q8Index at = q8_index(N, K, j, 0);
    const int64_t rows = std::min(kQ8Rows, N - (j - j % kQ8Rows));
    quantize_row(K, w + j * K, q + at.q, scales + at.scale, rows * kQ8Block, rows);
  }
}

#if defined(LLM_Q8_SIMD) && defined(__AVX512VNNI__) && defined(__AVX512VL__)
const char* q8_isa() { return "avx512-vnni"; }
#elif defined(LLM_Q8_SIMD)
const char* q8_isa() { return "avx2"; }
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
            const Q8Index at = q8_index(N, K, j0 + r, b * kQ8Block);
            const float scale = w_scales[at.scale];
            const int8_t* q = wq + at.q;
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
  const int64_t groups = (N + kQ8Rows - 1) / kQ8Rows;
  auto outputs = [&](int64_t g0, int64_t g1) {
    float out[kQ8Rows];
    for (int64_t i = 0; i < M; ++i) {
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t j = g * kQ8Rows, rows = std::min(kQ8Rows, N - j);
        const int8_t* w = wq + j * K;
        const float* ws = w_scales + j * nb;
        if (rows == kQ8Rows)
          dot_rows<kQ8Rows>(nb, xq.data() + i * K, xs.data() + i * nb, w, ws, out, g + 1 < g1 && j + 2 * kQ8Rows <= N ? w + kQ8Rows * K : nullptr);
        else if (rows == 3)
          dot_rows<3>(nb, xq.data() + i * K, xs.data() + i * nb, w, ws, out, nullptr);
        else if (rows == 2)
          dot_rows<2>(nb, xq.data() + i * K, xs.data() + i * nb, w, ws, out, nullptr);
        else
          dot_rows<1>(nb, xq.data() + i * K, xs.data() + i * nb, w, ws, out, nullptr);
        for (int64_t r = 0; r < rows; ++r) C[i * N + j + r] = out[r] + (bias ? bias[j + r] : 0.f);
      }
    }
  };
  parallel_ranges(groups, q8_threads(N, K), outputs);
}

}  // namespace llm::cpu
