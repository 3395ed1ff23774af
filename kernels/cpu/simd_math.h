// Private to kernels/cpu: a thin float-vector type for the widest ISA the compiler targets
// (AVX-512, else AVX2, else one scalar lane) and vectorized exp / sigmoid built on it.
// Tails are processed by padding into a full vector (load_partial / store_partial), so every element,
// tail or not, goes through the same instruction sequence and gets the same rounding.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace llm::cpu::simd {

#if defined(__AVX512F__)
constexpr int kWidth = 16;
struct Vf {
  __m512 v;
};
inline Vf load(const float* p) { return {_mm512_loadu_ps(p)}; }
inline void store(float* p, Vf a) { _mm512_storeu_ps(p, a.v); }
inline Vf splat(float s) { return {_mm512_set1_ps(s)}; }
inline Vf operator+(Vf a, Vf b) { return {_mm512_add_ps(a.v, b.v)}; }
inline Vf operator-(Vf a, Vf b) { return {_mm512_sub_ps(a.v, b.v)}; }
inline Vf operator*(Vf a, Vf b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline Vf operator/(Vf a, Vf b) { return {_mm512_div_ps(a.v, b.v)}; }
inline Vf fma(Vf a, Vf b, Vf c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }  // a*b + c
// max/min return b when either is NaN (x86 semantics); callers put the value that may be NaN second.
// The all-lanes masked (maskz) forms avoid GCC 12's false -Wmaybe-uninitialized on the unmasked
// intrinsics (they start from _mm512_undefined_*); with a full mask they compile to the same op.
constexpr __mmask16 kAll = 0xFFFF;
inline Vf max(Vf a, Vf b) { return {_mm512_maskz_max_ps(kAll, a.v, b.v)}; }
inline Vf min(Vf a, Vf b) { return {_mm512_maskz_min_ps(kAll, a.v, b.v)}; }
inline Vf round_nearest(Vf a) {
  return {_mm512_maskz_roundscale_ps(kAll, a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)};
}
inline Vf floor(Vf a) { return {_mm512_maskz_roundscale_ps(kAll, a.v, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC)}; }
// 2^k for integer-valued k in [-126, 127], by building the exponent field.
inline Vf pow2_int(Vf k) {
  const __m512i biased = _mm512_add_epi32(_mm512_maskz_cvtps_epi32(kAll, k.v), _mm512_set1_epi32(127));
  return {_mm512_castsi512_ps(_mm512_maskz_slli_epi32(kAll, biased, 23))};
}
template <int kHalf>
inline __m256 half_of(__m512 a) {
  return _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, _mm512_castps_pd(a), kHalf));
}
inline float reduce_add(Vf a) {
  const __m256 h = _mm256_add_ps(half_of<0>(a.v), half_of<1>(a.v));
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline float reduce_max(Vf a) {
  const __m256 h = _mm256_max_ps(half_of<0>(a.v), half_of<1>(a.v));
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#elif defined(__AVX2__)
constexpr int kWidth = 8;
struct Vf {
  __m256 v;
};
inline Vf load(const float* p) { return {_mm256_loadu_ps(p)}; }
inline void store(float* p, Vf a) { _mm256_storeu_ps(p, a.v); }
inline Vf splat(float s) { return {_mm256_set1_ps(s)}; }
inline Vf operator+(Vf a, Vf b) { return {_mm256_add_ps(a.v, b.v)}; }
inline Vf operator-(Vf a, Vf b) { return {_mm256_sub_ps(a.v, b.v)}; }
inline Vf operator*(Vf a, Vf b) { return {_mm256_mul_ps(a.v, b.v)}; }
inline Vf operator/(Vf a, Vf b) { return {_mm256_div_ps(a.v, b.v)}; }
#if defined(__FMA__)
inline Vf fma(Vf a, Vf b, Vf c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
#else
inline Vf fma(Vf a, Vf b, Vf c) { return {_mm256_add_ps(_mm256_mul_ps(a.v, b.v), c.v)}; }
#endif
inline Vf max(Vf a, Vf b) { return {_mm256_max_ps(a.v, b.v)}; }
inline Vf min(Vf a, Vf b) { return {_mm256_min_ps(a.v, b.v)}; }
inline Vf round_nearest(Vf a) { return {_mm256_round_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }
inline Vf floor(Vf a) { return {_mm256_round_ps(a.v, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC)}; }
inline Vf pow2_int(Vf k) {
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k.v), _mm256_set1_epi32(127)), 23);
  return {_mm256_castsi256_ps(bits)};
}
inline float reduce_add(Vf a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline float reduce_max(Vf a) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#else
constexpr int kWidth = 1;
struct Vf {
  float v;
};
inline Vf load(const float* p) { return {*p}; }
inline void store(float* p, Vf a) { *p = a.v; }
inline Vf splat(float s) { return {s}; }
inline Vf operator+(Vf a, Vf b) { return {a.v + b.v}; }
inline Vf operator-(Vf a, Vf b) { return {a.v - b.v}; }
inline Vf operator*(Vf a, Vf b) { return {a.v * b.v}; }
inline Vf operator/(Vf a, Vf b) { return {a.v / b.v}; }
inline Vf fma(Vf a, Vf b, Vf c) { return {std::fma(a.v, b.v, c.v)}; }
// Same NaN rule as the x86 instructions: b when either is NaN.
inline Vf max(Vf a, Vf b) { return {a.v > b.v ? a.v : b.v}; }
inline Vf min(Vf a, Vf b) { return {a.v < b.v ? a.v : b.v}; }
inline Vf round_nearest(Vf a) { return {std::nearbyint(a.v)}; }
inline Vf floor(Vf a) { return {std::floor(a.v)}; }
inline Vf pow2_int(Vf k) {
  if (std::isnan(k.v)) return k;  // float -> int of NaN is undefined in C++
  const uint32_t bits = uint32_t(int32_t(k.v) + 127) << 23;
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return {out};
}
inline float reduce_add(Vf a) { return a.v; }
inline float reduce_max(Vf a) { return a.v; }
#endif

// Loads `count` (< kWidth) floats and fills the other lanes with `fill`.
inline Vf load_partial(const float* p, int64_t count, float fill) {
  alignas(64) float buf[kWidth];
  for (int i = 0; i < kWidth; ++i) buf[i] = i < count ? p[i] : fill;
  return load(buf);
}
inline void store_partial(float* p, Vf a, int64_t count) {
  alignas(64) float buf[kWidth];
  store(buf, a);
  for (int64_t i = 0; i < count; ++i) p[i] = buf[i];
}

// e^x: x = n ln2 + r with |r| <= ln2/2 (ln2 split in two so n*ln2_hi is exact), e^r by a degree-7
// minimax polynomial (the Cephes expf coefficients, ~1 ulp), then scaled by 2^n in two halves so
// that n up to 128 (overflow to inf) and down to -150 (subnormal results, then 0) stay exact.
// NaN propagates; -inf gives 0, +inf gives inf.
inline Vf exp(Vf x) {
  x = min(splat(89.0f), max(splat(-104.0f), x));  // NaN-preserving operand order
  const Vf n = round_nearest(x * splat(1.44269504088896341f));
  Vf r = fma(n, splat(-0.693359375f), x);
  r = fma(n, splat(2.12194440e-4f), r);
  Vf p = splat(1.9875691500e-4f);
  p = fma(p, r, splat(1.3981999507e-3f));
  p = fma(p, r, splat(8.3334519073e-3f));
  p = fma(p, r, splat(4.1665795894e-2f));
  p = fma(p, r, splat(1.6666665459e-1f));
  p = fma(p, r, splat(5.0000001201e-1f));
  p = fma(p * r, r, r + splat(1.0f));
  const Vf n_half = floor(n * splat(0.5f));
  return p * pow2_int(n_half) * pow2_int(n - n_half);
}

// 1 / (1 + e^-x): exact limits 0 and 1 at the extremes (e^-x overflows to inf, or underflows to 0).
inline Vf sigmoid(Vf x) { return splat(1.0f) / (splat(1.0f) + exp(splat(0.0f) - x)); }

// Scalar convenience wrappers that run the vector code on one lane, so scalar callers agree bitwise.
inline float exp_scalar(float x) {
  alignas(64) float buf[kWidth];
  store(buf, exp(splat(x)));
  return buf[0];
}

}  // namespace llm::cpu::simd
