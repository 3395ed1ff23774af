// The GPU KV-cache attention and cache write against the CPU kernel (cpu::attention_cached_forward) on
// the same inputs (bf16-rounded for the bf16 kernel), both variants (kSimple: one warp per query head;
// kFast: the split kernel, which takes caches longer than 128 slots): decode steps (Tq = 1) and
// prefill chunks, rows with different past lengths (empty, partly and completely full caches,
// padding queries past the capacity), grouped-query heads, sliding windows (across and inside the
// 128-slot chunks, leaving chunks empty), and head dimensions from 1 to 256.
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cuda/attention_cached.h"
#include "kernels/cuda/fused.h"
#include "tests/cuda/compare.h"
#include "tests/cuda/cuda_testing.h"

namespace llm {
namespace {

using cuda::bf16;
using cuda::FusedVariant;
using testing::DeviceBuffer;

struct Case {
  int64_t B, Tq, S, Hq, Hkv, D, window;
  std::vector<int32_t> past;  // per row; past + Tq may exceed S (padding queries see slots 0 .. S-1)
};

const Case kCases[] = {
    {3, 1, 257, 8, 2, 64, 0, {0, 100, 256}},       // decode, GQA 4:1, a row whose last slot is the query's own
    {2, 17, 127, 4, 4, 128, 0, {0, 110}},          // prefill chunk, no GQA
    {3, 3, 40, 6, 3, 3, 0, {5, 37, 39}},           // odd D; row 2's last queries lie past the capacity
    {2, 5, 64, 4, 1, 32, 7, {10, 50}},             // sliding window, multi-query
    {1, 2, 33, 2, 1, 256, 16, {31}},               // the largest head, window wider than part of the rows
    {1, 1, 5, 1, 1, 1, 0, {4}},                    // D = 1
    {4, 1, 300, 12, 4, 80, 100, {299, 0, 150, 7}}, // D not a multiple of 32, window shorter than the past
    {2, 3, 400, 4, 2, 64, 150, {250, 396}},        // windows across chunk boundaries, empty first chunks
    {1, 1, 1000, 2, 2, 128, 0, {999}},             // a long decode: 8 chunks
};

std::string describe(const char* dtype, const Case& c) {
  std::ostringstream os;
  os << cuda::to_string(cuda::fused_variant()) << " " << dtype << " attention_cached B=" << c.B << " Tq=" << c.Tq
     << " S=" << c.S << " Hq=" << c.Hq << " Hkv=" << c.Hkv
     << " D=" << c.D << " window=" << c.window << " past={";
  for (size_t i = 0; i < c.past.size(); ++i) os << (i ? "," : "") << c.past[i];
  os << "} (out index = ((b*Tq + t)*Hq + h)*D + d)";
  return os.str();
}

struct Inputs {
  std::vector<float> q, k, v;
};

Inputs make_inputs(const Case& c, uint64_t seed, bool bf16_values) {
  Inputs in{testing::random_floats(size_t(c.B * c.Tq * c.Hq * c.D), seed),
            testing::random_floats(size_t(c.B * c.S * c.Hkv * c.D), seed + 1),
            testing::random_floats(size_t(c.B * c.S * c.Hkv * c.D), seed + 2)};
  if (bf16_values) {
    in.q = testing::round_bf16(in.q);
    in.k = testing::round_bf16(in.k);
    in.v = testing::round_bf16(in.v);
  }
  return in;
}

std::vector<float> cpu_reference(const Case& c, const Inputs& in, float scale) {
  std::vector<float> out(in.q.size());
  cpu::attention_cached_forward(c.B, c.Tq, c.S, c.Hq, c.Hkv, c.D, in.q.data(), in.k.data(), in.v.data(), c.past.data(),
                                scale, out.data(), c.window);
  return out;
}

class CudaAttentionCached : public ::testing::TestWithParam<FusedVariant> {
 protected:
  void SetUp() override { cuda::set_fused_variant(GetParam()); }
  void TearDown() override { cuda::set_fused_variant(FusedVariant::kFast); }
};

TEST_P(CudaAttentionCached, F32MatchesCpu) {
  LLM_SKIP_WITHOUT_GPU();
  uint64_t seed = 10;
  for (const Case& c : kCases) {
    const Inputs in = make_inputs(c, seed += 3, false);
    const float scale = 1.f / std::sqrt(float(c.D));
    DeviceBuffer<float> q(in.q), k(in.k), v(in.v), out(in.q.size());
    DeviceBuffer<int32_t> past(c.past);
    out.poison();
    cuda::attention_cached_forward<float>(c.B, c.Tq, c.S, c.Hq, c.Hkv, c.D, q.get(), k.get(), v.get(), past.get(), scale,
                                          out.get(), c.window, nullptr);
    EXPECT_TRUE(testing::close_to(describe("f32", c), out.download(), cpu_reference(c, in, scale), 1e-5));
  }
}

TEST_P(CudaAttentionCached, Bf16MatchesCpu) {
  LLM_SKIP_WITHOUT_GPU();
  uint64_t seed = 50;
  for (const Case& c : kCases) {
    const Inputs in = make_inputs(c, seed += 3, true);
    const float scale = 1.f / std::sqrt(float(c.D));
    DeviceBuffer<bf16> q(testing::to_bf16(in.q)), k(testing::to_bf16(in.k)), v(testing::to_bf16(in.v)), out(in.q.size());
    DeviceBuffer<int32_t> past(c.past);
    out.poison();
    cuda::attention_cached_forward<bf16>(c.B, c.Tq, c.S, c.Hq, c.Hkv, c.D, q.get(), k.get(), v.get(), past.get(), scale,
                                         out.get(), c.window, nullptr);
    EXPECT_TRUE(testing::close_to(describe("bf16", c), testing::to_float(out.download()), cpu_reference(c, in, scale), 1e-2));
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, CudaAttentionCached, ::testing::Values(FusedVariant::kFast, FusedVariant::kSimple),
                         [](const ::testing::TestParamInfo<FusedVariant>& variant) {
                           return std::string(cuda::to_string(variant.param));
                         });

// Rows with different past lengths and new-token counts (0 included): exactly the new slots change.
TEST(CudaKVCacheWrite, FillsOnlyTheNewSlots) {
  LLM_SKIP_WITHOUT_GPU();
  const int64_t B = 4, T = 5, S = 19, row = 3 * 17;
  const std::vector<int32_t> past{0, 7, 14, 19}, n_new{5, 2, 5, 0};
  const std::vector<float> x = testing::random_floats(size_t(B * T * row), 3);
  const std::vector<float> before = testing::random_floats(size_t(B * S * row), 4);
  std::vector<float> want = before;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < n_new[b]; ++t)
      for (int64_t i = 0; i < row; ++i) want[size_t((b * S + past[b] + t) * row + i)] = x[size_t((b * T + t) * row + i)];
  DeviceBuffer<int32_t> past_d(past), n_new_d(n_new);
  DeviceBuffer<float> x_d(x), cache(before);
  cuda::kv_cache_write<float>(B, T, S, row, x_d.get(), past_d.get(), n_new_d.get(), cache.get(), nullptr);
  EXPECT_TRUE(testing::close_to("f32 kv_cache_write B=4 T=5 S=19 row=51 (index = (b*S + slot)*row + i)", cache.download(),
                                want, 0.0));
  DeviceBuffer<bf16> xb(testing::to_bf16(x)), cache_b(testing::to_bf16(before));
  cuda::kv_cache_write<bf16>(B, T, S, row, xb.get(), past_d.get(), n_new_d.get(), cache_b.get(), nullptr);
  EXPECT_TRUE(testing::close_to("bf16 kv_cache_write B=4 T=5 S=19 row=51 (index = (b*S + slot)*row + i)",
                                testing::to_float(cache_b.download()), testing::round_bf16(want), 0.0));
}

TEST(CudaAttentionCachedArguments, BadArgumentsNameTheKernel) {
  // Checked before any launch, so this runs without a GPU too.
  const auto message = [](auto&& call) -> std::string {
    try {
      call();
    } catch (const std::runtime_error& e) {
      return e.what();
    }
    return "no error";
  };
  const std::string d = message([] {
    cuda::attention_cached_forward<float>(1, 1, 4, 2, 1, 257, nullptr, nullptr, nullptr, nullptr, 1.f, nullptr, 0, nullptr);
  });
  EXPECT_NE(d.find("cuda::attention_cached_forward"), std::string::npos) << d;
  const std::string h = message([] {
    cuda::attention_cached_forward<float>(1, 1, 4, 3, 2, 64, nullptr, nullptr, nullptr, nullptr, 1.f, nullptr, 0, nullptr);
  });
  EXPECT_NE(h.find("multiple of the kv heads"), std::string::npos) << h;
}

}  // namespace
}  // namespace llm
