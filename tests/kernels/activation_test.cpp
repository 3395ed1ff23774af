// GELU / SiLU / SwiGLU kernels and the vectorized exp they share, against double references;
// backward references checked by finite differences.
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/fused.h"
#include "kernels/cpu/simd_math.h"
#include "tests/common/testing.h"
#include "tests/kernels/kernel_test_util.h"

namespace llm::testing {
namespace {

const int64_t kSizes[] = {1, 3, 17, 127, 257, 100003};

double ref_gelu(double x) {
  const double k0 = std::sqrt(2.0 / M_PI);
  return 0.5 * x * (1 + std::tanh(k0 * (x + 0.044715 * x * x * x)));
}
double ref_gelu_grad(double x) {
  const double k0 = std::sqrt(2.0 / M_PI);
  const double t = std::tanh(k0 * (x + 0.044715 * x * x * x));
  return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k0 * (1 + 3 * 0.044715 * x * x);
}
double ref_sigmoid(double x) { return 1 / (1 + std::exp(-x)); }
double ref_silu(double x) { return x * ref_sigmoid(x); }
double ref_silu_grad(double x) {
  const double s = ref_sigmoid(x);
  return s * (1 + x * (1 - s));
}

// Inputs spanning the interesting range, plus a few far-out values where exp over/underflows.
std::vector<float> activation_inputs(int64_t n, uint64_t seed) {
  auto x = random_floats(size_t(n), seed, -8.f, 8.f);
  const float extremes[] = {-100.f, 100.f, -30.f, 30.f, -1e4f, 1e4f};
  for (size_t i = 0; i < 6 && i < x.size(); i += 1) x[(i * 7919) % x.size()] = extremes[i];
  return x;
}

TEST(ActivationReference, GradientsMatchFiniteDifferences) {
  const auto x = to_double(random_floats(64, 1, -6.f, 6.f));
  const auto dy = to_double(random_floats(64, 2));
  auto sum_map = [&](double (*f)(double)) {
    return [&dy, f](const std::vector<double>& xv) {
      double s = 0;
      for (size_t i = 0; i < xv.size(); ++i) s += dy[i] * f(xv[i]);
      return s;
    };
  };
  std::vector<double> gelu_grad(x.size()), silu_grad(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    gelu_grad[i] = dy[i] * ref_gelu_grad(x[i]);
    silu_grad[i] = dy[i] * ref_silu_grad(x[i]);
  }
  EXPECT_REL_NEAR(gelu_grad, numeric_gradient(sum_map(ref_gelu), x), 1e-8);
  EXPECT_REL_NEAR(silu_grad, numeric_gradient(sum_map(ref_silu), x), 1e-8);
}

// The vectorized exp against libm in double: within 2 ulp over the whole range (normal results).
TEST(SimdExp, WithinTwoUlp) {
  const auto x = random_floats(200000, 3, -87.f, 88.7f);
  double worst = 0;
  for (float v : x) {
    const double want = std::exp(double(v));
    const double got = cpu::simd::exp_scalar(v);
    worst = std::max(worst, std::fabs(got - want) / want);
  }
  EXPECT_LT(worst, 2.0 * 0x1.0p-23);
  EXPECT_EQ(cpu::simd::exp_scalar(-std::numeric_limits<float>::infinity()), 0.0f);
  EXPECT_EQ(cpu::simd::exp_scalar(-200.f), 0.0f);
  EXPECT_EQ(cpu::simd::exp_scalar(100.f), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(cpu::simd::exp_scalar(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_EQ(cpu::simd::exp_scalar(0.f), 1.0f);
  // Subnormal results: e^-100 = 3.72e-44 is a few subnormal units.
  EXPECT_NEAR(cpu::simd::exp_scalar(-100.f), std::exp(-100.0), 1.5e-45);
}

TEST(Gelu, ForwardAndBackwardMatchReference) {
  for (int64_t n : kSizes) {
    SCOPED_TRACE(::testing::Message() << "n=" << n);
    const auto x = activation_inputs(n, 10 + uint64_t(n));
    const auto dy = random_floats(size_t(n), 11);
    auto y = poisoned(size_t(n)), dx = poisoned(size_t(n));
    cpu::gelu_forward(n, x.data(), y.data());
    cpu::gelu_backward(n, x.data(), dy.data(), dx.data());
    std::vector<double> ry(static_cast<size_t>(n)), rdx(static_cast<size_t>(n));
    for (size_t i = 0; i < size_t(n); ++i) {
      ry[i] = ref_gelu(x[i]);
      rdx[i] = dy[i] * ref_gelu_grad(x[i]);
    }
    EXPECT_REL_NEAR(y, ry, 1e-5);
    EXPECT_REL_NEAR(dx, rdx, 1e-5);
  }
}

// Element-wise relative accuracy where the output is tiny (left tail), which the sigmoid form keeps.
TEST(Gelu, AccurateInTheNegativeTail) {
  std::vector<float> x;
  for (float v = -9.f; v < -3.f; v += 0.37f) x.push_back(v);
  auto y = poisoned(x.size());
  cpu::gelu_forward(int64_t(x.size()), x.data(), y.data());
  // Even in double, 1 + tanh(u) cancels to 0 here; 0.5 (1 + tanh u) = 1 / (1 + e^(-2u)) does not.
  const double k0 = std::sqrt(2.0 / M_PI);
  for (size_t i = 0; i < x.size(); ++i) {
    const double u = k0 * (x[i] + 0.044715 * double(x[i]) * x[i] * x[i]);
    EXPECT_NEAR(y[i] / (x[i] / (1 + std::exp(-2 * u))), 1.0, 1e-5) << x[i];
  }
}

TEST(Silu, ForwardAndBackwardMatchReference) {
  for (int64_t n : kSizes) {
    SCOPED_TRACE(::testing::Message() << "n=" << n);
    const auto x = activation_inputs(n, 20 + uint64_t(n));
    const auto dy = random_floats(size_t(n), 21);
    auto y = poisoned(size_t(n)), dx = poisoned(size_t(n));
    cpu::silu_forward(n, x.data(), y.data());
    cpu::silu_backward(n, x.data(), dy.data(), dx.data());
    std::vector<double> ry(static_cast<size_t>(n)), rdx(static_cast<size_t>(n));
    for (size_t i = 0; i < size_t(n); ++i) {
      ry[i] = ref_silu(x[i]);
      rdx[i] = dy[i] * ref_silu_grad(x[i]);
    }
    EXPECT_REL_NEAR(y, ry, 1e-5);
    EXPECT_REL_NEAR(dx, rdx, 1e-5);
  }
}

TEST(SwiGlu, ForwardAndBackwardMatchReference) {
  for (int64_t n : kSizes) {
    SCOPED_TRACE(::testing::Message() << "n=" << n);
    const auto gate = activation_inputs(n, 30 + uint64_t(n));
    const auto up = random_floats(size_t(n), 31, -2.f, 2.f);
    const auto dy = random_floats(size_t(n), 32);
    auto y = poisoned(size_t(n)), dgate = poisoned(size_t(n)), dup = poisoned(size_t(n));
    cpu::swiglu_forward(n, gate.data(), up.data(), y.data());
    cpu::swiglu_backward(n, gate.data(), up.data(), dy.data(), dgate.data(), dup.data());
    std::vector<double> ry(static_cast<size_t>(n)), rdgate(static_cast<size_t>(n)), rdup(static_cast<size_t>(n));
    for (size_t i = 0; i < size_t(n); ++i) {
      ry[i] = ref_silu(gate[i]) * up[i];
      rdgate[i] = double(dy[i]) * up[i] * ref_silu_grad(gate[i]);
      rdup[i] = double(dy[i]) * ref_silu(gate[i]);
    }
    EXPECT_REL_NEAR(y, ry, 1e-5);
    EXPECT_REL_NEAR(dgate, rdgate, 1e-5);
    EXPECT_REL_NEAR(dup, rdup, 1e-5);
  }
}

// Elementwise results do not depend on the thread count at all.
TEST(Activation, SameBitsForAnyThreadCount) {
  const int64_t n = 200001;
  const auto x = activation_inputs(n, 40);
  auto run = [&](int threads) {
    ScopedThreads scope(threads);
    std::vector<float> y(static_cast<size_t>(n));
    cpu::gelu_forward(n, x.data(), y.data());
    return y;
  };
  EXPECT_TRUE(bit_identical(run(1), run(2)));
}

// y may alias x.
TEST(Activation, InPlace) {
  const int64_t n = 1001;
  auto x = activation_inputs(n, 50);
  std::vector<float> expected(static_cast<size_t>(n));
  cpu::silu_forward(n, x.data(), expected.data());
  cpu::silu_forward(n, x.data(), x.data());
  EXPECT_TRUE(bit_identical(x, expected));
}

}  // namespace
}  // namespace llm::testing
