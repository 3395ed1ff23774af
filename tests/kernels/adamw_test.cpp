// Fused AdamW against a double-precision transcription of torch.optim.AdamW, over several steps.
#include <cmath>
#include <vector>

#include "kernels/cpu/fused.h"
#include "tests/common/testing.h"
#include "tests/kernels/kernel_test_util.h"

namespace llm::testing {
namespace {

struct RefState {
  std::vector<double> param, m, v;
};

// torch.optim.AdamW (amsgrad=False, maximize=False) for one step, in double.
void ref_adamw_step(RefState* s, const std::vector<float>& grad, const cpu::AdamWHyper& h) {
  const double lr = h.lr, b1 = h.beta1, b2 = h.beta2, eps = h.eps, wd = h.weight_decay;
  const double bias1 = 1 - std::pow(b1, double(h.step)), bias2 = 1 - std::pow(b2, double(h.step));
  for (size_t i = 0; i < s->param.size(); ++i) {
    const double g = double(grad[i]) * double(h.grad_scale);
    s->param[i] *= 1 - lr * wd;
    s->m[i] = b1 * s->m[i] + (1 - b1) * g;
    s->v[i] = b2 * s->v[i] + (1 - b2) * g * g;
    const double denom = std::sqrt(s->v[i]) / std::sqrt(bias2) + eps;
    s->param[i] -= lr / bias1 * s->m[i] / denom;
  }
}

void run_steps(int64_t n, float grad_magnitude, float eps, float grad_scale) {
  SCOPED_TRACE(::testing::Message() << "n=" << n << " |g|=" << grad_magnitude << " eps=" << eps);
  auto param = random_floats(size_t(n), 1);
  std::vector<float> m(static_cast<size_t>(n), 0.f), v(static_cast<size_t>(n), 0.f);
  RefState ref{to_double(param), std::vector<double>(size_t(n), 0.0), std::vector<double>(size_t(n), 0.0)};
  const auto start = ref.param;
  for (int64_t step = 1; step <= 5; ++step) {
    const auto grad = random_floats(size_t(n), 100 + uint64_t(step), -grad_magnitude, grad_magnitude);
    const cpu::AdamWHyper h{1e-2f, 0.9f, 0.95f, eps, 0.1f, step, grad_scale};
    cpu::adamw_update(n, param.data(), grad.data(), m.data(), v.data(), h);
    ref_adamw_step(&ref, grad, h);
  }
  EXPECT_REL_NEAR(param, ref.param, 1e-6);
  EXPECT_REL_NEAR(m, ref.m, 1e-5);
  EXPECT_REL_NEAR(v, ref.v, 1e-5);
  // The update itself (param - start, ~5e-2) is what AdamW computes; the fp32 parameter carries
  // ~6e-8 absolute rounding per step, hence 1e-4 relative to the update.
  std::vector<double> moved(static_cast<size_t>(n)), ref_moved(static_cast<size_t>(n));
  for (size_t i = 0; i < size_t(n); ++i) {
    moved[i] = double(param[i]) - start[i];
    ref_moved[i] = ref.param[i] - start[i];
  }
  EXPECT_REL_NEAR(moved, ref_moved, 1e-4);
}

TEST(AdamW, MatchesTorchFormulaOverSeveralSteps) {
  for (int64_t n : {1, 3, 17, 127, 257, 100003}) run_steps(n, 1.0f, 1e-8f, 1.0f);
}

// Gradients of the size of eps make the placement of eps (after the bias-corrected sqrt) matter;
// grad_scale must be applied before the moments.
TEST(AdamW, EpsPlacementAndGradScale) {
  run_steps(1001, 1e-3f, 1e-3f, 1.0f);
  run_steps(1001, 4.0f, 1e-8f, 0.25f);
  run_steps(1001, 1e-3f, 1e-3f, 0.5f);
}

}  // namespace
}  // namespace llm::testing
