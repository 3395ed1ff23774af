// fp32 <-> bf16 / f16 conversion, round to nearest even, NaN kept (and quieted), inf kept.
#include <cstring>

#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/loop_util.h"

#if defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace llm::cpu {

namespace {
inline uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint16_t bf16_from_bits(uint32_t u) {
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return uint16_t((u >> 16) | 0x0040u);  // NaN: keep sign, quiet it
  // Adding 0x7FFF plus the lowest kept bit rounds to nearest, ties to even; a carry into the exponent
  // is the correct result (up to inf for values past the largest bf16).
  return uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

#if !defined(__F16C__)
// Portable f32 -> f16 (used only when the CPU lacks F16C).
inline uint16_t f16_from_bits(uint32_t u) {
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return uint16_t(sign | 0x7E00u | ((a >> 13) & 0x3FFu));  // NaN, quiet
  if (a >= 0x477FF000u) return uint16_t(sign | 0x7C00u);  // >= 65520 (midpoint above 65504) or inf
  if (a >= 0x38800000u) {  // normal f16 range (>= 2^-14): rebias and round 13 bits away
    const uint32_t r = a - 0x38000000u;  // exponent rebias 127 -> 15
    return uint16_t(sign | ((r + 0x0FFFu + ((r >> 13) & 1u)) >> 13));
  }
  if (a < 0x33000000u) return sign;  // below half the smallest subnormal (2^-25): rounds to 0
  // Subnormal f16: shift the full significand right, rounding to nearest even.
  const uint32_t exponent = a >> 23;
  const uint32_t mantissa = (a & 0x7FFFFFu) | 0x800000u;
  const uint32_t shift = 126u - exponent;  // 14..24: f16 subnormal unit is 2^-24
  const uint32_t half = 1u << (shift - 1);
  const uint32_t rest = mantissa & ((1u << shift) - 1u);
  uint32_t q = mantissa >> shift;
  if (rest > half || (rest == half && (q & 1u))) ++q;
  return uint16_t(sign | q);
}

inline float f16_to_float_scalar(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  const uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0x1F) return float_of(sign | 0x7F800000u | (mantissa << 13));  // inf / NaN
  if (exponent != 0) return float_of(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  // zero or subnormal: mantissa * 2^-24 is exact in fp32
  const float magnitude = float(mantissa) * 0x1.0p-24f;
  return float_of(sign | bits_of(magnitude));
}
#endif
}  // namespace

void f32_to_bf16(int64_t n, const float* x, uint16_t* y) {
  parallel_chunks(n, [&](int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) y[i] = bf16_from_bits(bits_of(x[i]));
  });
}

void bf16_to_f32(int64_t n, const uint16_t* x, float* y) {
  parallel_chunks(n, [&](int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) y[i] = float_of(uint32_t(x[i]) << 16);
  });
}

void f32_to_f16(int64_t n, const float* x, uint16_t* y) {
  parallel_chunks(n, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
#if defined(__F16C__)
    // The hardware conversion rounds to nearest even and handles NaN, inf and subnormals.
    for (; i + 8 <= end; i += 8)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i),
                       _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < end; ++i) y[i] = _cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
    for (; i < end; ++i) y[i] = f16_from_bits(bits_of(x[i]));
#endif
  });
}

void f16_to_f32(int64_t n, const uint16_t* x, float* y) {
  parallel_chunks(n, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
#if defined(__F16C__)
    for (; i + 8 <= end; i += 8)
      _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i))));
    for (; i < end; ++i) y[i] = _cvtsh_ss(x[i]);
#else
    for (; i < end; ++i) y[i] = f16_to_float_scalar(x[i]);
#endif
  });
}

}  // namespace llm::cpu
