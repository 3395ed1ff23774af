// Helpers shared by the kernel tests: double copies, central finite differences, thread scoping.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "kernels/cpu/parallel.h"

namespace llm::testing {

inline std::vector<double> to_double(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

// Gradient of loss at x by central differences in double; the step balances truncation (h²) against
// cancellation (eps/h), so the result is accurate to ~1e-9 relative for smooth losses of size ~1.
inline std::vector<double> numeric_gradient(const std::function<double(const std::vector<double>&)>& loss,
                                            std::vector<double> x, double h = 1e-5) {
  std::vector<double> grad(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + h;
    const double up = loss(x);
    x[i] = saved - h;
    const double down = loss(x);
    x[i] = saved;
    grad[i] = (up - down) / (2 * h);
  }
  return grad;
}

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Sets the kernel thread count for a scope, restoring the default after.
class ScopedThreads {
 public:
  explicit ScopedThreads(int n) { llm::cpu::set_num_threads(n); }
  ~ScopedThreads() { llm::cpu::set_num_threads(0); }
  ScopedThreads(const ScopedThreads&) = delete;
  ScopedThreads& operator=(const ScopedThreads&) = delete;
};

// Bitwise equality of two float vectors (NaN patterns included).
inline bool bit_identical(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    uint32_t x, y;
    __builtin_memcpy(&x, &a[i], 4);
    __builtin_memcpy(&y, &b[i], 4);
    if (x != y) return false;
  }
  return true;
}

}  // namespace llm::testing
