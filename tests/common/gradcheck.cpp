#include "tests/common/gradcheck.h"

#include <cmath>

namespace llm::testing {

Tensor param(const Shape& shape, uint64_t seed, float lo, float hi) {
  Tensor t = Tensor::from_vector(random_floats(static_cast<size_t>(shape.numel()), seed, lo, hi), shape);
  t.set_requires_grad(true);
  return t;
}

namespace {
double weighted_sum(const Tensor& y, const std::vector<float>& r) {
  const std::vector<float> v = y.to_vector<float>();
  double s = 0;
  for (size_t i = 0; i < v.size(); ++i) s += static_cast<double>(v[i]) * r[i];
  return s;
}
}  // namespace

double gradcheck(const OpFn& f, const std::vector<Tensor>& inputs, double eps, uint64_t seed) {
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) t.zero_grad();
  Tensor y = f(inputs);
  const std::vector<float> r = random_floats(static_cast<size_t>(y.numel()), seed, -1.f, 1.f);
  y.backward(Tensor::from_vector(r, y.shape()));

  double worst = 0;
  for (size_t k = 0; k < inputs.size(); ++k) {
    const Tensor& x = inputs[k];
    if (!x.defined() || !x.requires_grad()) continue;
    const Tensor g = x.grad();
    EXPECT_TRUE(g.defined()) << "input " << k << " got no gradient";
    if (!g.defined()) return INFINITY;
    const std::vector<float> analytic = g.to_vector<float>();
    std::vector<double> numeric(analytic.size());
    {
      NoGradGuard no_grad;
      float* p = x.data<float>();
      for (size_t i = 0; i < analytic.size(); ++i) {
        const float orig = p[i];
        p[i] = static_cast<float>(orig + eps);
        const double up = weighted_sum(f(inputs), r);
        p[i] = static_cast<float>(orig - eps);
        const double down = weighted_sum(f(inputs), r);
        p[i] = orig;
        numeric[i] = (up - down) / (2 * eps);
      }
    }
    const double err = max_rel_error(analytic, numeric, 1e-3);
    EXPECT_LE(err, 5e-3) << "input " << k << " (" << x.str() << ")";
    worst = std::max(worst, err);
  }
  return worst;
}

}  // namespace llm::testing
