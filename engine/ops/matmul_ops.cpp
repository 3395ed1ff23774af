// matmul (plain, transposed, batched) and linear (alone, or fused with gelu or a residual add).
#include "engine/ops/op_util.h"
#include "engine/ops/ops.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/fused.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/quant.h"

#ifdef LLM_HAVE_CUDA
#include "kernels/cuda/fused.h"
#include "kernels/cuda/gemm.h"
#endif

namespace llm::ops {

using autograd::Node;
using autograd::SavedTensor;
using detail::cpu_f32;
using detail::float_input;
using detail::record_op;

namespace {
MatmulBackend g_matmul_backend = MatmulBackend::kAuto;
}  // namespace

void set_matmul_backend(MatmulBackend backend) { g_matmul_backend = backend; }
MatmulBackend matmul_backend() { return g_matmul_backend; }

MatmulBackend parse_matmul_backend(const std::string& name) {
  if (name == "native") return MatmulBackend::kNative;
  if (name == "cublas") return MatmulBackend::kCublas;
  if (name == "auto") return MatmulBackend::kAuto;
  if (name == "simple") return MatmulBackend::kSimple;
  throw Error("unknown matmul backend '" + name + "' (expected native, cublas, auto or simple)");
}

const char* to_string(MatmulBackend backend) {
  switch (backend) {
    case MatmulBackend::kNative: return "native";
    case MatmulBackend::kCublas: return "cublas";
    case MatmulBackend::kAuto: return "auto";
    case MatmulBackend::kSimple: return "simple";
  }
  return "?";
}

#ifdef LLM_HAVE_CUDA
namespace {
cuda::GemmBackend gemm_backend() {
  switch (g_matmul_backend) {
    case MatmulBackend::kNative: return cuda::GemmBackend::kNative;
    case MatmulBackend::kCublas: return cuda::GemmBackend::kCublas;
    case MatmulBackend::kSimple: return cuda::GemmBackend::kSimple;
    case MatmulBackend::kAuto: break;
  }
  return cuda::GemmBackend::kAuto;
}

using detail::bf16_operand;

// Whether t, as rows of its last dimension, is a matrix a GEMM reads in place: each row contiguous,
// rows in order a fixed stride apart (every dimension above the last two packed), 16-byte aligned.
// Besides contiguous tensors, that is the row-padded gradient cross_entropy returns on CUDA.
bool gemm_rows(const Tensor& t) {
  if (t.dim() < 2 || t.stride(-1) != 1 || t.stride(-2) < t.size(-1) || t.stride(-2) % 8 != 0) return false;
  for (int d = 0; d + 2 < t.dim(); ++d)
    if (t.stride(d) != t.stride(d + 1) * t.size(d + 1)) return false;
  return true;
}
// A linear layer's output gradient as its backward GEMMs' operand: bf16 rows read in place where
// gemm_rows allows (the row stride is then t.stride(-2)), else a contiguous bf16 copy.
Tensor bf16_rows_operand(const Tensor& t) {
  return t.dtype() == DType::BF16 && gemm_rows(t) ? t.detach() : bf16_operand(t);
}
int64_t row_stride(const Tensor& t) { return t.dim() >= 2 ? t.stride(-2) : t.size(-1); }

// What cuda_gemm adds to the product (gemm.h's epilogue): an fp32 bias row, gelu (keeping the value
// before it in *pre_gelu), a residual of C's shape and dtype; lda > 0: A's rows are that many
// elements apart (a single product of row-padded A), else A is dense.
struct GemmExtras {
  Tensor bias;
  bool gelu = false;
  Tensor* pre_gelu = nullptr;
  Tensor residual;
  int64_t lda = 0;
};

// C (new, contiguous, out_dtype) = op(A)·op(B) for `batch` products of contiguous operands, A and B
// bf16 (stride_b 0: B shared), with the extras' epilogue.
Tensor cuda_gemm(const Tensor& A, const Tensor& B, bool ta, bool tb, int64_t batch, int64_t M, int64_t N, int64_t K,
                 bool b_shared, const Shape& out_shape, DType out_dtype, const GemmExtras& extras = {}) {
  Tensor C = Tensor::empty(out_shape, out_dtype, A.device());
  cuda::Gemm g;
  g.trans_a = ta;
  g.trans_b = tb;
  g.M = M;
  g.N = N;
  g.K = K;
  g.A = detail::ptr<cuda::bf16>(A);
  g.lda = extras.lda > 0 ? extras.lda : ta ? M : K;
  g.B = detail::ptr<cuda::bf16>(B);
  g.ldb = tb ? K : N;
  g.C = C.raw_data();
  g.ldc = N;
  g.c_fp32 = out_dtype == DType::F32;
  g.bias = extras.bias.defined() ? detail::ptr<float>(extras.bias) : nullptr;
  g.gelu = extras.gelu;
  if (extras.pre_gelu) {
    *extras.pre_gelu = Tensor::empty(out_shape, out_dtype, A.device());
    g.pre_gelu = extras.pre_gelu->raw_data();
  }
  g.residual = extras.residual.defined() ? extras.residual.raw_data() : nullptr;
  g.batch = batch;
  g.stride_a = M * K;
  g.stride_b = b_shared ? 0 : K * N;
  g.stride_c = M * N;
  LLM_CHECK(K > 0 || (!extras.bias.defined() && !extras.gelu && !extras.residual.defined()),
            "internal: an empty product with an epilogue");
  if (M > 0 && N > 0 && batch > 0) {
    if (K == 0) C.zero_();
    else cuda::gemm(g, gemm_backend(), detail::stream_of(A));
  }
  return C;
}

// The dtype of a product's result under the mixed-precision rule (ops.h).
DType product_dtype(const Tensor& a, const Tensor& b) {
  return a.dtype() == DType::BF16 || b.dtype() == DType::BF16 ? DType::BF16 : DType::F32;
}
}  // namespace
#endif

namespace {
// The geometry of C = op(A)·op(B) over the last two dims, with `batch` products (B shared when
// b_shared).
struct MatmulDims {
  int64_t batch = 1, M = 0, N = 0, K = 0;
  bool b_shared = false;
};

MatmulDims matmul_dims(const Tensor& a, const Tensor& b, bool ta, bool tb) {
  LLM_CHECK(a.dim() >= 2 && b.dim() >= 2, "matmul: operands need at least 2 dimensions, got ", a.str(), " and ", b.str());
  MatmulDims d;
  d.M = ta ? a.size(-1) : a.size(-2);
  d.K = ta ? a.size(-2) : a.size(-1);
  const int64_t kb = tb ? b.size(-1) : b.size(-2);
  d.N = tb ? b.size(-2) : b.size(-1);
  LLM_CHECK(d.K == kb, "matmul: inner dimensions differ: ", a.shape().str(), (ta ? "ᵀ" : ""), " · ", b.shape().str(),
            (tb ? "ᵀ" : ""), " (", d.K, " vs ", kb, ")");
  d.b_shared = b.dim() == 2 && a.dim() > 2;
  LLM_CHECK(!(d.b_shared && ta), "matmul: trans_a with a batched a and a shared 2-D b is not supported; "
            "transpose a explicitly");
  LLM_CHECK(d.b_shared || a.dim() == b.dim(), "matmul: batch dimensions of ", a.shape().str(), " and ",
            b.shape().str(), " differ");
  for (int i = 0; i < a.dim() - 2; ++i) {
    LLM_CHECK(d.b_shared || a.shape()[i] == b.shape()[i], "matmul: batch dimensions of ", a.shape().str(), " and ",
              b.shape().str(), " differ");
    d.batch *= a.shape()[i];
  }
  return d;
}

// C = op(A)·op(B) into out (contiguous), all contiguous f32 CPU buffers.
void gemm(const MatmulDims& d, bool ta, bool tb, const float* A, const float* B, float* C) {
  const int64_t lda = ta ? d.M : d.K, ldb = tb ? d.K : d.N;
  if (d.b_shared) {  // one tall product: the batch folds into M
    cpu::sgemm(false, tb, d.batch * d.M, d.N, d.K, 1.f, A, lda, B, ldb, 0.f, C, d.N);
  } else {
    cpu::sgemm_batched(d.batch, ta, tb, d.M, d.N, d.K, 1.f, A, lda, d.M * d.K, B, ldb, d.b_shared ? 0 : d.K * d.N,
                       0.f, C, d.N, d.M * d.N);
  }
}

struct MatmulBackward : Node {
  SavedTensor a, b;
  bool ta = false, tb = false;
  std::vector<Tensor> apply(std::vector<Tensor> g) override {
    const Tensor av = a.get(*this), bv = b.get(*this);
    const Tensor gc = g[0].contiguous();
    if (gc.device().is_cuda()) return cuda_apply(av, bv, gc);
    Tensor da, db;
    // C = op(A)·op(B):  dop(A) = dC·op(B)ᵀ,  dop(B) = op(A)ᵀ·dC; a transposed operand takes the
    // transpose of that, which is the same product with the operands swapped.
    if (next_edges[0].fn) da = ta ? matmul(bv, gc, tb, true) : matmul(gc, bv, false, !tb);
    if (next_edges[1].fn) {
      if (bv.dim() == 2 && av.dim() > 2) {  // B shared by the batch: fold the batch into the rows
        const Tensor a2 = av.reshape(Shape{-1, av.size(-1)});
        const Tensor g2 = gc.reshape(Shape{-1, gc.size(-1)});
        db = tb ? matmul(g2, a2, true, false) : matmul(a2, g2, true, false);
      } else {
        db = tb ? matmul(gc, av, true, ta) : matmul(av, gc, !ta, false);
      }
    }
    return {da, db};
  }
  // The same products on the device, each gradient in its operand's dtype.
  std::vector<Tensor> cuda_apply([[maybe_unused]] const Tensor& av, [[maybe_unused]] const Tensor& bv,
                                 [[maybe_unused]] const Tensor& gc) {
    Tensor da, db;
#ifdef LLM_HAVE_CUDA
    const Tensor A = bf16_operand(av), B = bf16_operand(bv), G = bf16_operand(gc);
    const MatmulDims d = matmul_dims(av, bv, ta, tb);
    // dop(A) = G·op(B)ᵀ (M×K); A stored transposed takes (op(B)·Gᵀ)… = op(B)ᵀᵀ·Gᵀ: K×M from B and G.
    if (next_edges[0].fn) {
      if (d.b_shared) {  // the batch folds into M: G [batch·M, N] · op(B)ᵀ
        da = ta ? Tensor() : cuda_gemm(G, B, false, !tb, 1, d.batch * d.M, d.K, d.N, false, av.shape(), av.dtype());
      } else if (ta) {  // dA [K, M] = op(B) · Gᵀ
        da = cuda_gemm(B, G, tb, true, d.batch, d.K, d.M, d.N, false, av.shape(), av.dtype());
      } else {  // dA [M, K] = G · op(B)ᵀ
        da = cuda_gemm(G, B, false, !tb, d.batch, d.M, d.K, d.N, false, av.shape(), av.dtype());
      }
    }
    if (next_edges[1].fn) {
      if (d.b_shared) {  // B shared: fold the batch into the rows of A and G
        db = tb ? cuda_gemm(G, A, true, false, 1, d.N, d.K, d.batch * d.M, false, bv.shape(), bv.dtype())
                : cuda_gemm(A, G, true, false, 1, d.K, d.N, d.batch * d.M, false, bv.shape(), bv.dtype());
      } else if (tb) {  // dB [N, K] = Gᵀ · op(A)
        db = cuda_gemm(G, A, true, ta, d.batch, d.N, d.K, d.M, false, bv.shape(), bv.dtype());
      } else {  // dB [K, N] = op(A)ᵀ · G
        db = cuda_gemm(A, G, !ta, false, d.batch, d.K, d.N, d.M, false, bv.shape(), bv.dtype());
      }
    }
#endif
    return {da, db};
  }
  std::vector<SavedTensor*> saved() override { return {&a, &b}; }
  std::string name() const override { return "MatmulBackward"; }
};
}  // namespace

Tensor matmul(const Tensor& a_in, const Tensor& b_in, bool trans_a, bool trans_b) {
  check_defined(a_in, "matmul", "a");
  check_defined(b_in, "matmul", "b");
  check_same_device(a_in, b_in, "matmul");
  Tensor a = float_input(a_in, "matmul", "a"), b = float_input(b_in, "matmul", "b");
  const MatmulDims d = matmul_dims(a, b, trans_a, trans_b);
  std::vector<int64_t> shape = a.shape().vec();
  shape[shape.size() - 2] = d.M;
  shape[shape.size() - 1] = d.N;
  Tensor out;
  if (a.device().is_cuda()) {
#ifdef LLM_HAVE_CUDA
    out = cuda_gemm(bf16_operand(a), bf16_operand(b), trans_a, trans_b, d.batch, d.M, d.N, d.K, d.b_shared, Shape(shape),
                    product_dtype(a, b));
#endif
  } else {
    out = Tensor::empty(Shape(shape));
    gemm(d, trans_a, trans_b, a.data<float>(), b.data<float>(), out.data<float>());
  }
  record_op<MatmulBackward>({&a_in, &b_in}, {&out}, [&](MatmulBackward& n) {
    n.a = SavedTensor(a);
    n.b = SavedTensor(b);
    n.ta = trans_a;
    n.tb = trans_b;
  });
  return out;
}

namespace {
// y = x·Wᵀ + bias, then optionally gelu (keeping pre = the value before it) and + residual. Inputs in
// order x, w, [bias], [residual].
struct LinearBackward : Node {
  SavedTensor x, w, pre;
  bool has_bias = false, gelu = false, has_residual = false;
  DType bias_dtype = DType::F32, residual_dtype = DType::F32;
  std::vector<Tensor> apply(std::vector<Tensor> g) override {
    const Tensor xv = x.get(*this), wv = w.get(*this);
    // The residual's gradient is the output's; gelu's backward turns the output's into pre's.
    const Tensor gy = gelu ? gelu_grad(pre.get(*this), g[0]) : g[0];
    std::vector<Tensor> grads = gy.device().is_cuda() ? cuda_apply(xv, wv, gy) : cpu_apply(xv, wv, gy);
    if (has_residual) grads.push_back(g[0].to(residual_dtype));
    return grads;
  }
  static Tensor gelu_grad(const Tensor& pv, const Tensor& gy) {
    const Tensor gc = gy.contiguous().to(pv.dtype());
    Tensor d = Tensor::empty(pv.shape(), pv.dtype(), pv.device());
    if (pv.device().is_cuda()) {
#ifdef LLM_HAVE_CUDA
      detail::with_float_type(pv.dtype(), [&](auto t) {
        using T = decltype(t);
        cuda::gelu_backward<T>(pv.numel(), detail::ptr<T>(pv), detail::ptr<T>(gc), detail::ptr<T>(d), detail::stream_of(pv));
      });
#endif
    } else {
      cpu::gelu_backward(pv.numel(), pv.data<float>(), gc.data<float>(), d.data<float>());
    }
    return d;
  }
  std::vector<Tensor> cpu_apply(const Tensor& xv, const Tensor& wv, const Tensor& gy) {
    const int64_t in = wv.size(1), out = wv.size(0), rows = xv.numel() / in;
    const Tensor gc = gy.contiguous();
    Tensor dx, dw, db;
    if (next_edges[0].fn) {  // dx = dy · W
      dx = Tensor::empty(xv.shape());
      cpu::sgemm(false, false, rows, in, out, 1.f, gc.data<float>(), out, wv.data<float>(), in, 0.f, dx.data<float>(), in);
    }
    if (next_edges[1].fn) {  // dW = dyᵀ · x
      dw = Tensor::empty(wv.shape());
      cpu::sgemm(true, false, out, in, rows, 1.f, gc.data<float>(), out, xv.data<float>(), in, 0.f, dw.data<float>(), in);
    }
    if (has_bias && next_edges[2].fn) {
      db = Tensor::empty(Shape{out});
      cpu::sum_rows(rows, out, gc.data<float>(), db.data<float>());
    }
    std::vector<Tensor> grads{dx, dw};
    if (has_bias) grads.push_back(db);
    return grads;
  }
  // dx in x's dtype, dW in W's (fp32 accumulators written as fp32 for f32 master weights), the bias
  // gradient fp32 (converted to the bias's dtype).
  std::vector<Tensor> cuda_apply([[maybe_unused]] const Tensor& xv, [[maybe_unused]] const Tensor& wv,
                                 [[maybe_unused]] const Tensor& gy) {
    std::vector<Tensor> grads(has_bias ? 3 : 2);
#ifdef LLM_HAVE_CUDA
    const int64_t in = wv.size(1), out = wv.size(0), rows = xv.numel() / in;
    const Tensor G = bf16_rows_operand(gy);
    GemmExtras rows_of_g;
    rows_of_g.lda = row_stride(G);
    if (next_edges[0].fn)
      grads[0] = cuda_gemm(G, bf16_operand(wv), false, false, 1, rows, in, out, false, xv.shape(), xv.dtype(), rows_of_g);
    if (next_edges[1].fn)
      grads[1] = cuda_gemm(G, bf16_operand(xv), true, false, 1, out, in, rows, false, wv.shape(), wv.dtype(), rows_of_g);
    if (has_bias && next_edges[2].fn) {
      Tensor db = Tensor::empty(Shape{out}, DType::F32, gy.device());
      cuda::bias_grad(rows, out, detail::ptr<cuda::bf16>(G), rows_of_g.lda, detail::ptr<float>(db), false,
                      detail::stream_of(gy));
      grads[2] = db.to(bias_dtype);
    }
#endif
    return grads;
  }
  std::vector<SavedTensor*> saved() override { return {&x, &w, &pre}; }
  std::string name() const override { return gelu ? "LinearGeluBackward" : has_residual ? "LinearResidualBackward" : "LinearBackward"; }
};

// linear, linear_gelu and linear_residual: y = x·Wᵀ + bias, gelu'd when `gelu`, plus the residual
// when given (gelu and residual are not combined). On CUDA both are the GEMM's epilogue.
Tensor fused_linear(const Tensor& x_in, const Tensor& w_in, const Tensor& bias_in, bool gelu, const Tensor& residual_in,
                    const char* op) {
  check_defined(x_in, op, "x");
  check_defined(w_in, op, "weight");
  check_same_device(x_in, w_in, op);
  if (bias_in.defined()) check_same_device(x_in, bias_in, op);
  Tensor x = float_input(x_in, op, "x"), w = float_input(w_in, op, "weight");
  LLM_CHECK(w.dim() == 2, op, ": weight must be 2-D [out, in], got ", w.str());
  LLM_CHECK(x.dim() >= 1 && x.size(-1) == w.size(1), op, ": input ", x.shape().str(), " has last dimension ",
            x.dim() ? x.size(-1) : 0, ", but the weight ", w.shape().str(), " expects ", w.size(1));
  const int64_t in = w.size(1), out = w.size(0), rows = x.numel() / in;
  Tensor bias;
  if (bias_in.defined()) {
    bias = float_input(bias_in, op, "bias");
    check_shape(bias, Shape{out}, op, "bias");
  }
  std::vector<int64_t> shape = x.shape().vec();
  shape.back() = out;
  Tensor residual;
  if (residual_in.defined()) {
    check_same_device(x_in, residual_in, op);
    residual = float_input(residual_in, op, "residual");
    check_shape(residual, Shape(shape), op, "residual");
  }
  Tensor y, pre;
  if (x.device().is_cuda()) {
#ifdef LLM_HAVE_CUDA
    // y = x·Wᵀ + bias with the fp32 bias in the epilogue; W read as bf16 (an f32 master cast here).
    GemmExtras e;
    e.bias = bias.defined() ? bias.detach().to(DType::F32) : Tensor();
    e.gelu = gelu;
    e.pre_gelu = gelu ? &pre : nullptr;
    const DType y_dtype = product_dtype(x, w);
    if (residual.defined()) e.residual = residual.detach().contiguous().to(y_dtype);
    y = cuda_gemm(bf16_operand(x), bf16_operand(w), false, true, 1, rows, out, in, false, Shape(shape), y_dtype, e);
#endif
  } else {
    y = Tensor::empty(Shape(shape));
    cpu::sgemm(false, true, rows, out, in, 1.f, x.data<float>(), in, w.data<float>(), in, 0.f, y.data<float>(), out,
               bias.defined() ? bias.data<float>() : nullptr);
    if (gelu) {
      pre = y;
      y = Tensor::empty(Shape(shape));
      cpu::gelu_forward(y.numel(), pre.data<float>(), y.data<float>());
    }
    if (residual.defined()) cpu::add(y.numel(), y.data<float>(), residual.contiguous().data<float>(), y.data<float>());
  }
  std::vector<const Tensor*> inputs{&x_in, &w_in};
  if (bias_in.defined()) inputs.push_back(&bias_in);
  if (residual_in.defined()) inputs.push_back(&residual_in);
  record_op<LinearBackward>(inputs, {&y}, [&](LinearBackward& n) {
    n.x = SavedTensor(x);
    n.w = SavedTensor(w);
    n.pre = SavedTensor(pre);
    n.has_bias = bias_in.defined();
    n.gelu = gelu;
    n.has_residual = residual_in.defined();
    n.bias_dtype = bias_in.defined() ? bias_in.dtype() : DType::F32;
    n.residual_dtype = residual_in.defined() ? residual_in.dtype() : DType::F32;
  });
  return y;
}
}  // namespace

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias) { return fused_linear(x, w, bias, false, Tensor(), "linear"); }
Tensor linear_gelu(const Tensor& x, const Tensor& w, const Tensor& bias) {
  return fused_linear(x, w, bias, true, Tensor(), "linear_gelu");
}
Tensor linear_residual(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& residual) {
  check_defined(residual, "linear_residual", "residual");
  return fused_linear(x, w, bias, false, residual, "linear_residual");
}

Q8Matrix quantize_q8(const Tensor& w_in) {
  const Tensor w = cpu_f32(w_in, "quantize_q8", "w");
  LLM_CHECK(w.dim() == 2 && w.size(1) % cpu::kQ8Block == 0, "quantize_q8: needs a [N, K] matrix with K a multiple of ",
            cpu::kQ8Block, ", got ", w.str());
  const int64_t N = w.size(0), K = w.size(1);
  Q8Matrix m{Tensor::empty(Shape{N, K}, DType::U8), Tensor::empty(Shape{N, K / cpu::kQ8Block})};
  cpu::quantize_q8_rows(N, K, w.data<float>(), reinterpret_cast<int8_t*>(m.q.data<uint8_t>()), m.scales.data<float>());
  return m;
}

Tensor linear_q8(const Tensor& x_in, const Q8Matrix& w, const Tensor& bias_in) {
  LLM_CHECK(!autograd::needs_grad({&x_in, &bias_in}), "linear_q8: inference only; run it under NoGradGuard");
  LLM_CHECK(w.defined(), "linear_q8: the weight is not quantized");
  const Tensor x = cpu_f32(x_in, "linear_q8", "x");
  const int64_t N = w.q.size(0), K = w.q.size(1);
  LLM_CHECK(x.dim() >= 1 && x.size(-1) == K, "linear_q8: input ", x.shape().str(), " does not match the weight's ", K,
            " inputs");
  Tensor bias;
  if (bias_in.defined()) {
    bias = cpu_f32(bias_in, "linear_q8", "bias");
    check_shape(bias, Shape{N}, "linear_q8", "bias");
  }
  std::vector<int64_t> shape = x.shape().vec();
  shape.back() = N;
  Tensor y = Tensor::empty(Shape(shape));
  cpu::gemm_q8(x.numel() / K, N, K, x.data<float>(), reinterpret_cast<const int8_t*>(w.q.data<uint8_t>()),
               w.scales.data<float>(), bias.defined() ? bias.data<float>() : nullptr, y.data<float>());
  return y;
}

}  // namespace llm::ops
