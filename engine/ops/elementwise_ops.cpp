// add, sub, mul, scale (with suffix broadcasting), sum, mean, dropout.
#include "engine/ops/op_util.h"
#include "engine/ops/ops.h"
#include "kernels/cpu/elementwise.h"

#ifdef LLM_HAVE_CUDA
#include "kernels/cuda/elementwise.h"
#endif

namespace llm::ops {

using autograd::Node;
using autograd::SavedTensor;
using detail::float_input;
using detail::record_op;
#ifdef LLM_HAVE_CUDA
using detail::ptr;
using detail::stream_of;
using detail::with_float_type;
#endif

namespace {
// How b broadcasts against a: same shape, or one row of C values repeated over N rows (C = numel(b),
// b's shape a suffix of a's, or b a single element).
struct Broadcast {
  bool same = true;
  int64_t N = 0, C = 0;
};

Broadcast classify(const Tensor& a, const Tensor& b, const char* op) {
  if (a.shape() == b.shape()) return {true, 1, a.numel()};
  bool suffix = b.dim() <= a.dim();
  for (int i = 1; suffix && i <= b.dim(); ++i) suffix = b.shape()[b.dim() - i] == a.shape()[a.dim() - i];
  LLM_CHECK(suffix || b.numel() == 1, op, ": shapes ", a.shape().str(), " and ", b.shape().str(),
            " do not broadcast (the second must equal the first, be a suffix of it, or have one element)");
  const int64_t C = b.numel();
  return {false, C ? a.numel() / C : 0, C};
}

// The gradient for b: g itself, or g summed over the broadcast rows.
Tensor reduce_to(const Tensor& g, const Broadcast& bc, const Shape& b_shape) {
  if (bc.same) return g;
  Tensor gc = g.contiguous();
  Tensor out = Tensor::empty(b_shape, DType::F32, g.device());
  if (g.device().is_cuda()) {
#ifdef LLM_HAVE_CUDA
    with_float_type(gc.dtype(), [&](auto t) {
      using T = decltype(t);
      cuda::sum_rows<T>(bc.N, bc.C, ptr<T>(gc), ptr<float>(out), stream_of(gc));
    });
    return out.to(g.dtype());  // fp32 sums, rounded once to the gradient's dtype
#endif
  }
  cpu::sum_rows(bc.N, bc.C, gc.data<float>(), out.data<float>());
  return out;
}

// out = alpha_a·a + alpha_b·b, the operand with fewer elements broadcast over the other.
struct AddBackward : Node {
  Broadcast bc;
  int small_input = 1;  // which input was broadcast (0: a, 1: b)
  Shape small_shape;
  float alpha[2] = {1.f, 1.f};
  std::vector<Tensor> apply(std::vector<Tensor> g) override {
    std::vector<Tensor> out(2);
    for (int i = 0; i < 2; ++i) {
      Tensor gi = i == small_input ? reduce_to(g[0], bc, small_shape) : g[0];
      out[i] = alpha[i] == 1.f ? gi : scale(gi, alpha[i]);
    }
    return out;
  }
  std::string name() const override { return "AddBackward"; }
};

Tensor add_scaled_cpu(const Tensor& x, Tensor r, const Broadcast& bc, float alpha_big, float alpha_small);

Tensor add_scaled(const Tensor& a_in, const Tensor& b_in, float alpha_b, const char* op) {
  check_defined(a_in, op, "a");
  check_defined(b_in, op, "b");
  check_same_device(a_in, b_in, op);
  const std::vector<Tensor> ab = detail::promote({a_in, b_in}, op);
  const Tensor &a = ab[0], &b = ab[1];
  const int small_input = b.numel() <= a.numel() ? 1 : 0;
  const Tensor& big = small_input ? a : b;
  const Tensor& small = small_input ? b : a;
  const float alpha_big = small_input ? 1.f : alpha_b, alpha_small = small_input ? alpha_b : 1.f;
  const Broadcast bc = classify(big, small, op);
  Tensor x = float_input(big, op, small_input ? "a" : "b");
  Tensor r = float_input(small, op, small_input ? "b" : "a");
  Tensor out;
  if (x.device().is_cuda()) {
#ifdef LLM_HAVE_CUDA
    out = Tensor::empty(big.shape(), x.dtype(), x.device());
    with_float_type(x.dtype(), [&](auto t) {
      using T = decltype(t);
      cuda::add<T>(x.numel(), ptr<T>(x), alpha_big, r.numel(), ptr<T>(r), alpha_small, ptr<T>(out), stream_of(x));
    });
#endif
  } else {
    out = add_scaled_cpu(x, r, bc, alpha_big, alpha_small);
  }
  record_op<AddBackward>({&a, &b}, {&out}, [&](AddBackward& n) {
    n.bc = bc;
    n.small_input = small_input;
    n.small_shape = small.shape();
    n.alpha[1] = alpha_b;
  });
  return out;
}

// alpha_big·x + alpha_small·r on the CPU, r broadcast over x's rows.
Tensor add_scaled_cpu(const Tensor& x, Tensor r, const Broadcast& bc, float alpha_big, float alpha_small) {
  if (alpha_small != 1.f) r = scale(r.detach(), alpha_small);
  Tensor out = Tensor::empty(x.shape());
  float* y = out.data<float>();
  const float* xs = x.data<float>();
  if (alpha_big != 1.f) {
    cpu::scale(x.numel(), xs, alpha_big, y);
    xs = y;
  }
  if (bc.same) cpu::add(x.numel(), xs, r.data<float>(), y);
  else cpu::add_rows(bc.N, bc.C, xs, r.data<float>(), y);
  return out;
}
}  // namespace

Tensor add(const Tensor& a, const Tensor& b) { return add_scaled(a, b, 1.f, "add"); }
Tensor sub(const Tensor& a, const Tensor& b) { return add_scaled(a, b, -1.f, "sub"); }

namespace {
struct MulBackward : Node {
  SavedTensor a, b;
  Broadcast bc;
  std::vector<Tensor> apply(std::vector<Tensor> g) override {
    const Tensor av = a.get(*this), bv = b.get(*this);
    Tensor da, db;
    if (bc.same) {
      da = mul(g[0], bv);
      db = mul(g[0], av);
    } else {
      da = mul(g[0], bv);  // broadcasts bv over rows
      db = reduce_to(mul(g[0], av), bc, bv.shape());
    }
    return {da, db};
  }
  std::vector<SavedTensor*> saved() override { return {&a, &b}; }
  std::string name() const override { return "MulBackward"; }
};
}  // namespace

Tensor mul(const Tensor& a_in, const Tensor& b_in) {
  check_defined(a_in, "mul", "a");
  check_defined(b_in, "mul", "b");
  check_same_device(a_in, b_in, "mul");
  const std::vector<Tensor> ab = detail::promote({a_in, b_in}, "mul");
  const bool swap = ab[1].numel() > ab[0].numel();  // multiplication commutes: broadcast the smaller
  const Tensor& big = swap ? ab[1] : ab[0];
  const Tensor& small = swap ? ab[0] : ab[1];
  const Broadcast bc = classify(big, small, "mul");
  Tensor x = float_input(big, "mul", "a"), r = float_input(small, "mul", "b");
  Tensor out = Tensor::empty(big.shape(), x.dtype(), x.device());
  if (x.device().is_cuda()) {
#ifdef LLM_HAVE_CUDA
    with_float_type(x.dtype(), [&](auto t) {
      using T = decltype(t);
      cuda::mul<T>(x.numel(), ptr<T>(x), r.numel(), ptr<T>(r), ptr<T>(out), stream_of(x));
    });
#endif
  } else if (bc.same) {
    cpu::mul(x.numel(), x.data<float>(), r.data<float>(), out.data<float>());
  } else {
    cpu::mul_rows(bc.N, bc.C, x.data<float>(), r.data<float>(), out.data<float>());
  }
  record_op<MulBackward>({&big, &small}, {&out}, [&](MulBackward& n) {
    n.a = SavedTensor(x);
    n.b = SavedTensor(r);
    n.bc = bc;
  });
  return out;
}

namespace {
struct ScaleBackward : Node {
  float alpha = 1.f;
  std::vector<Tensor> apply(std::vector<Tensor> g) override { return {scale(g[0], alpha)}; }
  std::string name() const override { return "ScaleBackward"; }
};
}  // namespace

Tensor scale(const Tensor& x_in, float alpha) {
  Tensor x = float_input(x_in, "scale", "x");
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.device().is_cuda()) {
#ifdef LLM_HAVE_CUDA
    with_float_type(x.dtype(), [&](auto t) {
      using T = decltype(t);
      cuda::scale<T>(x.numel(), ptr<T>(x), alpha, ptr<T>(out), stream_of(x));
    });
#endif
  } else {
    cpu::scale(x.numel(), x.data<float>(), alpha, out.data<float>());
  }
  record_op<ScaleBackward>({&x_in}, {&out}, [&](ScaleBackward& n) { n.alpha = alpha; });
  return out;
}

namespace {
// Gradient of a full reduction: the upstream scalar times `factor`, spread over the input shape
// (in the input's dtype and on its device).
struct SumBackward : Node {
  Shape input_shape;
  DType input_dtype = DType::F32;
  float factor = 1.f;
  std::vector<Tensor> apply(std::vector<Tensor> g) override {
    if (g[0].device().is_cpu()) return {Tensor::full(input_shape, static_cast<double>(g[0].item()) * factor)};
    Tensor out = Tensor::zeros(input_shape, input_dtype, g[0].device());
#ifdef LLM_HAVE_CUDA
    const Tensor gs = g[0].to(input_dtype);  // the scalar, read on the device: no host round trip
    with_float_type(input_dtype, [&](auto t) {
      using T = decltype(t);
      cuda::add<T>(out.numel(), ptr<T>(out), 1.f, 1, ptr<T>(gs), factor, ptr<T>(out), stream_of(out));
    });
#endif
    return {out};
  }
  std::string name() const override { return "SumBackward"; }
};

// Sum or mean of all elements: an f32 scalar on x's device.
Tensor reduce_all(const Tensor& x_in, bool average, const char* op) {
  Tensor x = float_input(x_in, op, "x");
  const int64_t n = x.numel();
  const float factor = average ? (n ? 1.f / static_cast<float>(n) : 0.f) : 1.f;
  Tensor out;
  if (x.device().is_cuda()) {
#ifdef LLM_HAVE_CUDA
    out = Tensor::empty(Shape{}, DType::F32, x.device());
    Tensor work = Tensor::empty(Shape{cuda::sum_workspace_elems(n)}, DType::I64, x.device());  // fp64 partials
    with_float_type(x.dtype(), [&](auto t) {
      using T = decltype(t);
      cuda::sum<T>(n, ptr<T>(x), false, ptr<float>(out), ptr<double>(work), stream_of(x));
    });
    if (average) cuda::scale<float>(1, ptr<float>(out), factor, ptr<float>(out), stream_of(x));
#endif
  } else {
    const double total = cpu::sum(n, x.data<float>());
    out = Tensor::full(Shape{}, average ? (n ? total / n : 0.0) : total);
  }
  record_op<SumBackward>({&x_in}, {&out}, [&](SumBackward& node) {
    node.input_shape = x.shape();
    node.input_dtype = x.dtype();
    node.factor = factor;
  });
  return out;
}
}  // namespace

Tensor sum(const Tensor& x) { return reduce_all(x, false, "sum"); }
Tensor mean(const Tensor& x) { return reduce_all(x, true, "mean"); }

namespace {
// The kept elements of x scaled by 1/(1 − p): forward on x, backward on dy (the same mask).
Tensor apply_dropout(const Tensor& x, float p, uint64_t seed) {
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.device().is_cuda()) {
#ifdef LLM_HAVE_CUDA
    with_float_type(x.dtype(), [&](auto t) {
      using T = decltype(t);
      cuda::dropout<T>(x.numel(), ptr<T>(x), p, seed, ptr<T>(out), stream_of(x));
    });
#endif
  } else {
    cpu::dropout_forward(x.numel(), x.data<float>(), p, seed, out.data<float>());
  }
  return out;
}

struct DropoutBackward : Node {
  float p = 0.f;
  uint64_t seed = 0;
  std::vector<Tensor> apply(std::vector<Tensor> g) override {
    return {apply_dropout(float_input(g[0], "dropout backward", "grad"), p, seed)};
  }
  std::string name() const override { return "DropoutBackward"; }
};
}  // namespace

Tensor dropout(const Tensor& x_in, float p, uint64_t seed, bool training) {
  LLM_CHECK(p >= 0.f && p <= 1.f, "dropout: probability ", p, " is outside [0, 1]");
  if (!training || p == 0.f) return x_in;
  Tensor out = apply_dropout(float_input(x_in, "dropout", "x"), p, seed);
  record_op<DropoutBackward>({&x_in}, {&out}, [&](DropoutBackward& n) {
    n.p = p;
    n.seed = seed;
  });
  return out;
}

}  // namespace llm::ops
