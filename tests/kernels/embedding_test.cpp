// Embedding lookup and deterministic scatter-add backward.
#include <vector>

#include "kernels/cpu/fused.h"
#include "tests/common/testing.h"
#include "tests/kernels/kernel_test_util.h"

namespace llm::testing {
namespace {

struct Shape {
  int64_t N, C, V;
};
const Shape kShapes[] = {{1, 1, 1}, {3, 3, 2}, {17, 17, 5}, {127, 127, 300}, {257, 257, 40}, {1000, 768, 97}};

TEST(Embedding, ForwardCopiesRows) {
  for (const Shape s : kShapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " C=" << s.C << " V=" << s.V);
    const auto table = random_floats(size_t(s.V * s.C), 1);
    const auto ids = random_ints(size_t(s.N), 2, 0, int32_t(s.V));
    auto out = poisoned(size_t(s.N * s.C));
    cpu::embedding_forward(s.N, s.C, ids.data(), table.data(), out.data());
    std::vector<float> expected;
    for (int64_t i = 0; i < s.N; ++i)
      expected.insert(expected.end(), table.begin() + ids[size_t(i)] * s.C, table.begin() + (ids[size_t(i)] + 1) * s.C);
    EXPECT_TRUE(bit_identical(out, expected));
  }
}

TEST(Embedding, BackwardMatchesReference) {
  for (const Shape s : kShapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " C=" << s.C << " V=" << s.V);
    // Few distinct ids relative to N, so rows collect many contributions; some rows get none.
    const auto ids = random_ints(size_t(s.N), 3, 0, int32_t(s.V));
    const auto dout = random_floats(size_t(s.N * s.C), 4);
    auto dtable = poisoned(size_t(s.V * s.C));
    cpu::embedding_backward(s.N, s.C, s.V, ids.data(), dout.data(), dtable.data());
    std::vector<double> ref(static_cast<size_t>(s.V * s.C), 0.0);
    for (int64_t i = 0; i < s.N; ++i)
      for (int64_t c = 0; c < s.C; ++c) ref[size_t(ids[size_t(i)] * s.C + c)] += dout[size_t(i * s.C + c)];
    // Rows summing ~N/V terms of size 1 in fp32 order: relative error ~ (N/V) * 6e-8.
    EXPECT_REL_NEAR(dtable, ref, 1e-5);
  }
}

TEST(Embedding, BackwardBitIdenticalForAnyThreadCount) {
  const int64_t N = 4099, C = 333, V = 50;
  const auto ids = random_ints(size_t(N), 5, 0, int32_t(V));
  const auto dout = random_floats(size_t(N * C), 6);
  auto run = [&](int threads) {
    ScopedThreads scope(threads);
    std::vector<float> dtable(static_cast<size_t>(V * C));
    cpu::embedding_backward(N, C, V, ids.data(), dout.data(), dtable.data());
    return dtable;
  };
  const auto one = run(1);
  EXPECT_TRUE(bit_identical(one, run(2)));
  EXPECT_TRUE(bit_identical(one, run(3)));  // more threads than cores still partitions the same way
}

}  // namespace
}  // namespace llm::testing
