// RoPE kernel against a double reference for both layouts; inverse, in-place and layout equivalence.
#include <cmath>
#include <vector>

#include "kernels/cpu/fused.h"
#include "tests/common/testing.h"
#include "tests/kernels/kernel_test_util.h"

namespace llm::testing {
namespace {

using cpu::RopeLayout;

// freq: pair i's frequency; theta^(-2i/D) when empty.
std::vector<double> ref_rope(int64_t N, int64_t H, int64_t D, const std::vector<float>& x,
                             const std::vector<int32_t>& pos, double theta, RopeLayout layout, bool inverse,
                             const std::vector<double>& freq = {}) {
  std::vector<double> y(x.size());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < D / 2; ++i) {
        const double f = freq.empty() ? std::pow(theta, -2.0 * double(i) / double(D)) : freq[size_t(i)];
        const double angle = (inverse ? -1.0 : 1.0) * pos[size_t(n)] * f;
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

// Llama 3.2's rope_scaling (theta 500000, llama3: factor 32, low_freq_factor 1, high_freq_factor 4,
// original_max_position_embeddings 8192) at D = 64. The frequencies were computed by a numpy
// transcription of Hugging Face's own rule (transformers' _compute_llama3_parameters, in float64):
// pairs 0-14 keep theta^(-2i/D), 15-17 are blended, 18 on are divided by the factor.
const RopeFrequencies kLlama32{500000.f, {RopeScalingType::kLlama3, 32.f, 1.f, 4.f, 8192.f}};
const std::vector<double> kLlama32Freq = {
    1.0, 0.6636012376960885, 0.44036660267178046, 0.2922278225730151, 0.19392274474868576,
    0.12868737343265052, 0.08539710028576561, 0.056669621445291044, 0.03760603093086393,
    0.024955408670558694, 0.016560440080994446, 0.010989528534539826, 0.0072926647372171085,
    0.004839421345719893, 0.0032114459947525913, 0.001290547928209264, 0.00042955679655936815,
    9.70828780262767e-05, 1.9461638184831125e-05, 1.291476718704739e-05, 8.570255489881478e-06,
    5.687232150457046e-06, 3.7740542941082826e-06, 2.5044671007024935e-06, 1.661967467795309e-06,
    1.102883668639601e-06, 7.318749675440419e-07, 4.856731343010108e-07, 3.2229329303788936e-07,
    2.138742281610915e-07, 1.4192720251899592e-07, 9.418306725434909e-08};

TEST(Rope, Llama3ScalingMatchesHuggingFacesRule) {
  for (int64_t i = 0; i < 32; ++i)
    EXPECT_NEAR(rope_frequency(kLlama32, i, 64) / kLlama32Freq[size_t(i)], 1.0, 1e-12) << "pair " << i;
  // Linear scaling (position interpolation) divides every frequency.
  const RopeFrequencies linear{10000.f, {RopeScalingType::kLinear, 4.f}};
  for (int64_t i = 0; i < 8; ++i)
    EXPECT_NEAR(rope_frequency(linear, i, 16), std::pow(10000.0, -2.0 * double(i) / 16.0) / 4.0, 1e-15);
  // The kernel rotates by them, both layouts, forward and inverse.
  const int64_t N = 9, H = 3, D = 64;
  const auto x = random_floats(size_t(N * H * D), 5);
  const auto pos = random_ints(size_t(N), 6, 0, 131072);
  for (RopeLayout layout : {RopeLayout::kHalf, RopeLayout::kInterleaved})
    for (bool inverse : {false, true}) {
      auto y = poisoned(x.size());
      cpu::rope(N, H, D, x.data(), pos.data(), kLlama32, layout, inverse, y.data());
      EXPECT_REL_NEAR(y, ref_rope(N, H, D, x, pos, 0.0, layout, inverse, kLlama32Freq), 1e-5);
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
