#include "engine/core/autograd.h"

#include "engine/ops/ops.h"
#include "tests/common/gradcheck.h"
#include "tests/common/testing.h"

namespace llm {
namespace {

using testing::param;

using testing::error_of;

TEST(Autograd, ChainRuleThroughSeveralOps) {
  // loss = mean((x * w + b)²) by hand: d/dx = 2 (x w + b) w / n.
  Tensor x = param(Shape{3, 4}, 1), w = param(Shape{3, 4}, 2), b = param(Shape{4}, 3);
  Tensor y = x * w + b;
  Tensor loss = ops::mean(y * y);
  loss.backward();
  const auto xv = x.to_vector<float>(), wv = w.to_vector<float>(), bv = b.to_vector<float>();
  const auto gx = x.grad().to_vector<float>(), gb = b.grad().to_vector<float>();
  std::vector<double> want_gb(4, 0.0);
  for (int i = 0; i < 12; ++i) {
    const double yi = double(xv[i]) * wv[i] + bv[i % 4];
    EXPECT_NEAR(gx[i], 2 * yi * wv[i] / 12, 1e-6);
    want_gb[i % 4] += 2 * yi / 12;
  }
  for (int c = 0; c < 4; ++c) EXPECT_NEAR(gb[c], want_gb[c], 1e-6);
  EXPECT_TRUE(loss.grad_fn() != nullptr);
  EXPECT_TRUE(x.is_leaf());
}

TEST(Autograd, GradientsAccumulateAcrossBackwardCallsAndUses) {
  Tensor x = param(Shape{5}, 4);
  ops::sum(x * x + x).backward();  // x used three times in one graph: 2x + 1
  const auto x0 = x.to_vector<float>();
  auto g = x.grad().to_vector<float>();
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(g[i], 2 * x0[i] + 1, 1e-6);
  ops::sum(ops::scale(x, 3.f)).backward();  // a second backward adds 3
  g = x.grad().to_vector<float>();
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(g[i], 2 * x0[i] + 4, 1e-6);
  x.zero_grad();
  EXPECT_FALSE(x.grad().defined());
}

TEST(Autograd, SharedGradientIsNotAliasedBetweenLeaves) {
  // add's backward hands the same gradient to both inputs; accumulating into one leaf must not
  // change the other.
  Tensor a = param(Shape{4}, 5), b = param(Shape{4}, 6);
  ops::sum(a + b).backward();
  ops::sum(ops::scale(a, 2.f)).backward();
  for (float v : b.grad().to_vector<float>()) EXPECT_EQ(v, 1.f);
  for (float v : a.grad().to_vector<float>()) EXPECT_EQ(v, 3.f);
}

TEST(Autograd, NonScalarBackwardNeedsAGradient) {
  Tensor x = param(Shape{2, 2}, 7);
  Tensor y = x * x;
  EXPECT_NE(error_of([&] { y.backward(); }).find("gradient can be implied only for a scalar"), std::string::npos);
  y.backward(Tensor::ones(Shape{2, 2}));
  EXPECT_TRUE(x.grad().defined());
  EXPECT_NE(error_of([&] { Tensor::zeros(Shape{1}).backward(); }).find("does not require grad"), std::string::npos);
  EXPECT_THROW(y.backward(Tensor::ones(Shape{3})), Error);
}

TEST(Autograd, SavedTensorsFreedAfterBackward) {
  Tensor x = param(Shape{3}, 8);
  Tensor loss = ops::sum(x * x);
  loss.backward();
  const std::string msg = error_of([&] { loss.backward(); });
  EXPECT_NE(msg.find("MulBackward"), std::string::npos) << msg;
  EXPECT_NE(msg.find("retain_graph"), std::string::npos) << msg;
  // With retain_graph the same graph runs twice and gradients add up.
  Tensor z = param(Shape{3}, 9);
  Tensor l2 = ops::sum(z * z);
  l2.backward(Tensor(), /*retain_graph=*/true);
  l2.backward();
  const auto zv = z.to_vector<float>(), gz = z.grad().to_vector<float>();
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(gz[i], 4 * zv[i], 1e-6);
}

TEST(Autograd, InPlaceChangeOfSavedTensorIsDetected) {
  Tensor x = param(Shape{3}, 10);
  Tensor h = ops::scale(x, 2.f);  // not a leaf
  Tensor loss = ops::sum(h * h);  // saves h
  {
    NoGradGuard no_grad;
    h.detach().mul_(3.f);  // modifies the saved activation behind autograd's back
  }
  const std::string msg = error_of([&] { loss.backward(); });
  EXPECT_NE(msg.find("modified in place"), std::string::npos) << msg;
  EXPECT_NE(error_of([&] { x.mul_(2.f); }).find("in-place operation on a tensor that requires grad"), std::string::npos);
}

TEST(Autograd, NoGradScope) {
  Tensor x = param(Shape{3}, 11);
  {
    NoGradGuard no_grad;
    EXPECT_FALSE(grad_enabled());
    Tensor y = x * x;
    EXPECT_FALSE(y.requires_grad());
    EXPECT_TRUE(y.grad_fn() == nullptr);
    {
      NoGradGuard nested;
    }
    EXPECT_FALSE(grad_enabled());  // restoring the nested guard keeps the outer scope
  }
  EXPECT_TRUE(grad_enabled());
  EXPECT_TRUE((x * x).requires_grad());
  EXPECT_FALSE(x.detach().requires_grad());
}

TEST(Autograd, GradReadyHookRunsOnceWithTheFinalGradient) {
  // w is used by two branches; the hook must see the sum of both, once per backward.
  Tensor w = param(Shape{4}, 12), x = param(Shape{4}, 13);
  int calls = 0;
  std::vector<float> seen;
  w.register_grad_ready_hook([&](const Tensor& p) {
    ++calls;
    seen = p.grad().to_vector<float>();
  });
  Tensor loss = ops::sum(w * x) + ops::sum(ops::scale(w, 5.f));
  loss.backward();
  EXPECT_EQ(calls, 1);
  const auto xv = x.to_vector<float>();
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(seen[i], xv[i] + 5.f, 1e-6);
  EXPECT_THROW(loss.register_grad_ready_hook([](const Tensor&) {}), Error);  // not a leaf
}

TEST(Autograd, HooksFireInReverseLayerOrder) {
  // Data parallelism starts all-reduces from these hooks, so the last layer's gradient must be
  // reported first, before earlier layers' backward runs.
  Tensor w1 = param(Shape{3, 3}, 14), w2 = param(Shape{3, 3}, 15), x = param(Shape{2, 3}, 16);
  std::vector<int> order;
  w1.register_grad_ready_hook([&](const Tensor&) { order.push_back(1); });
  w2.register_grad_ready_hook([&](const Tensor&) { order.push_back(2); });
  ops::sum(ops::linear(ops::gelu(ops::linear(x, w1)), w2)).backward();
  EXPECT_EQ(order, (std::vector<int>{2, 1}));
}

TEST(Autograd, UnusedBranchesAndIntegerInputs) {
  Tensor x = param(Shape{2, 3}, 17), unused = param(Shape{3}, 18);
  Tensor y = ops::sum(x.slice(1, 0, 2));
  (void)ops::scale(unused, 2.f);
  y.backward();
  EXPECT_EQ(x.grad().to_vector<float>(), (std::vector<float>{1, 1, 0, 1, 1, 0}));
  EXPECT_FALSE(unused.grad().defined());
  EXPECT_THROW(Tensor::zeros(Shape{2}, DType::I32).set_requires_grad(true), Error);
  EXPECT_THROW((x * x).set_requires_grad(false), Error);  // not a leaf
}

TEST(Autograd, ViewsPropagateGradients) {
  Tensor x = param(Shape{2, 3, 4}, 19);
  Tensor y = x.transpose(0, 2).reshape(Shape{4, 6}).slice(0, 1, 3);
  Tensor w = Tensor::from_vector(testing::random_floats(12, 20), Shape{2, 6});
  ops::sum(y * w).backward();
  // d/dx[i][j][k] is w at the place x[i][j][k] landed, or 0 if it was sliced away.
  const auto g = x.grad().to_vector<float>(), wv = w.to_vector<float>();
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 4; ++k) {
        const int row = k, col = j * 2 + i;  // transpose(0,2) gives [k][j][i], reshape to [k][j*2+i]
        const float want = (row >= 1 && row < 3) ? wv[(row - 1) * 6 + col] : 0.f;
        EXPECT_EQ(g[(i * 3 + j) * 4 + k], want);
      }
}

}  // namespace
}  // namespace llm
