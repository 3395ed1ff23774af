// GELU (tanh approximation), SiLU and SwiGLU, forward and backward.
#include "kernels/cpu/fused.h"
#include "kernels/cpu/loop_util.h"
#include "kernels/cpu/simd_math.h"

namespace llm::cpu {

namespace {
using simd::Vf;
constexpr float kGeluK0 = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kGeluK1 = 0.044715f;

// 0.5 (1 + tanh(u)) == sigmoid(2u): the sigmoid form has no cancellation for large negative u, where
// 1 + tanh(u) would lose all its digits.
inline Vf gelu_gate(Vf x) {
  const Vf u = simd::splat(kGeluK0) * simd::fma(simd::splat(kGeluK1) * x, x * x, x);
  return simd::sigmoid(u + u);
}

inline Vf silu_grad(Vf x) {  // d/dx x s(x) = s (1 + x (1 - s))
  const Vf s = simd::sigmoid(x);
  return s * simd::fma(x, simd::splat(1.0f) - s, simd::splat(1.0f));
}
}  // namespace

void gelu_forward(int64_t n, const float* x, float* y) {
  map1(n, x, y, [](Vf v) { return v * gelu_gate(v); });
}

void gelu_backward(int64_t n, const float* x, const float* dy, float* dx) {
  // d/dx [x s(2u)] = s + 2 x s (1 - s) u',  u' = k0 (1 + 3 k1 x²).
  map2(n, x, dy, dx, [](Vf v, Vf g) {
    const Vf s = gelu_gate(v);
    const Vf du = simd::splat(kGeluK0) * simd::fma(simd::splat(3.0f * kGeluK1) * v, v, simd::splat(1.0f));
    const Vf two_x_s = (v + v) * s;
    return g * simd::fma(two_x_s * (simd::splat(1.0f) - s), du, s);
  });
}

void silu_forward(int64_t n, const float* x, float* y) {
  map1(n, x, y, [](Vf v) { return v * simd::sigmoid(v); });
}

void silu_backward(int64_t n, const float* x, const float* dy, float* dx) {
  map2(n, x, dy, dx, [](Vf v, Vf g) { return g * silu_grad(v); });
}

void swiglu_forward(int64_t n, const float* gate, const float* up, float* y) {
  map2(n, gate, up, y, [](Vf g, Vf u) { return g * simd::sigmoid(g) * u; });
}

void swiglu_backward(int64_t n, const float* gate, const float* up, const float* dy, float* dgate, float* dup) {
  map3_to2(n, gate, up, dy, dgate, dup, [](Vf g, Vf u, Vf d, Vf* dg, Vf* du) {
    const Vf s = simd::sigmoid(g);
    *dg = d * u * (s * simd::fma(g, simd::splat(1.0f) - s, simd::splat(1.0f)));
    *du = d * (g * s);
  });
}

}  // namespace llm::cpu
