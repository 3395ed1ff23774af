// Each op forward and backward on CUDA against the same op on the CPU, through the autograd engine:
// loss = sum(op(inputs) ⊙ R) for a fixed random R, compared output by output and gradient by
// gradient. "f32" runs every tensor as f32 on the device (within 1e-5 where the kernels are fp32);
// "bf16" makes the activations bf16 while parameters stay f32 (the mixed-precision rule casts them),
// within 1e-2, and checks that every gradient has its input's dtype. The CPU reference sees the
// same bf16-rounded values the GPU does.
#include <functional>
#include <string>
#include <vector>

#include "engine/ops/ops.h"
#include "tests/cuda/compare.h"
#include "tests/cuda/cuda_testing.h"

namespace llm::testing {
namespace {

using V = std::vector<Tensor>;
using OpFn = std::function<Tensor(const V&)>;
const DType F32 = DType::F32, BF16 = DType::BF16;
constexpr double kF32Tol = 1e-5, kBf16Tol = 1e-2;

Tensor values(const Shape& shape, uint64_t seed, float lo = -1.f, float hi = 1.f) {
  return Tensor::from_vector(random_floats(static_cast<size_t>(shape.numel()), seed, lo, hi), shape);
}
Tensor rounded_bf16(const Tensor& t) { return t.to(BF16).to(F32); }

// Runs f on the CPU (f32) and on cuda:0 (input i as dtypes[i]; integer inputs moved as they are) and
// compares the outputs and the gradients of every floating input.
void match_cpu(const std::string& what, const OpFn& f, const V& inputs, const std::vector<DType>& dtypes,
               double tol) {
  SCOPED_TRACE(what);
  bool any_bf16 = false;
  for (DType d : dtypes) any_bf16 |= d == BF16;
  V cpu_in, gpu_in;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!is_floating(inputs[i].dtype())) {
      cpu_in.push_back(inputs[i]);
      gpu_in.push_back(inputs[i].to(Device::cuda()));
      continue;
    }
    // With any bf16 input the f32 ones are cast to bf16 on the device: the reference sees that rounding.
    const Tensor v = any_bf16 ? rounded_bf16(inputs[i]) : inputs[i];
    cpu_in.push_back(v.clone().set_requires_grad());
    gpu_in.push_back(v.to(Device::cuda()).to(dtypes[i]).set_requires_grad());
  }
  const Tensor y_cpu = f(cpu_in);
  const Tensor y_gpu = f(gpu_in);
  ASSERT_TRUE(y_gpu.device().is_cuda()) << what << ": output on " << y_gpu.device().str();
  ASSERT_EQ(y_gpu.shape(), y_cpu.shape()) << what;
  Tensor r = values(y_cpu.shape(), 99);
  if (y_gpu.dtype() == BF16) r = rounded_bf16(r);
  ops::sum(ops::mul(y_cpu, r)).backward();
  ops::sum(ops::mul(y_gpu, r.to(Device::cuda()).to(y_gpu.dtype()))).backward();
  EXPECT_TRUE(close_to(what + " forward (" + y_gpu.str() + ")", y_gpu.to_vector<float>(), y_cpu.to_vector<float>(), tol));
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!is_floating(inputs[i].dtype())) continue;
    const std::string name = what + " grad of input " + std::to_string(i);
    const Tensor g = gpu_in[i].grad();
    ASSERT_TRUE(g.defined()) << name << ": no gradient on the device";
    EXPECT_EQ(g.dtype(), dtypes[i]) << name << ": gradient dtype differs from the input's";
    EXPECT_TRUE(g.device().is_cuda()) << name << ": gradient on " << g.device().str();
    EXPECT_TRUE(close_to(name, g.to_vector<float>(), cpu_in[i].grad().to_vector<float>(), tol));
  }
}

// The op in both precisions: all f32 (within f32_tol: bf16 where the kernel reads bf16 operands),
// then input 0 (the activation) bf16 with the rest f32.
void match_cpu_both(const std::string& what, const OpFn& f, const V& inputs, double f32_tol = kF32Tol) {
  std::vector<DType> f32(inputs.size(), F32), mixed(inputs.size(), F32);
  mixed[0] = BF16;
  match_cpu(what + " f32", f, inputs, f32, f32_tol);
  match_cpu(what + " bf16 activation, f32 parameters", f, inputs, mixed, kBf16Tol);
}

TEST(OpsCuda, Elementwise) {
  LLM_SKIP_WITHOUT_GPU();
  match_cpu_both("add", [](const V& in) { return in[0] + in[1]; }, {values({3, 17}, 1), values({3, 17}, 2)});
  match_cpu_both("add bias row", [](const V& in) { return in[0] + in[1]; }, {values({2, 127, 5}, 3), values({5}, 4)});
  match_cpu_both("sub suffix", [](const V& in) { return in[0] - in[1]; }, {values({2, 3, 257}, 5), values({3, 257}, 6)});
  match_cpu_both("sub scalar first", [](const V& in) { return in[1] - in[0]; }, {values({2, 3, 5}, 7), values({1}, 8)});
  match_cpu_both("mul", [](const V& in) { return in[0] * in[1]; }, {values({4, 127}, 9), values({4, 127}, 10)});
  match_cpu_both("mul swapped", [](const V& in) { return in[1] * in[0]; }, {values({4, 7}, 11), values({7}, 12)});
  match_cpu_both("scale", [](const V& in) { return ops::scale(in[0], -2.5f); }, {values({17}, 13)});
  match_cpu_both("sum", [](const V& in) { return ops::sum(in[0]); }, {values({3, 4097}, 14)});
  match_cpu_both("mean", [](const V& in) { return ops::mean(in[0]); }, {values({3, 17}, 15)});
  match_cpu_both("dropout", [](const V& in) { return ops::dropout(in[0], 0.3f, 99); }, {values({5, 257}, 16)});
  match_cpu_both("input used twice", [](const V& in) { return in[0] * in[0] + in[1] * in[0]; },
                 {values({3, 17}, 17), values({3, 17}, 18)});
}

TEST(OpsCuda, ShapesAndCasts) {
  LLM_SKIP_WITHOUT_GPU();
  match_cpu_both("transpose reshape", [](const V& in) { return in[0].transpose(0, 2).reshape(Shape{-1, 6}); },
                 {values({2, 3, 4}, 1)});
  match_cpu_both("permute contiguous", [](const V& in) { return in[0].permute({0, 2, 1, 3}).contiguous(); },
                 {values({2, 17, 3, 8}, 2)});
  match_cpu_both("slice select", [](const V& in) { return in[0].slice(1, 1, 3).select(0, 1) * in[1]; },
                 {values({2, 4, 3}, 3), values({3}, 4)});
  match_cpu_both("cat", [](const V& in) { return ops::cat({in[0], in[1]}, 1); }, {values({2, 3}, 5), values({2, 5}, 6)});
  match_cpu_both("split", [](const V& in) {
    auto p = ops::split(in[0], -1, {2, 3, 1});
    return ops::cat({ops::scale(p[0], 2.f), p[2]}, -1);
  }, {values({2, 6}, 7)});
  match_cpu_both("unsqueeze squeeze clone", [](const V& in) { return in[0].unsqueeze(1).squeeze(1).clone(); },
                 {values({3, 2}, 8)});
  // Rounding to bf16 and back, forward and backward, the same on both devices: exact.
  match_cpu("cast round trip", [](const V& in) { return ops::cast(ops::cast(in[0], BF16), F32); }, {values({257}, 9)},
            {F32}, 0.0);
  match_cpu("cast bf16 to f32", [](const V& in) { return ops::cast(in[0], F32); }, {values({257}, 10)}, {BF16}, kBf16Tol);
}

Tensor ids(const std::vector<int32_t>& v, const Shape& s) { return Tensor::from_vector(v, s); }

TEST(OpsCuda, MatmulAndLinear) {
  LLM_SKIP_WITHOUT_GPU();
  // The tensor cores read bf16 operands: even the all-f32 run is within bf16 tolerance only.
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      const std::string t = std::string(ta ? "ᵀ" : "") + "·" + (tb ? "ᵀ" : "");
      const Shape a = ta ? Shape{127, 17} : Shape{17, 127}, b = tb ? Shape{33, 127} : Shape{127, 33};
      const std::vector<DType> f32{F32, F32}, bf16{BF16, BF16};
      match_cpu("matmul " + t, [=](const V& in) { return ops::matmul(in[0], in[1], ta, tb); }, {values(a, 1), values(b, 2)}, f32, kBf16Tol);
      match_cpu("matmul bf16 " + t, [=](const V& in) { return ops::matmul(in[0], in[1], ta, tb); }, {values(a, 1), values(b, 2)}, bf16, kBf16Tol);
      const Shape ab = ta ? Shape{3, 65, 17} : Shape{3, 17, 65}, bb = tb ? Shape{3, 9, 65} : Shape{3, 65, 9};
      match_cpu("batched matmul " + t, [=](const V& in) { return ops::matmul(in[0], in[1], ta, tb); }, {values(ab, 3), values(bb, 4)}, bf16, kBf16Tol);
    }
  for (bool tb : {false, true})
    match_cpu_both(std::string("matmul with a shared b") + (tb ? "ᵀ" : ""),
                   [=](const V& in) { return ops::matmul(in[0], in[1], false, tb); },
                   {values({2, 17, 65}, 5), values(tb ? Shape{9, 65} : Shape{65, 9}, 6)}, kBf16Tol);
  // Mixed: bf16 activations, f32 weight and bias receiving f32 gradients.
  std::vector<DType> f32(3, F32), mixed{BF16, F32, F32};
  for (const auto& xs : {Shape{2, 17, 257}, Shape{3, 64}}) {
    const V in{values(xs, 7), values({129, xs[xs.ndim() - 1]}, 8), values({129}, 9)};
    match_cpu("linear f32 " + xs.str(), [](const V& v) { return ops::linear(v[0], v[1], v[2]); }, in, f32, kBf16Tol);
    match_cpu("linear bf16 " + xs.str(), [](const V& v) { return ops::linear(v[0], v[1], v[2]); }, in, mixed, kBf16Tol);
    match_cpu("linear without bias " + xs.str(), [](const V& v) { return ops::linear(v[0], v[1]); }, {in[0], in[1]},
              {BF16, F32}, kBf16Tol);
    // gelu and the residual in the GEMM's epilogue.
    match_cpu("linear_gelu f32 " + xs.str(), [](const V& v) { return ops::linear_gelu(v[0], v[1], v[2]); }, in, f32, kBf16Tol);
    match_cpu("linear_gelu bf16 " + xs.str(), [](const V& v) { return ops::linear_gelu(v[0], v[1], v[2]); }, in, mixed,
              kBf16Tol);
    std::vector<int64_t> ys = xs.vec();
    ys.back() = 129;
    const V with_residual{in[0], in[1], in[2], values(Shape(ys), 10)};
    match_cpu("linear_residual f32 " + xs.str(), [](const V& v) { return ops::linear_residual(v[0], v[1], v[2], v[3]); },
              with_residual, {F32, F32, F32, F32}, kBf16Tol);
    match_cpu("linear_residual bf16 " + xs.str(), [](const V& v) { return ops::linear_residual(v[0], v[1], v[2], v[3]); },
              with_residual, {BF16, F32, F32, BF16}, kBf16Tol);
  }
}

TEST(OpsCuda, ActivationsNormsSoftmax) {
  LLM_SKIP_WITHOUT_GPU();
  match_cpu_both("gelu", [](const V& in) { return ops::gelu(in[0]); }, {values({3, 257}, 1, -3.f, 3.f)});
  match_cpu_both("silu", [](const V& in) { return ops::silu(in[0]); }, {values({3, 257}, 2, -3.f, 3.f)});
  match_cpu_both("swiglu", [](const V& in) { return ops::swiglu(in[0], in[1]); },
                 {values({3, 127}, 3, -3.f, 3.f), values({3, 127}, 4)});
  match_cpu_both("softmax", [](const V& in) { return ops::softmax(in[0]); }, {values({4, 1000}, 5, -2.f, 2.f)});
  match_cpu_both("layer_norm", [](const V& in) { return ops::layer_norm(in[0], in[1], in[2]); },
                 {values({2, 17, 257}, 6), values({257}, 7), values({257}, 8)});
  match_cpu_both("rms_norm", [](const V& in) { return ops::rms_norm(in[0], in[1]); }, {values({2, 17, 768}, 9), values({768}, 10)});
}

TEST(OpsCuda, EmbeddingRopeCrossEntropy) {
  LLM_SKIP_WITHOUT_GPU();
  const Tensor token_ids = ids({3, 0, 3, 6, 1, 3, 6, 6}, Shape{2, 4});
  // The table is the parameter (f32 in both runs), so the bf16 variant casts its output.
  match_cpu("embedding f32", [&](const V& in) { return ops::embedding(in[1], in[0]); }, {values({7, 65}, 1), token_ids},
            {F32, F32}, kF32Tol);
  match_cpu("embedding bf16 table", [&](const V& in) { return ops::embedding(in[1], in[0]); }, {values({7, 65}, 1), token_ids},
            {BF16, F32}, kBf16Tol);
  const Tensor pos = ids({0, 5, 17}, Shape{3});
  const Tensor pos_bt = ids({0, 1, 2, 7, 8, 9}, Shape{2, 3});
  for (auto layout : {cpu::RopeLayout::kHalf, cpu::RopeLayout::kInterleaved}) {
    match_cpu_both("rope [T] positions", [&](const V& in) { return ops::rope(in[0], in[1], 10000.f, layout); },
                   {values({2, 3, 2, 64}, 2), pos});
    match_cpu_both("rope [B, T] positions", [&](const V& in) { return ops::rope(in[0], in[1], 10000.f, layout); },
                   {values({2, 3, 5, 8}, 3), pos_bt});
  }
  const Tensor targets = ids({4, -100, 0, 2, 999, 7}, Shape{2, 3});
  match_cpu_both("cross_entropy", [&](const V& in) { return ops::cross_entropy(in[0], in[1]); },
                 {values({2, 3, 1000}, 4, -2.f, 2.f), targets});
  match_cpu_both("token_logprobs", [&](const V& in) { return ops::token_logprobs(in[0], in[1]); },
                 {values({2, 3, 1000}, 5, -2.f, 2.f), targets});
  // A vocabulary that is no multiple of 8: on the device the logits' gradient has padded rows, which
  // the output head's backward reads in place (and a leaf's .grad gets as a dense copy).
  const Tensor odd_targets = ids({4, -100, 0, 2, 996, 7}, Shape{2, 3});
  match_cpu_both("cross_entropy, odd vocabulary", [&](const V& in) { return ops::cross_entropy(in[0], in[1]); },
                 {values({2, 3, 997}, 6, -2.f, 2.f), odd_targets});
  match_cpu_both("output head + cross_entropy, odd vocabulary",
                 [&](const V& in) { return ops::cross_entropy(ops::linear(in[0], in[1], in[2]), in[3]); },
                 {values({2, 3, 40}, 7), values({997, 40}, 8, -0.3f, 0.3f), values({997}, 9), odd_targets},
                 kBf16Tol);  // the GEMMs read bf16 operands
}

TEST(OpsCuda, Attention) {
  LLM_SKIP_WITHOUT_GPU();
  // Head dims 64 and 128 take the tensor-core kernels, 32 and 48 the simple ones; GQA 4:2; packed
  // documents; a sliding window. The kernels read bf16, so both runs are within bf16 tolerance.
  const Tensor doc = ids({0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,  //
                          5, 5, 5, 5, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6}, Shape{2, 17});
  for (int64_t D : {32, 48, 64, 128}) {
    const V in{values({2, 17, 4, D}, 1), values({2, 17, 2, D}, 2), values({2, 17, 2, D}, 3), doc};
    const std::string d = " D=" + std::to_string(D);
    match_cpu("attention f32" + d, [](const V& v) { return ops::attention(v[0], v[1], v[2]); }, {in[0], in[1], in[2]},
              {F32, F32, F32}, kBf16Tol);
    match_cpu("attention bf16" + d, [](const V& v) { return ops::attention(v[0], v[1], v[2]); }, {in[0], in[1], in[2]},
              {BF16, BF16, BF16}, kBf16Tol);
    match_cpu("attention packed" + d, [](const V& v) { return ops::attention(v[0], v[1], v[2], v[3]); }, in,
              {BF16, BF16, BF16, F32}, kBf16Tol);
    match_cpu("attention window 5" + d, [](const V& v) { return ops::attention(v[0], v[1], v[2], Tensor(), 0.f, 5); },
              {in[0], in[1], in[2]}, {BF16, BF16, BF16}, kBf16Tol);
    // GPT-2's fused qkv read in place through token strides, its gradient written in the same layout.
    const V fused{values({2, 17, 3 * 4 * D}, 4), doc};
    match_cpu("attention_qkv bf16" + d, [](const V& v) { return ops::attention_qkv(v[0], 4, v[1]); }, fused,
              {BF16, F32}, kBf16Tol);
    match_cpu("attention_qkv f32" + d, [](const V& v) { return ops::attention_qkv(v[0], 4); }, {fused[0]}, {F32},
              kBf16Tol);
  }
}

TEST(OpsCuda, FallbackKernelsGiveTheSameResults) {
  LLM_SKIP_WITHOUT_GPU();
  // kernels.matmul: simple and kernels.attention: simple, the engine's way around a misbehaving fast kernel.
  ops::set_matmul_backend(ops::MatmulBackend::kSimple);
  ops::set_attention_backend(ops::AttentionBackend::kSimple);
  match_cpu("linear, simple gemm", [](const V& v) { return ops::linear(v[0], v[1], v[2]); },
            {values({2, 17, 64}, 1), values({129, 64}, 2), values({129}, 3)}, {BF16, F32, F32}, kBf16Tol);
  match_cpu("attention D=64, simple kernels", [](const V& v) { return ops::attention(v[0], v[1], v[2]); },
            {values({2, 17, 4, 64}, 4), values({2, 17, 2, 64}, 5), values({2, 17, 2, 64}, 6)}, {BF16, BF16, BF16}, kBf16Tol);
  ops::set_matmul_backend(ops::MatmulBackend::kAuto);
  ops::set_attention_backend(ops::AttentionBackend::kAuto);
}

TEST(OpsCuda, GradientsAccumulateOnTheDevice) {
  LLM_SKIP_WITHOUT_GPU();
  const Tensor x0 = values({3, 17}, 1);
  Tensor x = x0.to(Device::cuda()).set_requires_grad();
  for (int i = 0; i < 2; ++i) ops::sum(ops::scale(x, 1.5f)).backward();  // .grad += 1.5 twice
  ASSERT_TRUE(x.grad().device().is_cuda()) << x.grad().str();
  EXPECT_TRUE(close_to("accumulated grad", x.grad().to_vector<float>(), std::vector<float>(51, 3.f), 0.0));
}

TEST(OpsCuda, TensorMethodsOnTheDevice) {
  LLM_SKIP_WITHOUT_GPU();
  const Tensor host = values({4, 5, 3}, 1);
  const Tensor dev = host.to(Device::cuda());
  const std::vector<float> want = host.to_vector<float>();
  EXPECT_TRUE(close_to("round trip", dev.to_vector<float>(), want, 0.0));
  EXPECT_TRUE(close_to("bf16 round trip", dev.to(BF16).to(F32).to_vector<float>(), rounded_bf16(host).to_vector<float>(), 0.0));
  // A strided device view copied into a strided device destination.
  Tensor dst = Tensor::zeros({3, 5, 4}, F32, Device::cuda());
  {
    NoGradGuard no_grad;
    dst.permute({2, 1, 0}).copy_(dev);
    Tensor expected = Tensor::zeros({3, 5, 4});
    expected.permute({2, 1, 0}).copy_(host);
    EXPECT_TRUE(close_to("strided copy_", dst.to_vector<float>(), expected.to_vector<float>(), 0.0));
    Tensor acc = dev.clone();
    acc.add_(dev, 2.f);
    acc.mul_(0.5f);
    std::vector<float> w(want.size());
    for (size_t i = 0; i < w.size(); ++i) w[i] = (want[i] + 2.f * want[i]) * 0.5f;
    EXPECT_TRUE(close_to("add_ mul_", acc.to_vector<float>(), w, 1e-6));
    Tensor ones = Tensor::ones({3, 7}, BF16, Device::cuda());
    EXPECT_TRUE(close_to("fill_ bf16", ones.to_vector<float>(), std::vector<float>(21, 1.f), 0.0));
    Tensor i32 = Tensor::full({17}, -3.0, DType::I32, Device::cuda());
    EXPECT_EQ(i32.to_vector<int32_t>(), std::vector<int32_t>(17, -3));
  }
}

TEST(OpsCuda, MixedDevicesNameTheOpAndBothDevices) {
  LLM_SKIP_WITHOUT_GPU();
  const Tensor a = values({3}, 1), b = values({3}, 2).to(Device::cuda());
  EXPECT_EQ(error_of([&] { ops::add(a, b); }), "add: tensors are on different devices (cpu and cuda:0)");
  EXPECT_EQ(error_of([&] { ops::mul(b, a); }), "mul: tensors are on different devices (cuda:0 and cpu)");
}

}  // namespace
}  // namespace llm::testing
