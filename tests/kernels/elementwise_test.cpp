// Elementwise maps, row broadcasts, deterministic reductions and dropout.
#include <cmath>
#include <vector>

#include "kernels/cpu/elementwise.h"
#include "tests/common/testing.h"
#include "tests/kernels/kernel_test_util.h"

namespace llm::testing {
namespace {

const int64_t kSizes[] = {1, 3, 17, 127, 257, 4095, 4097, 100003};

TEST(Elementwise, MapsMatchReference) {
  for (int64_t n : kSizes) {
    SCOPED_TRACE(::testing::Message() << "n=" << n);
    const auto a = random_floats(size_t(n), 1), b = random_floats(size_t(n), 2);
    const float alpha = 0.37f;
    std::vector<double> rsum(static_cast<size_t>(n)), rprod(static_cast<size_t>(n)), rscaled(static_cast<size_t>(n)), raxpy(static_cast<size_t>(n));
    for (size_t i = 0; i < size_t(n); ++i) {
      rsum[i] = double(a[i]) + b[i];
      rprod[i] = double(a[i]) * b[i];
      rscaled[i] = double(alpha) * a[i];
      raxpy[i] = double(b[i]) + double(alpha) * a[i];
    }
    auto y = poisoned(size_t(n));
    cpu::add(n, a.data(), b.data(), y.data());
    EXPECT_REL_NEAR(y, rsum, 1e-7);
    y = poisoned(size_t(n));
    cpu::mul(n, a.data(), b.data(), y.data());
    EXPECT_REL_NEAR(y, rprod, 1e-7);
    y = poisoned(size_t(n));
    cpu::scale(n, a.data(), alpha, y.data());
    EXPECT_REL_NEAR(y, rscaled, 1e-7);
    y = b;
    cpu::axpy(n, alpha, a.data(), y.data());
    EXPECT_REL_NEAR(y, raxpy, 1e-7);
    y = poisoned(size_t(n));
    cpu::fill(n, -2.5f, y.data());
    EXPECT_REL_NEAR(y, std::vector<double>(size_t(n), -2.5), 0.0);
  }
}

TEST(Elementwise, RowBroadcastsMatchReference) {
  const int64_t shapes[][2] = {{1, 1}, {3, 17}, {17, 3}, {5, 127}, {300, 257}};
  for (const auto& s : shapes) {
    const int64_t N = s[0], C = s[1];
    SCOPED_TRACE(::testing::Message() << "N=" << N << " C=" << C);
    const auto x = random_floats(size_t(N * C), 3), row = random_floats(size_t(C), 4);
    std::vector<double> rsum(x.size()), rprod(x.size());
    for (int64_t i = 0; i < N; ++i)
      for (int64_t c = 0; c < C; ++c) {
        rsum[size_t(i * C + c)] = double(x[size_t(i * C + c)]) + row[size_t(c)];
        rprod[size_t(i * C + c)] = double(x[size_t(i * C + c)]) * row[size_t(c)];
      }
    auto y = poisoned(x.size());
    cpu::add_rows(N, C, x.data(), row.data(), y.data());
    EXPECT_REL_NEAR(y, rsum, 1e-7);
    y = poisoned(x.size());
    cpu::mul_rows(N, C, x.data(), row.data(), y.data());
    EXPECT_REL_NEAR(y, rprod, 1e-7);
  }
}

TEST(Elementwise, SumRowsMatchesReferenceAndIsThreadIndependent) {
  const int64_t shapes[][2] = {{1, 1}, {3, 17}, {257, 3}, {127, 127}, {1000, 300}, {64, 1000}};
  for (const auto& s : shapes) {
    const int64_t N = s[0], C = s[1];
    SCOPED_TRACE(::testing::Message() << "N=" << N << " C=" << C);
    const auto x = random_floats(size_t(N * C), 5);
    std::vector<double> ref(static_cast<size_t>(C), 0.0);
    for (int64_t i = 0; i < N; ++i)
      for (int64_t c = 0; c < C; ++c) ref[size_t(c)] += x[size_t(i * C + c)];
    auto run = [&](int threads) {
      ScopedThreads scope(threads);
      auto y = poisoned(size_t(C));
      cpu::sum_rows(N, C, x.data(), y.data());
      return y;
    };
    const auto two = run(2);
    EXPECT_REL_NEAR(two, ref, 1e-6);
    EXPECT_TRUE(bit_identical(run(1), two));
  }
}

TEST(Elementwise, SumAndSumSquaresAreExactAndThreadIndependent) {
  for (int64_t n : kSizes) {
    SCOPED_TRACE(::testing::Message() << "n=" << n);
    const auto x = random_floats(size_t(n), 6, -3.f, 5.f);
    double rs = 0, rss = 0;  // long double would be closer still; double over ~1e5 terms is ~1e-12
    for (float v : x) {
      rs += v;
      rss += double(v) * v;
    }
    double s1, ss1, s2, ss2;
    {
      ScopedThreads scope(1);
      s1 = cpu::sum(n, x.data());
      ss1 = cpu::sum_squares(n, x.data());
    }
    {
      ScopedThreads scope(2);
      s2 = cpu::sum(n, x.data());
      ss2 = cpu::sum_squares(n, x.data());
    }
    EXPECT_NEAR(s2, rs, 1e-10 * (std::fabs(rs) + double(n)));
    EXPECT_NEAR(ss2, rss, 1e-10 * rss);
    EXPECT_EQ(s1, s2);  // bit-identical for any thread count
    EXPECT_EQ(ss1, ss2);
  }
}

TEST(Dropout, KeepsAboutOneMinusPAndScales) {
  const int64_t n = 200003;
  const auto x = random_floats(size_t(n), 7, 0.5f, 1.5f);  // never zero, so zeros in y mean dropped
  for (float p : {0.1f, 0.5f, 0.9f}) {
    SCOPED_TRACE(::testing::Message() << "p=" << p);
    auto y = poisoned(size_t(n));
    cpu::dropout_forward(n, x.data(), p, 1234, y.data());
    int64_t kept = 0;
    double worst = 0;
    for (size_t i = 0; i < size_t(n); ++i) {
      if (y[i] == 0.0f) continue;
      ++kept;
      worst = std::max(worst, std::fabs(double(y[i]) - double(x[i]) / (1.0 - p)) / (double(x[i]) / (1.0 - p)));
    }
    // Kept count is binomial(n, 1-p): 6 standard deviations of slack.
    const double expected = double(n) * (1 - p), sd = std::sqrt(double(n) * p * (1 - p));
    EXPECT_NEAR(double(kept), expected, 6 * sd);
    EXPECT_LT(worst, 3e-7);
  }
}

TEST(Dropout, EdgeProbabilities) {
  const int64_t n = 1001;
  const auto x = random_floats(size_t(n), 8);
  auto y = poisoned(size_t(n));
  cpu::dropout_forward(n, x.data(), 0.0f, 5, y.data());
  EXPECT_TRUE(bit_identical(y, x));  // p = 0 is the identity
  y = poisoned(size_t(n));
  cpu::dropout_forward(n, x.data(), 1.0f, 5, y.data());
  for (float v : y) ASSERT_EQ(v, 0.0f);  // p = 1 drops everything, no 0 * inf
}

TEST(Dropout, MaskDependsOnSeedAndIndexOnly) {
  const int64_t n = 100003;
  const auto x = random_floats(size_t(n), 9, 0.5f, 1.5f);
  const auto dy = random_floats(size_t(n), 10, 0.5f, 1.5f);
  auto run = [&](int threads, uint64_t seed) {
    ScopedThreads scope(threads);
    std::vector<float> y(static_cast<size_t>(n));
    cpu::dropout_forward(n, x.data(), 0.3f, seed, y.data());
    return y;
  };
  const auto one = run(1, 42);
  EXPECT_TRUE(bit_identical(one, run(2, 42)));
  // A prefix sees the same mask as the full array: the mask is a function of the index alone.
  std::vector<float> prefix(100);
  cpu::dropout_forward(100, x.data(), 0.3f, 42, prefix.data());
  EXPECT_TRUE(bit_identical(prefix, std::vector<float>(one.begin(), one.begin() + 100)));
  // A different seed gives a different mask (about 42% of positions differ for p = 0.3).
  const auto other = run(2, 43);
  int64_t differ = 0;
  for (size_t i = 0; i < size_t(n); ++i) differ += (one[i] == 0.0f) != (other[i] == 0.0f);
  EXPECT_GT(differ, n / 3);
  // Backward drops exactly the same positions and applies the same scale.
  std::vector<float> dx(static_cast<size_t>(n));
  cpu::dropout_backward(n, dy.data(), 0.3f, 42, dx.data());
  for (size_t i = 0; i < size_t(n); ++i) {
    ASSERT_EQ(dx[i] == 0.0f, one[i] == 0.0f) << i;
    if (one[i] != 0.0f) {
      ASSERT_NEAR(dx[i] / dy[i], one[i] / x[i], 1e-6);
    }
  }
}

}  // namespace
}  // namespace llm::testing
