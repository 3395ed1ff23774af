// RoPE kernel against a double reference for both layouts; inverse, in-place and layout equivalence.
#include <cmath>
#include <vector>

#include "kernels/cpu/fused.h"
#include "tests/common/testing.h"
#include "tests/kernels/kernel_test_util.h"

namespace llm::testing {
namespace {

using cpu::RopeLayout;

std::vector<double> ref_rope(int64_t N, int64_t H, int64_t D, const std::vector<float>& x,
                             const std::vector<int32_t>& pos, double theta, RopeLayout layout, bool inverse) {
  std::vector<double> y(x.size());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < D / 2; ++i) {
        const double angle = (inverse ? -1.0 : 1.0) * pos[size_t(n)] * std::pow(theta, -2.0 * double(i) / double(D));
        const int64_t base = (n * H + h) * D;
        const int64_t ia = layout == RopeLayout::kHalf ? base + i : base + 2 * i;
        const int64_t ib = layout == RopeLayout::kHalf ? base + i + D / 2 : base + 2 * i + 1;
        const double a = x[size_t(ia)], b = x[size_t(ib)];
        y[size_t(ia)] = a * std::cos(angle) - b * std::sin(angle);
        y[size_t(ib)] = a * std::sin(angle) + b * std::cos(angle);
      }
  return y;
}

struct Shape {
  int64_t N, H, D;
};
const Shape kShapes[] = {{1, 1, 2}, {3, 1, 6}, {5, 3, 34}, {17, 2, 64}, {7, 5, 128}, {129, 12, 64}};

TEST(Rope, MatchesReferenceBothLayouts) {
  for (const Shape s : kShapes) {
    for (RopeLayout layout : {RopeLayout::kHalf, RopeLayout::kInterleaved}) {
      for (bool inverse : {false, true}) {
        SCOPED_TRACE(::testing::Message() << "N=" << s.N << " H=" << s.H << " D=" << s.D << " layout="
                                          << int(layout) << " inverse=" << inverse);
        const auto x = random_floats(size_t(s.N * s.H * s.D), 1 + uint64_t(s.D));
        // Positions up to 32k: the angle must be formed in double to keep fp32 accuracy.
        const auto pos = random_ints(size_t(s.N), 2, 0, 32768);
        auto y = poisoned(x.size());
        cpu::rope(s.N, s.H, s.D, x.data(), pos.data(), 10000.f, layout, inverse, y.data());
        EXPECT_REL_NEAR(y, ref_rope(s.N, s.H, s.D, x, pos, 10000.0, layout, inverse), 1e-5);
      }
    }
  }
}

TEST(Rope, InverseUndoesForwardInPlace) {
  const int64_t N = 33, H = 4, D = 96;
  const auto x = random_floats(size_t(N * H * D), 3);
  const auto pos = random_ints(size_t(N), 4, 0, 32768);
  for (RopeLayout layout : {RopeLayout::kHalf, RopeLayout::kInterleaved}) {
    auto separate = poisoned(x.size());
    cpu::rope(N, H, D, x.data(), pos.data(), 500000.f, layout, false, separate.data());
    auto work = x;
    cpu::rope(N, H, D, work.data(), pos.data(), 500000.f, layout, false, work.data());  // out == x
    EXPECT_TRUE(bit_identical(work, separate));
    cpu::rope(N, H, D, work.data(), pos.data(), 500000.f, layout, true, work.data());
    EXPECT_REL_NEAR(work, x, 1e-6);
  }
}

// The two layouts are the same rotation with the dimensions permuted: half-layout dimension i is
// interleaved dimension 2i, and i + D/2 is 2i + 1.
TEST(Rope, LayoutsAgreeUpToPermutation) {
  const int64_t N = 11, H = 3, D = 40;
  const auto x_half = random_floats(size_t(N * H * D), 5);
  const auto pos = random_ints(size_t(N), 6, 0, 4096);
  std::vector<float> x_inter(x_half.size());
  for (int64_t r = 0; r < N * H; ++r)
    for (int64_t i = 0; i < D / 2; ++i) {
      x_inter[size_t(r * D + 2 * i)] = x_half[size_t(r * D + i)];
      x_inter[size_t(r * D + 2 * i + 1)] = x_half[size_t(r * D + i + D / 2)];
    }
  auto y_half = poisoned(x_half.size()), y_inter = poisoned(x_half.size());
  cpu::rope(N, H, D, x_half.data(), pos.data(), 10000.f, RopeLayout::kHalf, false, y_half.data());
  cpu::rope(N, H, D, x_inter.data(), pos.data(), 10000.f, RopeLayout::kInterleaved, false, y_inter.data());
  std::vector<float> y_inter_as_half(x_half.size());
  for (int64_t r = 0; r < N * H; ++r)
    for (int64_t i = 0; i < D / 2; ++i) {
      y_inter_as_half[size_t(r * D + i)] = y_inter[size_t(r * D + 2 * i)];
      y_inter_as_half[size_t(r * D + i + D / 2)] = y_inter[size_t(r * D + 2 * i + 1)];
    }
  EXPECT_REL_NEAR(y_inter_as_half, y_half, 1e-6);
}

// Backward is the inverse rotation: <dy, R x> = <R^T dy, x> for the kernel's own outputs.
TEST(Rope, InverseIsTheAdjoint) {
  const int64_t N = 5, H = 2, D = 16;
  const auto x = random_floats(size_t(N * H * D), 7);
  const auto dy = random_floats(size_t(N * H * D), 8);
  const auto pos = random_ints(size_t(N), 9, 0, 1000);
  std::vector<float> y(x.size()), dx(x.size());
  cpu::rope(N, H, D, x.data(), pos.data(), 10000.f, RopeLayout::kHalf, false, y.data());
  cpu::rope(N, H, D, dy.data(), pos.data(), 10000.f, RopeLayout::kHalf, true, dx.data());
  double lhs = 0, rhs = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    lhs += double(dy[i]) * y[i];
    rhs += double(dx[i]) * x[i];
  }
  EXPECT_NEAR(lhs, rhs, 1e-5 * std::fabs(lhs) + 1e-6);
}

}  // namespace
}  // namespace llm::testing
