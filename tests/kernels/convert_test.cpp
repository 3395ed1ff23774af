// fp32 <-> bf16 / f16 conversions: exhaustive decoding, and encoding against a nearest-value search.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "kernels/cpu/elementwise.h"
#include "tests/common/testing.h"
#include "tests/kernels/kernel_test_util.h"

namespace llm::testing {
namespace {

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Straightforward decoder for a binary format with `exp_bits` exponent and `man_bits` mantissa bits.
double decode(uint32_t h, int exp_bits, int man_bits) {
  const uint32_t sign = h >> (exp_bits + man_bits) & 1, e = (h >> man_bits) & ((1u << exp_bits) - 1),
                 m = h & ((1u << man_bits) - 1);
  const int bias = (1 << (exp_bits - 1)) - 1;
  double mag;
  if (e == (1u << exp_bits) - 1)
    mag = m ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  else if (e == 0)
    mag = std::ldexp(double(m), 1 - bias - man_bits);
  else
    mag = std::ldexp(double(m + (1u << man_bits)), int(e) - bias - man_bits);
  return sign ? -mag : mag;
}

// Reference encoder: the nearest representable value to x, ties to the even bit pattern, values at
// or beyond the midpoint above the largest finite number to inf (as if the exponent were unbounded).
uint16_t encode_reference(float x, int exp_bits, int man_bits) {
  const uint16_t sign = uint16_t(std::signbit(x) ? 1u << (exp_bits + man_bits) : 0u);
  const uint16_t inf = uint16_t(((1u << exp_bits) - 1) << man_bits);
  if (std::isnan(x)) return 0;  // NaN is checked separately
  const double a = std::fabs(double(x));
  // Largest pattern whose value is <= a, by binary search over the monotone positive patterns.
  uint32_t lo = 0, hi = inf;  // decode(inf) = inf > a unless a is inf
  if (std::isinf(a)) return uint16_t(sign | inf);
  while (hi - lo > 1) {
    const uint32_t mid = (lo + hi) / 2;
    (decode(mid, exp_bits, man_bits) <= a ? lo : hi) = mid;
  }
  const double below = decode(lo, exp_bits, man_bits);
  // Above the largest finite value the next step is the same size again (unbounded exponent).
  const double above = lo + 1 < inf ? decode(lo + 1, exp_bits, man_bits)
                                    : below + (below - decode(lo - 1, exp_bits, man_bits));
  uint32_t pick;
  if (a - below < above - a) pick = lo;
  else if (a - below > above - a) pick = lo + 1;
  else pick = (lo & 1) ? lo + 1 : lo;
  return uint16_t(sign | pick);
}

// Test inputs for float -> 16-bit: every 16-bit value, the midpoints between neighbours and one fp32
// ulp either side of them, random bit patterns, and special values.
std::vector<float> encode_inputs(int exp_bits, int man_bits) {
  std::vector<float> xs;
  const uint32_t inf = ((1u << exp_bits) - 1) << man_bits;
  for (uint32_t h = 0; h < inf; ++h) {
    const double v = decode(h, exp_bits, man_bits);
    const double next = h + 1 < inf ? decode(h + 1, exp_bits, man_bits) : 2 * v - decode(h - 1, exp_bits, man_bits);
    const float mid = float((v + next) / 2);  // exact: one more bit than the 16-bit format
    for (float s : {1.f, -1.f}) {
      xs.push_back(s * float(v));
      xs.push_back(s * mid);
      xs.push_back(s * std::nextafter(mid, 0.f));
      xs.push_back(s * std::nextafter(mid, INFINITY));
    }
  }
  std::mt19937 gen(123);
  for (int i = 0; i < 100000; ++i) {
    const float f = float_of(uint32_t(gen()));
    if (!std::isnan(f)) xs.push_back(f);
  }
  for (float f : {0.f, -0.f, INFINITY, -INFINITY, std::numeric_limits<float>::max(), -std::numeric_limits<float>::max(),
                  std::numeric_limits<float>::denorm_min(), 1e-10f, 65519.f, 65520.f, 65535.f, 1e10f})
    xs.push_back(f);
  return xs;
}

void check_encoder(void (*encode)(int64_t, const float*, uint16_t*), int exp_bits, int man_bits) {
  const auto xs = encode_inputs(exp_bits, man_bits);
  std::vector<uint16_t> got(xs.size(), 0xDEAD);
  encode(int64_t(xs.size()), xs.data(), got.data());
  int64_t failures = 0;
  for (size_t i = 0; i < xs.size() && failures < 10; ++i) {
    const uint16_t want = encode_reference(xs[i], exp_bits, man_bits);
    if (got[i] != want) {
      ++failures;
      ADD_FAILURE() << "x=" << xs[i] << " (0x" << std::hex << bits_of(xs[i]) << ") got 0x" << got[i] << " want 0x" << want;
    }
  }
  // NaN stays NaN: sign kept, quiet bit set, for quiet and signalling inputs.
  const uint32_t nans[] = {0x7FC00000u, 0xFFC00001u, 0x7F800001u, 0xFF812345u, 0x7FFFFFFFu};
  for (uint32_t n : nans) {
    const float x = float_of(n);
    uint16_t h = 0;
    encode(1, &x, &h);
    const uint16_t exp_mask = uint16_t(((1u << exp_bits) - 1) << man_bits);
    EXPECT_EQ(h & exp_mask, exp_mask) << std::hex << n;
    EXPECT_NE(h & (1u << (man_bits - 1)), 0u) << std::hex << n;  // quiet
    EXPECT_EQ(h >> 15, n >> 31);
  }
}

void check_decoder(void (*decode_fn)(int64_t, const uint16_t*, float*), int exp_bits, int man_bits) {
  std::vector<uint16_t> all(65536);
  for (uint32_t i = 0; i < 65536; ++i) all[i] = uint16_t(i);
  auto got = poisoned(all.size());
  decode_fn(int64_t(all.size()), all.data(), got.data());
  for (uint32_t i = 0; i < 65536; ++i) {
    const double want = decode(i, exp_bits, man_bits);
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got[i])) << std::hex << i;
      ASSERT_EQ(bits_of(got[i]) >> 31, i >> 15) << std::hex << i;
    } else {
      ASSERT_EQ(double(got[i]), want) << std::hex << i;
      ASSERT_EQ(std::signbit(got[i]), std::signbit(want)) << std::hex << i;  // -0 stays -0
    }
  }
}

TEST(Convert, Bf16ToF32Exhaustive) { check_decoder(cpu::bf16_to_f32, 8, 7); }
TEST(Convert, F16ToF32Exhaustive) { check_decoder(cpu::f16_to_f32, 5, 10); }
TEST(Convert, F32ToBf16RoundsToNearestEven) { check_encoder(cpu::f32_to_bf16, 8, 7); }
TEST(Convert, F32ToF16RoundsToNearestEven) { check_encoder(cpu::f32_to_f16, 5, 10); }

TEST(Convert, RoundTripsAndParallelSizes) {
  for (int64_t n : {1, 3, 17, 127, 257, 100003}) {
    const auto x = random_floats(size_t(n), uint64_t(n), -100.f, 100.f);
    std::vector<uint16_t> h(static_cast<size_t>(n));
    auto back = poisoned(size_t(n));
    cpu::f32_to_f16(n, x.data(), h.data());
    cpu::f16_to_f32(n, h.data(), back.data());
    EXPECT_REL_NEAR(back, x, 1.0 / 2048);  // half an f16 ulp relative to the largest value
    cpu::f32_to_bf16(n, x.data(), h.data());
    back = poisoned(size_t(n));
    cpu::bf16_to_f32(n, h.data(), back.data());
    EXPECT_REL_NEAR(back, x, 1.0 / 256);
  }
}

}  // namespace
}  // namespace llm::testing
