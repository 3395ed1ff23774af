// Private to gemm.cpp: the packing routines and the register-tiled micro-kernel, one per ISA.
//
// Packed layouts: an A sliver is [k][kMR] (kMR rows of op(A) for each k), a B panel is [k][kNR]. Both
// are zero-padded to the full tile, so the micro-kernel always runs a full kMR×kNR tile and only
// the store is trimmed; edge tiles therefore do the same arithmetic as interior ones.
#pragma once
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace llm::cpu::gemm_detail {

#if defined(__AVX512F__)
inline constexpr const char* kIsaName = "avx512";
// 8 rows × 3 zmm (48 columns): 24 accumulators + 3 B vectors; the 8 A values are broadcast straight
// from memory. Two FMA pipes with 4-cycle latency need ≥ 8 independent chains; 24 hide it fully.
inline constexpr int kMR = 8;
inline constexpr int kNR = 48;
#elif defined(__AVX2__) && defined(__FMA__)
inline constexpr const char* kIsaName = "avx2";
// 6 rows × 2 ymm (16 columns): 12 accumulators + 2 B vectors + 1 broadcast = 15 of 16 registers.
inline constexpr int kMR = 6;
inline constexpr int kNR = 16;
#else
inline constexpr const char* kIsaName = "scalar";
inline constexpr int kMR = 4;
inline constexpr int kNR = 8;
#endif

// out[k·width + c] = src[k·ld + c] for c < valid, 0 for valid ≤ c < width.
template <int kWidth>
inline void pack_copy(const float* src, int64_t ld, int64_t valid, int64_t kc, float* out) {
  if (valid == kWidth) {  // full panel: a fixed-size copy the compiler turns into a few vector moves
    for (int64_t k = 0; k < kc; ++k) std::memcpy(out + k * kWidth, src + k * ld, kWidth * sizeof(float));
    return;
  }
  constexpr int width = kWidth;
  for (int64_t k = 0; k < kc; ++k) {
    std::memcpy(out + k * width, src + k * ld, size_t(valid) * sizeof(float));
    if (valid < width) std::memset(out + k * width + valid, 0, size_t(width - valid) * sizeof(float));
  }
}

#if defined(__AVX2__)
// Transposes the 8×8 block held in r[0..7] (row q in r[q]) in place.
inline void transpose8x8(__m256 r[8]) {
  __m256 t[8], s[8];
  for (int q = 0; q < 8; q += 2) {
    t[q] = _mm256_unpacklo_ps(r[q], r[q + 1]);
    t[q + 1] = _mm256_unpackhi_ps(r[q], r[q + 1]);
  }
  for (int h = 0; h < 8; h += 4) {
    s[h + 0] = _mm256_shuffle_ps(t[h], t[h + 2], _MM_SHUFFLE(1, 0, 1, 0));
    s[h + 1] = _mm256_shuffle_ps(t[h], t[h + 2], _MM_SHUFFLE(3, 2, 3, 2));
    s[h + 2] = _mm256_shuffle_ps(t[h + 1], t[h + 3], _MM_SHUFFLE(1, 0, 1, 0));
    s[h + 3] = _mm256_shuffle_ps(t[h + 1], t[h + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int q = 0; q < 4; ++q) {
    r[q] = _mm256_permute2f128_ps(s[q], s[q + 4], 0x20);
    r[q + 4] = _mm256_permute2f128_ps(s[q], s[q + 4], 0x31);
  }
}
#endif

// out[k·width + r] = src[r·ld + k] for r < valid, 0 for valid ≤ r < width: turns `valid` rows of
// length kc into kc rows of `width`. Full 8×8 blocks go through registers; the ragged rest is scalar.
inline void pack_transpose(const float* src, int64_t ld, int64_t valid, int64_t kc, int width, float* out) {
  int64_t r0 = 0;
#if defined(__AVX2__)
  for (; r0 + 8 <= valid; r0 += 8) {
    int64_t k = 0;
    for (; k + 8 <= kc; k += 8) {
      __m256 block[8];
      for (int q = 0; q < 8; ++q) block[q] = _mm256_loadu_ps(src + (r0 + q) * ld + k);
      transpose8x8(block);
      for (int q = 0; q < 8; ++q) _mm256_storeu_ps(out + (k + q) * width + r0, block[q]);
    }
    for (; k < kc; ++k)
      for (int q = 0; q < 8; ++q) out[k * width + r0 + q] = src[(r0 + q) * ld + k];
  }
#endif
  for (int64_t k = 0; k < kc; ++k) {
    for (int64_t r = r0; r < valid; ++r) out[k * width + r] = src[r * ld + k];
    for (int64_t r = valid; r < width; ++r) out[k * width + r] = 0.f;
  }
}

// C[rows×cols] tile (rows ≤ kMR, cols ≤ kNR) = alpha·(a·b) + beta·C (+ bias), where a is a packed
// sliver and b a packed panel of depth kc. beta == 0 never reads C. Every element goes through the
// same operations whether the tile is full or trimmed, so results do not depend on tile position.
#if defined(__AVX512F__)
inline void micro_kernel(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int rows, int cols,
                         float alpha, float beta, const float* bias) {
  constexpr int kV = kNR / 16;
  // Start fetching the C tile now: its rows are far apart in memory (no hardware prefetch), and the
  // kc-long loop below hides the latency.
  for (int i = 0; i < rows; ++i)
    for (int v = 0; v < kV; ++v) _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + 16 * v), _MM_HINT_T0);
  __m512 acc[kMR][kV];
#pragma GCC unroll 8
  for (int i = 0; i < kMR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < kV; ++v) acc[i][v] = _mm512_setzero_ps();

  for (int64_t k = 0; k < kc; ++k) {
    __m512 bv[kV];
#pragma GCC unroll 4
    for (int v = 0; v < kV; ++v) bv[v] = _mm512_loadu_ps(b + 16 * v);
#pragma GCC unroll 8
    for (int i = 0; i < kMR; ++i) {
      const __m512 ai = _mm512_set1_ps(a[i]);
#pragma GCC unroll 4
      for (int v = 0; v < kV; ++v) acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
    }
    a += kMR;
    b += kNR;
  }

  __mmask16 mask[kV];
  for (int v = 0; v < kV; ++v) {
    const int n = std::clamp(cols - 16 * v, 0, 16);
    mask[v] = __mmask16((1u << n) - 1u);
  }
  const __m512 valpha = _mm512_set1_ps(alpha), vbeta = _mm512_set1_ps(beta);
#pragma GCC unroll 8
  for (int i = 0; i < kMR; ++i) {
    if (i >= rows) break;
    float* row = c + i * ldc;
#pragma GCC unroll 4
    for (int v = 0; v < kV; ++v) {
      if (!mask[v]) continue;
      __m512 r = _mm512_mul_ps(valpha, acc[i][v]);
      if (beta != 0.f) r = _mm512_fmadd_ps(vbeta, _mm512_maskz_loadu_ps(mask[v], row + 16 * v), r);
      if (bias) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(mask[v], bias + 16 * v));
      _mm512_mask_storeu_ps(row + 16 * v, mask[v], r);
    }
  }
}
#elif defined(__AVX2__) && defined(__FMA__)
inline void micro_kernel(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int rows, int cols,
                         float alpha, float beta, const float* bias) {
  constexpr int kV = kNR / 8;
  __m256 acc[kMR][kV];
#pragma GCC unroll 8
  for (int i = 0; i < kMR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < kV; ++v) acc[i][v] = _mm256_setzero_ps();

  for (int64_t k = 0; k < kc; ++k) {
    __m256 bv[kV];
#pragma GCC unroll 4
    for (int v = 0; v < kV; ++v) bv[v] = _mm256_loadu_ps(b + 8 * v);
#pragma GCC unroll 8
    for (int i = 0; i < kMR; ++i) {
      const __m256 ai = _mm256_broadcast_ss(a + i);
#pragma GCC unroll 4
      for (int v = 0; v < kV; ++v) acc[i][v] = _mm256_fmadd_ps(ai, bv[v], acc[i][v]);
    }
    a += kMR;
    b += kNR;
  }

  __m256i mask[kV];
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int v = 0; v < kV; ++v) mask[v] = _mm256_cmpgt_epi32(_mm256_set1_epi32(cols - 8 * v), lane);
  const __m256 valpha = _mm256_set1_ps(alpha), vbeta = _mm256_set1_ps(beta);
#pragma GCC unroll 8
  for (int i = 0; i < kMR; ++i) {
    if (i >= rows) break;
    float* row = c + i * ldc;
#pragma GCC unroll 4
    for (int v = 0; v < kV; ++v) {
      if (cols <= 8 * v) continue;
      __m256 r = _mm256_mul_ps(valpha, acc[i][v]);
      if (beta != 0.f) r = _mm256_fmadd_ps(vbeta, _mm256_maskload_ps(row + 8 * v, mask[v]), r);
      if (bias) r = _mm256_add_ps(r, _mm256_maskload_ps(bias + 8 * v, mask[v]));
      _mm256_maskstore_ps(row + 8 * v, mask[v], r);
    }
  }
}
#else
inline void micro_kernel(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int rows, int cols,
                         float alpha, float beta, const float* bias) {
  float acc[kMR][kNR] = {};
  for (int64_t k = 0; k < kc; ++k) {
    for (int i = 0; i < kMR; ++i)
      for (int j = 0; j < kNR; ++j) acc[i][j] += a[i] * b[j];
    a += kMR;
    b += kNR;
  }
  for (int i = 0; i < rows; ++i) {
    float* row = c + i * ldc;
    for (int j = 0; j < cols; ++j) {
      float r = alpha * acc[i][j];
      if (beta != 0.f) r += beta * row[j];
      if (bias) r += bias[j];
      row[j] = r;
    }
  }
}
#endif

}  // namespace llm::cpu::gemm_detail
