// Softmax and cross-entropy kernels against double references; backward references checked by
// finite differences.
#include <cmath>
#include <vector>

#include "kernels/cpu/fused.h"
#include "tests/common/testing.h"
#include "tests/kernels/kernel_test_util.h"

namespace llm::testing {
namespace {

struct Shape {
  int64_t N, C;
};
const Shape kShapes[] = {{1, 1}, {3, 3}, {2, 17}, {5, 127}, {3, 257}, {4, 5000}, {64, 1000}};
constexpr int32_t kIgnore = -100;

std::vector<double> ref_softmax(int64_t N, int64_t C, const std::vector<double>& x) {
  std::vector<double> y(x.size());
  for (int64_t i = 0; i < N; ++i) {
    double m = -INFINITY, s = 0;
    for (int64_t c = 0; c < C; ++c) m = std::max(m, x[size_t(i * C + c)]);
    for (int64_t c = 0; c < C; ++c) s += std::exp(x[size_t(i * C + c)] - m);
    for (int64_t c = 0; c < C; ++c) y[size_t(i * C + c)] = std::exp(x[size_t(i * C + c)] - m) / s;
  }
  return y;
}

double ref_logsumexp(int64_t V, const double* row) {
  double m = -INFINITY, s = 0;
  for (int64_t c = 0; c < V; ++c) m = std::max(m, row[c]);
  for (int64_t c = 0; c < V; ++c) s += std::exp(row[c] - m);
  return m + std::log(s);
}

// Losses (ignored rows give 0) and their gradient times dloss.
std::vector<double> ref_ce_losses(int64_t N, int64_t V, const std::vector<double>& logits,
                                  const std::vector<int32_t>& targets) {
  std::vector<double> losses(static_cast<size_t>(N), 0.0);
  for (int64_t i = 0; i < N; ++i)
    if (targets[size_t(i)] != kIgnore)
      losses[size_t(i)] = ref_logsumexp(V, &logits[size_t(i * V)]) - logits[size_t(i * V + targets[size_t(i)])];
  return losses;
}
std::vector<double> ref_ce_backward(int64_t N, int64_t V, const std::vector<double>& logits,
                                    const std::vector<int32_t>& targets, const std::vector<double>& dloss) {
  std::vector<double> d(logits.size(), 0.0);
  for (int64_t i = 0; i < N; ++i) {
    if (targets[size_t(i)] == kIgnore) continue;
    const double l = ref_logsumexp(V, &logits[size_t(i * V)]);
    for (int64_t c = 0; c < V; ++c)
      d[size_t(i * V + c)] = dloss[size_t(i)] * (std::exp(logits[size_t(i * V + c)] - l) - (c == targets[size_t(i)]));
  }
  return d;
}

// Random targets with every third row ignored.
std::vector<int32_t> make_targets(int64_t N, int64_t V, uint64_t seed) {
  auto t = random_ints(size_t(N), seed, 0, int32_t(V));
  for (size_t i = 1; i < t.size(); i += 3) t[i] = kIgnore;
  return t;
}

TEST(SoftmaxReference, GradientsMatchFiniteDifferences) {
  const int64_t N = 3, C = 7;
  const auto x = to_double(random_floats(size_t(N * C), 1, -3.f, 3.f));
  const auto dy = to_double(random_floats(size_t(N * C), 2));
  // softmax backward, written out: dx = y (dy - sum(y dy))
  const auto y = ref_softmax(N, C, x);
  std::vector<double> dx(x.size());
  for (int64_t i = 0; i < N; ++i) {
    double d = 0;
    for (int64_t c = 0; c < C; ++c) d += y[size_t(i * C + c)] * dy[size_t(i * C + c)];
    for (int64_t c = 0; c < C; ++c) dx[size_t(i * C + c)] = y[size_t(i * C + c)] * (dy[size_t(i * C + c)] - d);
  }
  EXPECT_REL_NEAR(dx, numeric_gradient([&](const std::vector<double>& v) { return dot(dy, ref_softmax(N, C, v)); }, x),
                  1e-8);
  const std::vector<int32_t> targets = {2, kIgnore, 6};
  const auto dloss = to_double(random_floats(size_t(N), 3));
  EXPECT_REL_NEAR(ref_ce_backward(N, C, x, targets, dloss),
                  numeric_gradient([&](const std::vector<double>& v) { return dot(dloss, ref_ce_losses(N, C, v, targets)); }, x),
                  1e-8);
}

TEST(Softmax, ForwardAndBackwardMatchReference) {
  for (const Shape s : kShapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " C=" << s.C);
    const auto x = random_floats(size_t(s.N * s.C), 10 + uint64_t(s.C), -5.f, 5.f);
    const auto dy = random_floats(size_t(s.N * s.C), 11);
    auto y = poisoned(size_t(s.N * s.C)), dx = poisoned(size_t(s.N * s.C));
    cpu::softmax_forward(s.N, s.C, x.data(), y.data());
    cpu::softmax_backward(s.N, s.C, y.data(), dy.data(), dx.data());
    const auto ry = ref_softmax(s.N, s.C, to_double(x));
    std::vector<double> rdx(ry.size());
    for (int64_t i = 0; i < s.N; ++i) {
      double d = 0;
      for (int64_t c = 0; c < s.C; ++c) d += ry[size_t(i * s.C + c)] * dy[size_t(i * s.C + c)];
      for (int64_t c = 0; c < s.C; ++c) rdx[size_t(i * s.C + c)] = ry[size_t(i * s.C + c)] * (dy[size_t(i * s.C + c)] - d);
    }
    EXPECT_REL_NEAR(y, ry, 1e-5);
    EXPECT_REL_NEAR(dx, rdx, 1e-5);
  }
}

TEST(Softmax, LargeAndInfiniteLogits) {
  const int64_t C = 37;
  auto x = random_floats(size_t(C), 20, -80.f, 80.f);
  x[3] = -INFINITY;  // a masked position
  auto y = poisoned(size_t(C));
  cpu::softmax_forward(1, C, x.data(), y.data());
  const auto ry = ref_softmax(1, C, to_double(x));
  EXPECT_REL_NEAR(y, ry, 1e-5);
  EXPECT_EQ(y[3], 0.0f);
}

TEST(CrossEntropy, ForwardAndBackwardMatchReference) {
  const Shape shapes[] = {{1, 1}, {3, 3}, {4, 17}, {5, 127}, {3, 257}, {3, 50257}, {7, 3000}};
  for (const Shape s : shapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " V=" << s.C);
    // Logits up to ±80: exp(80) overflows fp32, so this fails without the max subtraction.
    const auto logits = random_floats(size_t(s.N * s.C), 30 + uint64_t(s.C), -80.f, 80.f);
    const auto targets = make_targets(s.N, s.C, 31);
    const auto dloss = random_floats(size_t(s.N), 32, 0.1f, 1.f);
    auto losses = poisoned(size_t(s.N)), lse = poisoned(size_t(s.N)), dlogits = poisoned(size_t(s.N * s.C));
    cpu::cross_entropy_forward(s.N, s.C, logits.data(), targets.data(), kIgnore, losses.data(), lse.data());
    cpu::cross_entropy_backward(s.N, s.C, logits.data(), targets.data(), kIgnore, lse.data(), dloss.data(),
                                dlogits.data());
    const auto dl = to_double(logits);
    std::vector<double> rlse(static_cast<size_t>(s.N));
    for (int64_t i = 0; i < s.N; ++i) rlse[size_t(i)] = ref_logsumexp(s.C, &dl[size_t(i * s.C)]);
    EXPECT_REL_NEAR(lse, rlse, 1e-6);
    // The loss is a difference of two values of size ~80, so fp32 leaves ~80 * 6e-8 of absolute error.
    const auto rlosses = ref_ce_losses(s.N, s.C, dl, targets);
    for (size_t i = 0; i < rlosses.size(); ++i) EXPECT_NEAR(losses[i], rlosses[i], 2e-5 * std::max(1.0, rlse[i]));
    EXPECT_REL_NEAR(dlogits, ref_ce_backward(s.N, s.C, dl, targets, to_double(dloss)), 1e-5);
    for (int64_t i = 0; i < s.N; ++i) {
      if (targets[size_t(i)] != kIgnore) continue;
      EXPECT_EQ(losses[size_t(i)], 0.0f);
      for (int64_t c = 0; c < s.C; ++c) ASSERT_EQ(dlogits[size_t(i * s.C + c)], 0.0f);
    }
  }
}

// The gradient may overwrite the logits.
TEST(CrossEntropy, BackwardInPlace) {
  const int64_t N = 9, V = 1031;
  auto logits = random_floats(size_t(N * V), 40, -10.f, 10.f);
  const auto targets = make_targets(N, V, 41);
  const auto dloss = random_floats(size_t(N), 42, 0.1f, 1.f);
  std::vector<float> losses(static_cast<size_t>(N)), lse(static_cast<size_t>(N));
  cpu::cross_entropy_forward(N, V, logits.data(), targets.data(), kIgnore, losses.data(), lse.data());
  auto separate = poisoned(size_t(N * V));
  cpu::cross_entropy_backward(N, V, logits.data(), targets.data(), kIgnore, lse.data(), dloss.data(), separate.data());
  cpu::cross_entropy_backward(N, V, logits.data(), targets.data(), kIgnore, lse.data(), dloss.data(), logits.data());
  EXPECT_TRUE(bit_identical(logits, separate));
}

TEST(CrossEntropy, SameBitsForAnyThreadCount) {
  const int64_t N = 16, V = 5003;
  const auto logits = random_floats(size_t(N * V), 50, -20.f, 20.f);
  const auto targets = make_targets(N, V, 51);
  auto run = [&](int threads) {
    ScopedThreads scope(threads);
    std::vector<float> losses(static_cast<size_t>(N)), lse(static_cast<size_t>(N));
    cpu::cross_entropy_forward(N, V, logits.data(), targets.data(), kIgnore, losses.data(), lse.data());
    losses.insert(losses.end(), lse.begin(), lse.end());
    return losses;
  };
  EXPECT_TRUE(bit_identical(run(1), run(2)));
}

}  // namespace
}  // namespace llm::testing
