// Shared helpers for the tests: seeded random data, poisoned outputs, relative-error checks.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace llm::testing {

// Uniform values in [lo, hi) from a fixed seed.
inline std::vector<float> random_floats(size_t n, uint64_t seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

inline std::vector<int32_t> random_ints(size_t n, uint64_t seed, int32_t lo, int32_t hi_exclusive) {
  std::mt19937_64 gen(seed);
  std::uniform_int_distribution<int32_t> dist(lo, hi_exclusive - 1);
  std::vector<int32_t> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

// An output buffer filled with NaN, so an element the kernel forgot to write fails the comparison.
inline std::vector<float> poisoned(size_t n) {
  return std::vector<float>(n, std::numeric_limits<float>::quiet_NaN());
}

// max_i |got_i - want_i| / max(max_i |want_i|, floor): relative to the size of the reference, so a
// few near-zero entries do not dominate. NaN anywhere gives +inf.
template <typename Got, typename Want>
double max_rel_error(const Got& got, const Want& want, double floor = 1e-6) {
  if (got.size() != want.size()) return std::numeric_limits<double>::infinity();
  double max_abs = floor, max_err = 0;
  for (size_t i = 0; i < want.size(); ++i) max_abs = std::max(max_abs, std::fabs(double(want[i])));
  for (size_t i = 0; i < want.size(); ++i) {
    const double e = std::fabs(double(got[i]) - double(want[i]));
    if (std::isnan(e)) return std::numeric_limits<double>::infinity();
    max_err = std::max(max_err, e);
  }
  return max_err / max_abs;
}

#define EXPECT_REL_NEAR(got, want, tol) EXPECT_LE(::llm::testing::max_rel_error((got), (want)), (tol))

// The message of the llm::Error that f throws ("" when it throws none).
std::string error_of(const std::function<void()>& f);

// The directory with the shared data sets (../shared/data from the source tree), or "" when absent.
std::string shared_data_dir();

}  // namespace llm::testing
