// Fused AdamW step, following torch.optim.AdamW (single-tensor path) operation by operation.
#include <cmath>

#include "kernels/cpu/fused.h"
#include "kernels/cpu/loop_util.h"

namespace llm::cpu {

void adamw_update(int64_t n, float* param, const float* grad, float* m, float* v, const AdamWHyper& h) {
  // Step-dependent scalars in double, rounded once, as PyTorch computes them in Python floats.
  const double bias1 = 1.0 - std::pow(double(h.beta1), double(h.step));
  const double bias2 = 1.0 - std::pow(double(h.beta2), double(h.step));
  const float step_size = float(double(h.lr) / bias1);
  const float bias2_sqrt = float(std::sqrt(bias2));
  const float decay = float(1.0 - double(h.lr) * double(h.weight_decay));
  const float one_minus_beta1 = float(1.0 - double(h.beta1));
  const float one_minus_beta2 = float(1.0 - double(h.beta2));
  const float beta2 = h.beta2, eps = h.eps, grad_scale = h.grad_scale;
  parallel_chunks(n, [&](int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      const float g = grad[i] * grad_scale;
      const float p = param[i] * decay;                      // decoupled weight decay
      const float mi = m[i] + one_minus_beta1 * (g - m[i]);   // m.lerp_(g, 1 - beta1)
      const float vi = v[i] * beta2 + one_minus_beta2 * g * g;  // v.mul_(beta2).addcmul_(g, g, 1 - beta2)
      const float denom = std::sqrt(vi) / bias2_sqrt + eps;   // eps after the bias-corrected sqrt
      m[i] = mi;
      v[i] = vi;
      param[i] = p - step_size * (mi / denom);
    }
  });
}

}  // namespace llm::cpu
