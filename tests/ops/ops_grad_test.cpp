// Every op's gradient against finite differences, through the autograd engine, on awkward sizes.
#include "engine/ops/ops.h"
#include "tests/common/gradcheck.h"
#include "tests/common/testing.h"

namespace llm {
namespace {

using testing::gradcheck;
using testing::param;
using V = std::vector<Tensor>;

Tensor ids(const std::vector<int32_t>& v, const Shape& s) { return Tensor::from_vector(v, s); }

TEST(OpsGrad, Elementwise) {
  gradcheck([](const V& in) { return in[0] + in[1]; }, {param(Shape{3, 5}, 1), param(Shape{3, 5}, 2)});
  gradcheck([](const V& in) { return in[0] + in[1]; }, {param(Shape{2, 3, 5}, 3), param(Shape{5}, 4)});      // bias row
  gradcheck([](const V& in) { return in[0] - in[1]; }, {param(Shape{2, 3, 5}, 5), param(Shape{3, 5}, 6)});   // suffix
  gradcheck([](const V& in) { return in[1] - in[0]; }, {param(Shape{2, 3, 5}, 5), param(Shape{1}, 6)});      // scalar first
  gradcheck([](const V& in) { return in[0] * in[1]; }, {param(Shape{4, 7}, 7), param(Shape{4, 7}, 8)});
  gradcheck([](const V& in) { return in[0] * in[1]; }, {param(Shape{7}, 9), param(Shape{4, 7}, 10)});        // swapped
  gradcheck([](const V& in) { return ops::scale(in[0], -2.5f); }, {param(Shape{17}, 11)});
  gradcheck([](const V& in) { return ops::sum(in[0]); }, {param(Shape{3, 17}, 12)});
  gradcheck([](const V& in) { return ops::mean(in[0]); }, {param(Shape{3, 17}, 13)});
  gradcheck([](const V& in) { return ops::dropout(in[0], 0.3f, 99); }, {param(Shape{5, 17}, 14)});
}

TEST(OpsGrad, Shapes) {
  gradcheck([](const V& in) { return in[0].transpose(0, 2).reshape(Shape{-1, 6}); }, {param(Shape{2, 3, 4}, 1)});
  gradcheck([](const V& in) { return in[0].permute({1, 2, 0}).contiguous(); }, {param(Shape{2, 3, 4}, 2)});
  gradcheck([](const V& in) { return in[0].slice(1, 1, 3).select(0, 1); }, {param(Shape{2, 4, 3}, 3)});
  gradcheck([](const V& in) { return ops::cat({in[0], in[1]}, 1); }, {param(Shape{2, 3}, 4), param(Shape{2, 5}, 5)});
  gradcheck([](const V& in) { return in[0].unsqueeze(1).squeeze(1).clone(); }, {param(Shape{3, 2}, 6)});
  gradcheck([](const V& in) {  // pieces used unevenly, one not at all
    auto p = ops::split(in[0], -1, {2, 3, 1});
    return ops::cat({ops::scale(p[0], 2.f), p[2]}, -1);
  }, {param(Shape{2, 6}, 7)});
}

TEST(OpsGrad, Matmul) {
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      const Shape a = ta ? Shape{5, 3} : Shape{3, 5}, b = tb ? Shape{4, 5} : Shape{5, 4};
      gradcheck([=](const V& in) { return ops::matmul(in[0], in[1], ta, tb); }, {param(a, 1), param(b, 2)});
      const Shape ab = ta ? Shape{2, 5, 3} : Shape{2, 3, 5}, bb = tb ? Shape{2, 4, 5} : Shape{2, 5, 4};
      gradcheck([=](const V& in) { return ops::matmul(in[0], in[1], ta, tb); }, {param(ab, 3), param(bb, 4)});
    }
  for (bool tb : {false, true})  // one b shared by the whole batch
    gradcheck([=](const V& in) { return ops::matmul(in[0], in[1], false, tb); },
              {param(Shape{2, 3, 5}, 5), param(tb ? Shape{4, 5} : Shape{5, 4}, 6)});
  gradcheck([](const V& in) { return ops::linear(in[0], in[1], in[2]); },
            {param(Shape{2, 3, 7}, 7), param(Shape{5, 7}, 8), param(Shape{5}, 9)});
  gradcheck([](const V& in) { return ops::linear(in[0], in[1]); }, {param(Shape{3, 7}, 10), param(Shape{1, 7}, 11)});
  gradcheck([](const V& in) { return ops::linear_gelu(in[0], in[1], in[2]); },
            {param(Shape{2, 3, 7}, 12), param(Shape{5, 7}, 13), param(Shape{5}, 14)});
  gradcheck([](const V& in) { return ops::linear_residual(in[0], in[1], in[2], in[3]); },
            {param(Shape{2, 3, 7}, 15), param(Shape{5, 7}, 16), param(Shape{5}, 17), param(Shape{2, 3, 5}, 18)});
  gradcheck([](const V& in) { return ops::linear_residual(in[0], in[1], Tensor(), in[2]); },
            {param(Shape{3, 7}, 19), param(Shape{5, 7}, 20), param(Shape{3, 5}, 21)});
}

TEST(OpsGrad, FusedLinearsEqualTheirParts) {
  const Tensor x = param(Shape{2, 3, 7}, 22), w = param(Shape{5, 7}, 23), b = param(Shape{5}, 24),
               r = param(Shape{2, 3, 5}, 25);
  const auto expect_equal = [](const Tensor& got, const Tensor& want, const char* what) {
    const auto g = got.to_vector<float>(), e = want.to_vector<float>();
    ASSERT_EQ(g.size(), e.size()) << what;
    for (size_t i = 0; i < g.size(); ++i) EXPECT_NEAR(g[i], e[i], 1e-6) << what << " element " << i;
  };
  expect_equal(ops::linear_gelu(x, w, b), ops::gelu(ops::linear(x, w, b)), "linear_gelu");
  expect_equal(ops::linear_residual(x, w, b, r), r + ops::linear(x, w, b), "linear_residual");
  EXPECT_NE(testing::error_of([&] { ops::linear_residual(x, w, b, param(Shape{2, 3, 4}, 26)); }).find("residual"),
            std::string::npos);
}

TEST(OpsGrad, Activations) {
  gradcheck([](const V& in) { return ops::gelu(in[0]); }, {param(Shape{3, 17}, 1, -3.f, 3.f)});
  gradcheck([](const V& in) { return ops::silu(in[0]); }, {param(Shape{3, 17}, 2, -3.f, 3.f)});
  gradcheck([](const V& in) { return ops::swiglu(in[0], in[1]); }, {param(Shape{3, 17}, 3, -3.f, 3.f), param(Shape{3, 17}, 4)});
  gradcheck([](const V& in) { return ops::softmax(in[0]); }, {param(Shape{4, 17}, 5, -2.f, 2.f)});
}

TEST(OpsGrad, Norms) {
  gradcheck([](const V& in) { return ops::layer_norm(in[0], in[1], in[2]); },
            {param(Shape{2, 3, 17}, 1), param(Shape{17}, 2), param(Shape{17}, 3)});
  gradcheck([](const V& in) { return ops::rms_norm(in[0], in[1]); }, {param(Shape{2, 3, 17}, 4), param(Shape{17}, 5)});
}

TEST(OpsGrad, EmbeddingRopeCrossEntropy) {
  const Tensor token_ids = ids({3, 0, 3, 6, 1, 3}, Shape{2, 3});
  gradcheck([&](const V& in) { return ops::embedding(token_ids, in[0]); }, {param(Shape{7, 5}, 1)});
  const Tensor pos = ids({0, 5, 17}, Shape{3});
  for (auto layout : {cpu::RopeLayout::kHalf, cpu::RopeLayout::kInterleaved})
    gradcheck([&](const V& in) { return ops::rope(in[0], pos, 10000.f, layout); }, {param(Shape{2, 3, 2, 8}, 2)});
  const Tensor targets = ids({4, -100, 0, 2}, Shape{2, 2});
  gradcheck([&](const V& in) { return ops::cross_entropy(in[0], targets); }, {param(Shape{2, 2, 5}, 3, -2.f, 2.f)});
  gradcheck([&](const V& in) { return ops::token_logprobs(in[0], targets); }, {param(Shape{2, 2, 5}, 4, -2.f, 2.f)});
}

TEST(OpsGrad, Attention) {
  // GQA (4 query heads on 2 kv heads), with and without packed documents.
  const Tensor doc = ids({0, 0, 1, 1, 1, 2, 7, 7, 7, 7, 7, 7}, Shape{2, 6});
  for (bool packed : {false, true})
    gradcheck([&](const V& in) { return ops::attention(in[0], in[1], in[2], packed ? doc : Tensor()); },
              {param(Shape{2, 6, 4, 3}, 1), param(Shape{2, 6, 2, 3}, 2), param(Shape{2, 6, 2, 3}, 3)});
  for (bool packed : {false, true})
    gradcheck([&](const V& in) { return ops::attention_qkv(in[0], 2, packed ? doc : Tensor()); },
              {param(Shape{2, 6, 3 * 2 * 3}, 4)});
}

TEST(OpsGrad, FusedQkvAttentionEqualsAttentionOnItsThirds) {
  const Tensor doc = ids({0, 0, 1, 1, 1, 2, 7, 7, 7, 7, 7, 7}, Shape{2, 6});
  const int64_t H = 3, D = 4, C = H * D;
  Tensor qkv = param(Shape{2, 6, 3 * C}, 5), same = qkv.detach().clone().set_requires_grad();
  const Tensor fused = ops::attention_qkv(qkv, H, doc);
  const std::vector<Tensor> parts = ops::split(same, -1, {C, C, C});
  const Shape heads{2, 6, H, D};
  const Tensor split = ops::attention(parts[0].view(heads), parts[1].view(heads), parts[2].view(heads), doc);
  const Tensor r = param(Shape{2, 6, H, D}, 6).detach();
  ops::sum(fused * r).backward();
  ops::sum(split * r).backward();
  // The same kernels on the same numbers: equal to the last bit, values and gradients.
  EXPECT_EQ(fused.to_vector<float>(), split.to_vector<float>());
  EXPECT_EQ(qkv.grad().to_vector<float>(), same.grad().to_vector<float>());
  EXPECT_NE(testing::error_of([&] { ops::attention_qkv(param(Shape{2, 6, 10}, 7), 2); }).find("3·2·D"),
            std::string::npos);
}

// Ops must also compute the right values, not only consistent gradients: spot checks of the
// wiring (layouts, broadcasting, transposes) against direct formulas.
TEST(OpsForward, MatmulLinearAttentionValues) {
  Tensor a = param(Shape{2, 3, 4}, 1), b = param(Shape{2, 5, 4}, 2);
  const auto av = a.to_vector<float>(), bv = b.to_vector<float>();
  const auto c = ops::matmul(a, b, false, true).to_vector<float>();  // [2, 3, 5]
  for (int n = 0; n < 2; ++n)
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 5; ++j) {
        double s = 0;
        for (int k = 0; k < 4; ++k) s += double(av[(n * 3 + i) * 4 + k]) * bv[(n * 5 + j) * 4 + k];
        EXPECT_NEAR(c[(n * 3 + i) * 5 + j], s, 1e-5);
      }
  Tensor w = param(Shape{5, 4}, 3), bias = param(Shape{5}, 4);
  const auto y = ops::linear(a, w, bias).to_vector<float>();
  const auto wv = w.to_vector<float>(), biasv = bias.to_vector<float>();
  for (int r = 0; r < 6; ++r)
    for (int j = 0; j < 5; ++j) {
      double s = biasv[j];
      for (int k = 0; k < 4; ++k) s += double(av[r * 4 + k]) * wv[j * 4 + k];
      EXPECT_NEAR(y[r * 5 + j], s, 1e-5);
    }
  // With one token, attention returns v of the matching kv head.
  Tensor q = param(Shape{1, 1, 4, 3}, 5), k = param(Shape{1, 1, 2, 3}, 6), v = param(Shape{1, 1, 2, 3}, 7);
  const auto o = ops::attention(q, k, v).to_vector<float>(), vv = v.to_vector<float>();
  for (int h = 0; h < 4; ++h)
    for (int d = 0; d < 3; ++d) EXPECT_NEAR(o[h * 3 + d], vv[(h / 2) * 3 + d], 1e-6);
}

TEST(OpsForward, CrossEntropyIgnoresRows) {
  Tensor logits = param(Shape{3, 4}, 1);
  const auto l = logits.to_vector<float>();
  const float loss = ops::cross_entropy(logits, ids({2, -100, 1}, Shape{3})).item();
  auto row_loss = [&](int r, int t) {
    double m = -1e30, s = 0;
    for (int c = 0; c < 4; ++c) m = std::max(m, double(l[r * 4 + c]));
    for (int c = 0; c < 4; ++c) s += std::exp(l[r * 4 + c] - m);
    return m + std::log(s) - l[r * 4 + t];
  };
  EXPECT_NEAR(loss, (row_loss(0, 2) + row_loss(2, 1)) / 2, 1e-6);
  EXPECT_EQ(ops::cross_entropy(logits, ids({-100, -100, -100}, Shape{3})).item(), 0.f);
}

TEST(OpsForward, TokenLogprobsAreLogSoftmaxGathered) {
  Tensor logits = param(Shape{3, 4}, 2);
  const auto l = logits.to_vector<float>();
  const auto lp = ops::token_logprobs(logits, ids({2, -100, 0}, Shape{3})).to_vector<float>();
  auto log_softmax = [&](int r, int t) {
    double m = -1e30, s = 0;
    for (int c = 0; c < 4; ++c) m = std::max(m, double(l[r * 4 + c]));
    for (int c = 0; c < 4; ++c) s += std::exp(l[r * 4 + c] - m);
    return l[r * 4 + t] - m - std::log(s);
  };
  EXPECT_NEAR(lp[0], log_softmax(0, 2), 1e-6);
  EXPECT_EQ(lp[1], 0.f);
  EXPECT_NEAR(lp[2], log_softmax(2, 0), 1e-6);
}

}  // namespace
}  // namespace llm
