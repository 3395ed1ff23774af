// Neural-network ops: activations, softmax, norms, embedding, RoPE, attention, cross-entropy.
#include <algorithm>
#include <cmath>

#include "engine/ops/op_util.h"
#include "engine/ops/ops.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/fused.h"

#ifdef LLM_HAVE_CUDA
#include "kernels/cuda/attention.h"
#include "kernels/cuda/attention_cached.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/fused.h"
#endif

namespace llm::ops {

using autograd::Node;
using autograd::SavedTensor;
using detail::cpu_f32;
using detail::cpu_i32;
using detail::float_input;
using detail::index_input;
using detail::record_op;
#ifdef LLM_HAVE_CUDA
using detail::ptr;
using detail::stream_of;
using detail::with_float_type;
#endif

namespace {
// A parameter (norm weight, bias) as the kernel of an activation of dtype `dtype` reads it: converted
// without a graph node, since the op computes the parameter's gradient in fp32 itself.
Tensor param_as(const Tensor& p, DType dtype) { return p.detach().contiguous().to(dtype); }

// An fp32 gradient returned in the dtype of what it is the gradient of.
Tensor grad_as(const Tensor& g, DType dtype) { return g.to(dtype); }

// Ids or targets checked on the host: a CUDA tensor is copied back for the check (a few KB).
Tensor host_indices(const Tensor& t) { return t.device().is_cpu() ? t : t.to(Device::cpu()); }
}  // namespace

namespace {
// Activations y = f(x) whose backward needs x: one node type, parameterized by the kernels.
using UnaryForward = void (*)(int64_t, const float*, float*);
using UnaryBackward = void (*)(int64_t, const float*, const float*, float*);

enum class Activation { kGelu, kSilu };

struct UnaryBackwardNode : Node {
  SavedTensor x;
  UnaryBackward backward = nullptr;
  Activation activation{};
  const char* op = "";
  std::vector<Tensor> apply(std::vector<Tensor> g) override {
    const Tensor xv = x.get(*this), gc = g[0].contiguous().to(xv.dtype());
    Tensor dx = Tensor::empty(xv.shape(), xv.dtype(), xv.device());
    if (xv.device().is_cuda()) {
#ifdef LLM_HAVE_CUDA
      with_float_type(xv.dtype(), [&](auto t) {
        using T = decltype(t);
        if (activation == Activation::kGelu) cuda::gelu_backward<T>(xv.numel(), ptr<T>(xv), ptr<T>(gc), ptr<T>(dx), stream_of(xv));
        else cuda::silu_backward<T>(xv.numel(), ptr<T>(xv), ptr<T>(gc), ptr<T>(dx), stream_of(xv));
      });
#endif
    } else {
      backward(xv.numel(), xv.data<float>(), gc.data<float>(), dx.data<float>());
    }
    return {dx};
  }
  std::vector<SavedTensor*> saved() override { return {&x}; }
  std::string name() const override { return std::string(op) + "Backward"; }
};

Tensor unary(const Tensor& x_in, const char* op, Activation activation, UnaryForward fwd, UnaryBackward bwd) {
  Tensor x = float_input(x_in, op, "x");
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.device().is_cuda()) {
#ifdef LLM_HAVE_CUDA
    with_float_type(x.dtype(), [&](auto t) {
      using T = decltype(t);
      if (activation == Activation::kGelu) cuda::gelu_forward<T>(x.numel(), ptr<T>(x), ptr<T>(y), stream_of(x));
      else cuda::silu_forward<T>(x.numel(), ptr<T>(x), ptr<T>(y), stream_of(x));
    });
#endif
  } else {
    fwd(x.numel(), x.data<float>(), y.data<float>());
  }
  record_op<UnaryBackwardNode>({&x_in}, {&y}, [&](UnaryBackwardNode& n) {
    n.x = SavedTensor(x);
    n.backward = bwd;
    n.activation = activation;
    n.op = op;
  });
  return y;
}

int64_t rows_of(const Tensor& x) { return x.dim() ? x.numel() / x.size(-1) : 1; }
}  // namespace

Tensor gelu(const Tensor& x) { return unary(x, "Gelu", Activation::kGelu, cpu::gelu_forward, cpu::gelu_backward); }
Tensor silu(const Tensor& x) { return unary(x, "Silu", Activation::kSilu, cpu::silu_forward, cpu::silu_backward); }

namespace {
struct SwigluBackward : Node {
  SavedTensor gate, up;
  std::vector<Tensor> apply(std::vector<Tensor> g) override {
    const Tensor gv = gate.get(*this), uv = up.get(*this), gc = g[0].contiguous().to(gv.dtype());
    Tensor dgate = Tensor::empty(gv.shape(), gv.dtype(), gv.device()), dup = Tensor::empty(uv.shape(), uv.dtype(), uv.device());
    if (gv.device().is_cuda()) {
#ifdef LLM_HAVE_CUDA
      with_float_type(gv.dtype(), [&](auto t) {
        using T = decltype(t);
        cuda::swiglu_backward<T>(gv.numel(), ptr<T>(gv), ptr<T>(uv), ptr<T>(gc), ptr<T>(dgate), ptr<T>(dup), stream_of(gv));
      });
#endif
    } else {
      cpu::swiglu_backward(gv.numel(), gv.data<float>(), uv.data<float>(), gc.data<float>(), dgate.data<float>(),
                           dup.data<float>());
    }
    return {dgate, dup};
  }
  std::vector<SavedTensor*> saved() override { return {&gate, &up}; }
  std::string name() const override { return "SwigluBackward"; }
};
}  // namespace

Tensor swiglu(const Tensor& gate_arg, const Tensor& up_arg) {
  check_defined(gate_arg, "swiglu", "gate");
  check_defined(up_arg, "swiglu", "up");
  const std::vector<Tensor> in = detail::promote({gate_arg, up_arg}, "swiglu");
  const Tensor &gate_in = in[0], &up_in = in[1];
  Tensor gate = float_input(gate_in, "swiglu", "gate"), up = float_input(up_in, "swiglu", "up");
  check_shape(up, gate.shape(), "swiglu", "up");
  Tensor y = Tensor::empty(gate.shape(), gate.dtype(), gate.device());
  if (gate.device().is_cuda()) {
#ifdef LLM_HAVE_CUDA
    with_float_type(gate.dtype(), [&](auto t) {
      using T = decltype(t);
      cuda::swiglu_forward<T>(gate.numel(), ptr<T>(gate), ptr<T>(up), ptr<T>(y), stream_of(gate));
    });
#endif
  } else {
    cpu::swiglu_forward(gate.numel(), gate.data<float>(), up.data<float>(), y.data<float>());
  }
  record_op<SwigluBackward>({&gate_in, &up_in}, {&y}, [&](SwigluBackward& n) {
    n.gate = SavedTensor(gate);
    n.up = SavedTensor(up);
  });
  return y;
}

namespace {
struct SoftmaxBackward : Node {
  SavedTensor y;
  std::vector<Tensor> apply(std::vector<Tensor> g) override {
    const Tensor yv = y.get(*this), gc = g[0].contiguous().to(yv.dtype());
    Tensor dx = Tensor::empty(yv.shape(), yv.dtype(), yv.device());
    if (yv.device().is_cuda()) {
#ifdef LLM_HAVE_CUDA
      with_float_type(yv.dtype(), [&](auto t) {
        using T = decltype(t);
        cuda::softmax_backward<T>(rows_of(yv), yv.size(-1), ptr<T>(yv), ptr<T>(gc), ptr<T>(dx), stream_of(yv));
      });
#endif
    } else {
      cpu::softmax_backward(rows_of(yv), yv.size(-1), yv.data<float>(), gc.data<float>(), dx.data<float>());
    }
    return {dx};
  }
  std::vector<SavedTensor*> saved() override { return {&y}; }
  std::string name() const override { return "SoftmaxBackward"; }
};
}  // namespace

Tensor softmax(const Tensor& x_in) {
  Tensor x = float_input(x_in, "softmax", "x");
  LLM_CHECK(x.dim() >= 1, "softmax: needs at least one dimension, got ", x.str());
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.device().is_cuda()) {
#ifdef LLM_HAVE_CUDA
    with_float_type(x.dtype(), [&](auto t) {
      using T = decltype(t);
      cuda::softmax_forward<T>(rows_of(x), x.size(-1), ptr<T>(x), ptr<T>(y), stream_of(x));
    });
#endif
  } else {
    cpu::softmax_forward(rows_of(x), x.size(-1), x.data<float>(), y.data<float>());
  }
  record_op<SoftmaxBackward>({&x_in}, {&y}, [&](SoftmaxBackward& n) { n.y = SavedTensor(y); });
  return y;
}

namespace {
struct LayerNormBackward : Node {
  SavedTensor x, w, mean, rstd;
  DType w_dtype = DType::F32, b_dtype = DType::F32;
  std::vector<Tensor> apply(std::vector<Tensor> g) override {
    const Tensor xv = x.get(*this), wv = w.get(*this), gc = g[0].contiguous().to(xv.dtype());
    const int64_t C = xv.size(-1);
    if (xv.device().is_cuda()) {
      Tensor dx = Tensor::empty(xv.shape(), xv.dtype(), xv.device());
      Tensor dw = Tensor::empty(Shape{C}, DType::F32, xv.device()), db = Tensor::empty(Shape{C}, DType::F32, xv.device());
#ifdef LLM_HAVE_CUDA
      with_float_type(xv.dtype(), [&](auto t) {
        using T = decltype(t);
        cuda::layernorm_backward<T>(rows_of(xv), C, ptr<T>(gc), ptr<T>(xv), ptr<T>(wv), ptr<float>(mean.get(*this)),
                                    ptr<float>(rstd.get(*this)), ptr<T>(dx), ptr<float>(dw), ptr<float>(db), stream_of(xv));
      });
#endif
      return {dx, grad_as(dw, w_dtype), grad_as(db, b_dtype)};
    }
    Tensor dx = Tensor::empty(xv.shape()), dw = Tensor::empty(Shape{C}), db = Tensor::empty(Shape{C});
    cpu::layernorm_backward(rows_of(xv), C, gc.data<float>(), xv.data<float>(), wv.data<float>(),
                            mean.get(*this).data<float>(), rstd.get(*this).data<float>(), dx.data<float>(),
                            dw.data<float>(), db.data<float>());
    return {dx, dw, db};
  }
  std::vector<SavedTensor*> saved() override { return {&x, &w, &mean, &rstd}; }
  std::string name() const override { return "LayerNormBackward"; }
};
}  // namespace

Tensor layer_norm(const Tensor& x_in, const Tensor& w_in, const Tensor& b_in, float eps) {
  check_defined(x_in, "layer_norm", "x");
  check_same_device(x_in, w_in, "layer_norm");
  check_same_device(x_in, b_in, "layer_norm");
  Tensor x = float_input(x_in, "layer_norm", "x"), w = float_input(w_in, "layer_norm", "weight"),
         b = float_input(b_in, "layer_norm", "bias");
  LLM_CHECK(x.dim() >= 1, "layer_norm: needs at least one dimension, got ", x.str());
  const int64_t C = x.size(-1), N = rows_of(x);
  check_shape(w, Shape{C}, "layer_norm", "weight");
  check_shape(b, Shape{C}, "layer_norm", "bias");
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device()), mean = Tensor::empty(Shape{N}, DType::F32, x.device()),
         rstd = Tensor::empty(Shape{N}, DType::F32, x.device());
  if (x.device().is_cuda()) {
    w = param_as(w, x.dtype());
    b = param_as(b, x.dtype());
#ifdef LLM_HAVE_CUDA
    with_float_type(x.dtype(), [&](auto t) {
      using T = decltype(t);
      cuda::layernorm_forward<T>(N, C, ptr<T>(x), ptr<T>(w), ptr<T>(b), eps, ptr<T>(y), ptr<float>(mean), ptr<float>(rstd),
                                 stream_of(x));
    });
#endif
  } else {
    cpu::layernorm_forward(N, C, x.data<float>(), w.data<float>(), b.data<float>(), eps, y.data<float>(),
                           mean.data<float>(), rstd.data<float>());
  }
  record_op<LayerNormBackward>({&x_in, &w_in, &b_in}, {&y}, [&](LayerNormBackward& n) {
    n.x = SavedTensor(x);
    n.w = SavedTensor(w);
    n.w_dtype = w_in.dtype();
    n.b_dtype = b_in.dtype();
    n.mean = SavedTensor(mean);
    n.rstd = SavedTensor(rstd);
  });
  return y;
}

namespace {
struct RmsNormBackward : Node {
  SavedTensor x, w, rstd;
  DType w_dtype = DType::F32;
  std::vector<Tensor> apply(std::vector<Tensor> g) override {
    const Tensor xv = x.get(*this), wv = w.get(*this), gc = g[0].contiguous().to(xv.dtype());
    const int64_t C = xv.size(-1);
    if (xv.device().is_cuda()) {
      Tensor dx = Tensor::empty(xv.shape(), xv.dtype(), xv.device()), dw = Tensor::empty(Shape{C}, DType::F32, xv.device());
#ifdef LLM_HAVE_CUDA
      with_float_type(xv.dtype(), [&](auto t) {
        using T = decltype(t);
        cuda::rmsnorm_backward<T>(rows_of(xv), C, ptr<T>(gc), ptr<T>(xv), ptr<T>(wv), ptr<float>(rstd.get(*this)), ptr<T>(dx),
                                  ptr<float>(dw), stream_of(xv));
      });
#endif
      return {dx, grad_as(dw, w_dtype)};
    }
    Tensor dx = Tensor::empty(xv.shape()), dw = Tensor::empty(Shape{C});
    cpu::rmsnorm_backward(rows_of(xv), C, gc.data<float>(), xv.data<float>(), wv.data<float>(),
                          rstd.get(*this).data<float>(), dx.data<float>(), dw.data<float>());
    return {dx, dw};
  }
  std::vector<SavedTensor*> saved() override { return {&x, &w, &rstd}; }
  std::string name() const override { return "RmsNormBackward"; }
};
}  // namespace

Tensor rms_norm(const Tensor& x_in, const Tensor& w_in, float eps) {
  check_defined(x_in, "rms_norm", "x");
  check_same_device(x_in, w_in, "rms_norm");
  Tensor x = float_input(x_in, "rms_norm", "x"), w = float_input(w_in, "rms_norm", "weight");
  LLM_CHECK(x.dim() >= 1, "rms_norm: needs at least one dimension, got ", x.str());
  const int64_t C = x.size(-1), N = rows_of(x);
  check_shape(w, Shape{C}, "rms_norm", "weight");
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device()), rstd = Tensor::empty(Shape{N}, DType::F32, x.device());
  if (x.device().is_cuda()) {
    w = param_as(w, x.dtype());
#ifdef LLM_HAVE_CUDA
    with_float_type(x.dtype(), [&](auto t) {
      using T = decltype(t);
      cuda::rmsnorm_forward<T>(N, C, ptr<T>(x), ptr<T>(w), eps, ptr<T>(y), ptr<float>(rstd), stream_of(x));
    });
#endif
  } else {
    cpu::rmsnorm_forward(N, C, x.data<float>(), w.data<float>(), eps, y.data<float>(), rstd.data<float>());
  }
  record_op<RmsNormBackward>({&x_in, &w_in}, {&y}, [&](RmsNormBackward& n) {
    n.x = SavedTensor(x);
    n.w = SavedTensor(w);
    n.w_dtype = w_in.dtype();
    n.rstd = SavedTensor(rstd);
  });
  return y;
}

namespace {
struct EmbeddingBackward : Node {
  SavedTensor ids;
  int64_t V = 0, C = 0;
  DType table_dtype = DType::F32;
  std::vector<Tensor> apply(std::vector<Tensor> g) override {
    const Tensor iv = ids.get(*this), gc = g[0].contiguous();
    if (gc.device().is_cuda()) {
      Tensor dtable = Tensor::empty(Shape{V, C}, DType::F32, gc.device());
#ifdef LLM_HAVE_CUDA
      with_float_type(gc.dtype(), [&](auto t) {
        using T = decltype(t);
        cuda::embedding_backward<T>(iv.numel(), C, V, ptr<int32_t>(iv), ptr<T>(gc), ptr<float>(dtable), stream_of(gc));
      });
#endif
      return {Tensor(), grad_as(dtable, table_dtype)};
    }
    Tensor dtable = Tensor::empty(Shape{V, C});
    cpu::embedding_backward(iv.numel(), C, V, iv.data<int32_t>(), gc.data<float>(), dtable.data<float>());
    return {Tensor(), dtable};
  }
  std::vector<SavedTensor*> saved() override { return {&ids}; }
  std::string name() const override { return "EmbeddingBackward"; }
};
}  // namespace

Tensor embedding(const Tensor& ids_in, const Tensor& table_in) {
  check_defined(ids_in, "embedding", "ids");
  check_same_device(ids_in, table_in, "embedding");
  Tensor ids = index_input(ids_in, "embedding", "ids"), table = float_input(table_in, "embedding", "table");
  LLM_CHECK(table.dim() == 2, "embedding: table must be 2-D [vocab, dim], got ", table.str());
  const int64_t V = table.size(0), C = table.size(1), N = ids.numel();
  const Tensor host_ids = host_indices(ids);
  const int32_t* id = host_ids.data<int32_t>();
  for (int64_t i = 0; i < N; ++i)
    LLM_CHECK(id[i] >= 0 && id[i] < V, "embedding: id ", id[i], " at position ", i, " is outside the vocabulary [0, ", V, ")");
  std::vector<int64_t> shape = ids.shape().vec();
  shape.push_back(C);
  Tensor out = Tensor::empty(Shape(shape), table.dtype(), table.device());
  if (table.device().is_cuda()) {
#ifdef LLM_HAVE_CUDA
    with_float_type(table.dtype(), [&](auto t) {
      using T = decltype(t);
      cuda::embedding_forward<T>(N, C, ptr<int32_t>(ids), ptr<T>(table), ptr<T>(out), stream_of(table));
    });
#endif
  } else {
    cpu::embedding_forward(N, C, id, table.data<float>(), out.data<float>());
  }
  record_op<EmbeddingBackward>({&ids_in, &table_in}, {&out}, [&](EmbeddingBackward& n) {
    n.ids = SavedTensor(ids);
    n.V = V;
    n.C = C;
    n.table_dtype = table.dtype();
  });
  return out;
}

namespace {
// Positions for every token of x [B, T, H, D]: given [T] (shared) or [B, T].
Tensor token_positions(const Tensor& positions_in, int64_t B, int64_t T) {
  Tensor p = index_input(positions_in, "rope", "positions");
  if (p.shape() == Shape{B, T}) return p;
  LLM_CHECK(p.shape() == Shape{T}, "rope: positions must have shape [", T, "] or [", B, ", ", T, "], got ",
            p.shape().str());
  return detail::make_view(p, Shape{B, T}, Shape{0, 1}, p.offset()).contiguous();  // the row repeated B times
}

// x [B, T, H, D] rotated by each token's position (inverse: by minus the angle), on x's device.
Tensor rotate(const Tensor& x, const Tensor& pos, const RopeFrequencies& freqs, cpu::RopeLayout layout, bool inverse) {
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.device().is_cuda()) {
#ifdef LLM_HAVE_CUDA
    with_float_type(x.dtype(), [&](auto t) {
      using T = decltype(t);
      cuda::rope<T>(pos.numel(), x.size(2), x.size(3), ptr<T>(x), ptr<int32_t>(pos), freqs, layout, inverse, ptr<T>(y),
                    stream_of(x));
    });
#endif
  } else {
    cpu::rope(pos.numel(), x.size(2), x.size(3), x.data<float>(), pos.data<int32_t>(), freqs, layout, inverse,
              y.data<float>());
  }
  return y;
}

struct RopeBackward : Node {
  SavedTensor positions;
  RopeFrequencies freqs;
  cpu::RopeLayout layout{};
  std::vector<Tensor> apply(std::vector<Tensor> g) override {
    return {rotate(float_input(g[0], "rope backward", "grad"), positions.get(*this), freqs, layout, true), Tensor()};
  }
  std::vector<SavedTensor*> saved() override { return {&positions}; }
  std::string name() const override { return "RopeBackward"; }
};
}  // namespace

Tensor rope(const Tensor& x_in, const Tensor& positions_in, const RopeFrequencies& freqs, cpu::RopeLayout layout) {
  check_defined(x_in, "rope", "x");
  check_same_device(x_in, positions_in, "rope");
  Tensor x = float_input(x_in, "rope", "x");
  LLM_CHECK(x.dim() == 4, "rope: x must be [B, T, H, D], got ", x.str());
  LLM_CHECK(x.size(3) % 2 == 0, "rope: head dimension ", x.size(3), " must be even");
  const Tensor pos = token_positions(positions_in, x.size(0), x.size(1));
  Tensor y = rotate(x, pos, freqs, layout, false);
  record_op<RopeBackward>({&x_in, &positions_in}, {&y}, [&](RopeBackward& n) {
    n.positions = SavedTensor(pos);
    n.freqs = freqs;
    n.layout = layout;
  });
  return y;
}

namespace {
AttentionBackend g_attention_backend = AttentionBackend::kAuto;

#ifdef LLM_HAVE_CUDA
cuda::AttentionShape cuda_shape(const cpu::AttentionShape& s) {
  return {s.B, s.T, s.Hq, s.Hkv, s.D, s.window, s.q_stride, s.kv_stride};
}
cuda::AttentionKernel attention_kernel() {
  switch (g_attention_backend) {
    case AttentionBackend::kSimple: return cuda::AttentionKernel::kSimple;
    case AttentionBackend::kTensorCore: return cuda::AttentionKernel::kTensorCore;
    case AttentionBackend::kAuto: break;
  }
  return cuda::AttentionKernel::kAuto;
}
using detail::bf16_operand;
#endif

// q, k and v as the kernels read them: three tensors, or (fused) one [B, T, 3·Hq·D] tensor holding
// each token's q, k and v side by side (GPT-2's qkv projection), read through token strides.
struct AttentionInputs {
  Tensor q, k, v;  // fused: all three the same tensor
  bool fused = false;
  // Where the rows of input i (0: q, 1: k, 2: v) start in t: that input, or its gradient (same layout).
  template <class T>
  T* rows(const Tensor& t, int i, const cpu::AttentionShape& s) const {
    return static_cast<T*>(t.raw_data()) + (fused ? i * s.Hq * s.D : 0);
  }
};

struct AttentionBackward : Node {
  SavedTensor q, k, v, doc, out, lse;  // on CUDA q, k, v and out are the bf16 tensors the kernels read
  bool fused = false;                  // q, k, v (and so the gradient) are one fused tensor
  cpu::AttentionShape shape{};
  float scale = 1.f;
  DType dtypes[3] = {DType::F32, DType::F32, DType::F32};  // of the inputs: their gradients' dtypes
  std::vector<Tensor> apply(std::vector<Tensor> g) override {
    AttentionInputs in{q.get(*this), fused ? Tensor() : k.get(*this), fused ? Tensor() : v.get(*this), fused};
    if (fused) in.k = in.v = in.q;
    const Tensor gc = g[0].contiguous();
    const Tensor docv = doc.defined() ? doc.get(*this) : Tensor();
    const bool on_cuda = gc.device().is_cuda();
    const DType grad_dtype = on_cuda ? DType::BF16 : DType::F32;
    Tensor dq = Tensor::empty(in.q.shape(), grad_dtype, gc.device());
    Tensor dk = fused ? dq : Tensor::empty(in.k.shape(), grad_dtype, gc.device());
    Tensor dv = fused ? dq : Tensor::empty(in.v.shape(), grad_dtype, gc.device());
    const cpu::AttentionShape& s = shape;
    if (on_cuda) {
#ifdef LLM_HAVE_CUDA
      using bf16 = cuda::bf16;
      const cuda::AttentionShape cs = cuda_shape(s);
      const Tensor dout = bf16_operand(gc);
      Tensor work = Tensor::empty(Shape{static_cast<int64_t>(cuda::attention_backward_workspace_bytes(cs))}, DType::U8,
                                  gc.device());
      cuda::attention_backward(cs, in.rows<const bf16>(in.q, 0, s), in.rows<const bf16>(in.k, 1, s),
                               in.rows<const bf16>(in.v, 2, s), docv.defined() ? ptr<int32_t>(docv) : nullptr, scale,
                               ptr<bf16>(out.get(*this)), ptr<float>(lse.get(*this)), ptr<bf16>(dout),
                               in.rows<bf16>(dq, 0, s), in.rows<bf16>(dk, 1, s), in.rows<bf16>(dv, 2, s), work.raw_data(),
                               stream_of(gc), attention_kernel());
#endif
    } else {
      cpu::attention_backward(s, in.rows<const float>(in.q, 0, s), in.rows<const float>(in.k, 1, s),
                              in.rows<const float>(in.v, 2, s), docv.defined() ? docv.data<int32_t>() : nullptr, scale,
                              out.get(*this).data<float>(), lse.get(*this).data<float>(), gc.data<float>(),
                              in.rows<float>(dq, 0, s), in.rows<float>(dk, 1, s), in.rows<float>(dv, 2, s));
    }
    if (fused) return {dq.to(dtypes[0]), Tensor()};
    return {dq.to(dtypes[0]), dk.to(dtypes[1]), dv.to(dtypes[2]), Tensor()};
  }
  std::vector<SavedTensor*> saved() override { return {&q, &k, &v, &doc, &out, &lse}; }
  std::string name() const override { return "AttentionBackward"; }
};

// The forward for attention() and attention_qkv(): `inputs` are the op's graph inputs (q, k, v or
// qkv, then doc), s the shape with its token strides.
Tensor attention_forward_op(AttentionInputs in, const cpu::AttentionShape& s, const Tensor& doc_in, float scale,
                            const std::vector<const Tensor*>& inputs) {
  Tensor doc;
  if (doc_in.defined()) {
    doc = index_input(doc_in, "attention", "doc");
    check_shape(doc, Shape{s.B, s.T}, "attention", "doc");
  }
  const float sc = scale > 0.f ? scale : 1.f / std::sqrt(static_cast<float>(s.D));
  Tensor lse = Tensor::empty(Shape{s.B, s.Hq, s.T}, DType::F32, in.q.device());
  Tensor out, result;  // out: what the kernel wrote (and backward reads); result: in the op's output dtype
  const DType dtypes[3] = {in.q.dtype(), in.k.dtype(), in.v.dtype()};
  const Shape out_shape{s.B, s.T, s.Hq, s.D};
  if (in.q.device().is_cuda()) {
#ifdef LLM_HAVE_CUDA
    // bf16 tensor-core kernels; f32 inputs are read as bf16 and an all-f32 call returns f32.
    in.q = bf16_operand(in.q);
    in.k = in.fused ? in.q : bf16_operand(in.k);
    in.v = in.fused ? in.q : bf16_operand(in.v);
    using bf16 = cuda::bf16;
    out = Tensor::empty(out_shape, DType::BF16, in.q.device());
    cuda::attention_forward(cuda_shape(s), in.rows<const bf16>(in.q, 0, s), in.rows<const bf16>(in.k, 1, s),
                            in.rows<const bf16>(in.v, 2, s),
                            doc.defined() ? ptr<int32_t>(doc) : nullptr, sc, ptr<cuda::bf16>(out), ptr<float>(lse),
                            stream_of(in.q), attention_kernel());
    const bool any_bf16 = dtypes[0] == DType::BF16 || dtypes[1] == DType::BF16 || dtypes[2] == DType::BF16;
    result = any_bf16 ? out : out.to(DType::F32);
#endif
  } else {
    in.q = in.q.contiguous();
    in.k = in.fused ? in.q : in.k.contiguous();
    in.v = in.fused ? in.q : in.v.contiguous();
    out = result = Tensor::empty(out_shape);
    cpu::attention_forward(s, in.rows<const float>(in.q, 0, s), in.rows<const float>(in.k, 1, s),
                           in.rows<const float>(in.v, 2, s),
                           doc.defined() ? doc.data<int32_t>() : nullptr, sc, out.data<float>(), lse.data<float>());
  }
  record_op<AttentionBackward>(inputs, {&result}, [&](AttentionBackward& n) {
    n.q = SavedTensor(in.q);
    if (!in.fused) {
      n.k = SavedTensor(in.k);
      n.v = SavedTensor(in.v);
    }
    n.fused = in.fused;
    n.doc = SavedTensor(doc);
    n.out = SavedTensor(out);
    n.lse = SavedTensor(lse);
    n.shape = s;
    n.scale = sc;
    for (int i = 0; i < 3; ++i) n.dtypes[i] = dtypes[i];
  });
  return result;
}
}  // namespace

void set_attention_backend(AttentionBackend backend) { g_attention_backend = backend; }
AttentionBackend attention_backend() { return g_attention_backend; }

AttentionBackend parse_attention_backend(const std::string& name) {
  if (name == "auto") return AttentionBackend::kAuto;
  if (name == "simple") return AttentionBackend::kSimple;
  if (name == "tensor_core") return AttentionBackend::kTensorCore;
  throw Error("unknown attention backend '" + name + "' (expected auto, simple or tensor_core)");
}

const char* to_string(AttentionBackend backend) {
  switch (backend) {
    case AttentionBackend::kAuto: return "auto";
    case AttentionBackend::kSimple: return "simple";
    case AttentionBackend::kTensorCore: return "tensor_core";
  }
  return "?";
}

Tensor attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const Tensor& doc_in, float scale,
                 int64_t window) {
  check_defined(q_in, "attention", "q");
  check_same_device(q_in, k_in, "attention");
  check_same_device(q_in, v_in, "attention");
  if (doc_in.defined()) check_same_device(q_in, doc_in, "attention");
  const Tensor q = float_input(q_in, "attention", "q"), k = float_input(k_in, "attention", "k"),
               v = float_input(v_in, "attention", "v");
  LLM_CHECK(q.dim() == 4, "attention: q must be [B, T, Hq, D], got ", q.str());
  const cpu::AttentionShape s{q.size(0), q.size(1), q.size(2), k.dim() == 4 ? k.size(2) : 0, q.size(3), window};
  check_shape(k, Shape{s.B, s.T, s.Hkv, s.D}, "attention", "k");
  check_shape(v, k.shape(), "attention", "v");
  LLM_CHECK(s.Hkv > 0 && s.Hq % s.Hkv == 0, "attention: ", s.Hq, " query heads are not a multiple of ", s.Hkv,
            " key/value heads");
  return attention_forward_op({q, k, v, false}, s, doc_in, scale, {&q_in, &k_in, &v_in, &doc_in});
}

Tensor attention_qkv(const Tensor& qkv_in, int64_t heads, const Tensor& doc_in, float scale) {
  check_defined(qkv_in, "attention_qkv", "qkv");
  if (doc_in.defined()) check_same_device(qkv_in, doc_in, "attention_qkv");
  const Tensor qkv = float_input(qkv_in, "attention_qkv", "qkv");
  LLM_CHECK(qkv.dim() == 3 && heads > 0 && qkv.size(2) % (3 * heads) == 0, "attention_qkv: qkv must be [B, T, 3·",
            heads, "·D] for ", heads, " heads, got ", qkv.str());
  const int64_t C = qkv.size(2) / 3;
  cpu::AttentionShape s{qkv.size(0), qkv.size(1), heads, heads, C / heads};
  s.q_stride = s.kv_stride = 3 * C;
  return attention_forward_op({qkv, qkv, qkv, true}, s, doc_in, scale, {&qkv_in, &doc_in});
}

Tensor attention_cached(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const Tensor& past_in, float scale,
                        int64_t window) {
  LLM_CHECK(!autograd::needs_grad({&q_in, &k_in, &v_in}), "attention_cached: inference only; run it under NoGradGuard");
  check_defined(q_in, "attention_cached", "q");
  check_same_device(q_in, k_in, "attention_cached");
  check_same_device(q_in, v_in, "attention_cached");
  check_same_device(q_in, past_in, "attention_cached");
  const bool on_cuda = q_in.device().is_cuda();
  Tensor q = on_cuda ? float_input(q_in, "attention_cached", "q") : cpu_f32(q_in, "attention_cached", "q");
  Tensor k = on_cuda ? float_input(k_in, "attention_cached", "k_cache") : cpu_f32(k_in, "attention_cached", "k_cache");
  Tensor v = on_cuda ? float_input(v_in, "attention_cached", "v_cache") : cpu_f32(v_in, "attention_cached", "v_cache");
  const Tensor past = on_cuda ? index_input(past_in, "attention_cached", "past") : cpu_i32(past_in, "attention_cached", "past");
  LLM_CHECK(q.dim() == 4 && k.dim() == 4, "attention_cached: q and the caches must be 4-D, got ", q.str(), " and ", k.str());
  const int64_t B = q.size(0), Tq = q.size(1), Hq = q.size(2), D = q.size(3), S = k.size(1), Hkv = k.size(2);
  check_shape(k, Shape{B, S, Hkv, D}, "attention_cached", "k_cache");
  check_shape(v, k.shape(), "attention_cached", "v_cache");
  check_shape(past, Shape{B}, "attention_cached", "past");
  LLM_CHECK(Hkv > 0 && Hq % Hkv == 0, "attention_cached: ", Hq, " query heads are not a multiple of ", Hkv, " kv heads");
  const float sc = scale > 0.f ? scale : 1.f / std::sqrt(static_cast<float>(D));
  if (on_cuda) {
    Tensor result;
#ifdef LLM_HAVE_CUDA
    check_dtype(v, k.dtype(), "attention_cached", "v_cache");
    const Tensor qc = q.to(k.dtype());
    const Tensor out = Tensor::empty(q.shape(), k.dtype(), q.device());
    with_float_type(k.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cuda::attention_cached_forward<T>(B, Tq, S, Hq, Hkv, D, ptr<T>(qc), ptr<T>(k), ptr<T>(v), ptr<int32_t>(past), sc,
                                        ptr<T>(out), window, stream_of(q));
    });
    result = q.dtype() == DType::BF16 ? out.to(DType::BF16) : out;
#endif
    return result;
  }
  Tensor out = Tensor::empty(q.shape());
  cpu::attention_cached_forward(B, Tq, S, Hq, Hkv, D, q.data<float>(), k.data<float>(), v.data<float>(),
                                past.data<int32_t>(), sc, out.data<float>(), window);
  return out;
}

void kv_cache_write(const Tensor& x_in, const Tensor& past_in, const Tensor& n_new_in, const Tensor& cache) {
  LLM_CHECK(!autograd::needs_grad({&x_in}), "kv_cache_write: inference only; run it under NoGradGuard");
  check_defined(cache, "kv_cache_write", "cache");
  check_same_device(cache, x_in, "kv_cache_write");
  check_same_device(cache, past_in, "kv_cache_write");
  check_same_device(cache, n_new_in, "kv_cache_write");
  LLM_CHECK(cache.dim() == 4 && cache.is_contiguous(), "kv_cache_write: the cache must be a contiguous [B, S, H, D] tensor, got ",
            cache.str());
  const int64_t B = cache.size(0), S = cache.size(1), row = cache.size(2) * cache.size(3);
  LLM_CHECK(x_in.dim() == 4 && x_in.size(0) == B && x_in.size(2) == cache.size(2) && x_in.size(3) == cache.size(3),
            "kv_cache_write: x ", x_in.str(), " does not fit the cache ", cache.str());
  const int64_t T = x_in.size(1);
  if (cache.device().is_cuda()) {
#ifdef LLM_HAVE_CUDA
    const Tensor x = float_input(x_in, "kv_cache_write", "x").to(cache.dtype());
    const Tensor past = index_input(past_in, "kv_cache_write", "past"), n_new = index_input(n_new_in, "kv_cache_write", "n_new");
    check_shape(past, Shape{B}, "kv_cache_write", "past");
    check_shape(n_new, Shape{B}, "kv_cache_write", "n_new");
    with_float_type(cache.dtype(), [&](auto tag) {
      using E = decltype(tag);
      cuda::kv_cache_write<E>(B, T, S, row, ptr<E>(x), ptr<int32_t>(past), ptr<int32_t>(n_new), ptr<E>(cache),
                              stream_of(cache));
    });
#endif
  } else {
    check_dtype(cache, DType::F32, "kv_cache_write", "cache");
    const Tensor x = cpu_f32(x_in, "kv_cache_write", "x");
    const Tensor past = cpu_i32(past_in, "kv_cache_write", "past"), n_new = cpu_i32(n_new_in, "kv_cache_write", "n_new");
    check_shape(past, Shape{B}, "kv_cache_write", "past");
    check_shape(n_new, Shape{B}, "kv_cache_write", "n_new");
    for (int64_t b = 0; b < B; ++b) {
      const int32_t p = past.data<int32_t>()[b], n = n_new.data<int32_t>()[b];
      LLM_CHECK(p >= 0 && n >= 0 && n <= T && p + n <= S, "kv_cache_write: row ", b, " writes slots ", p, " .. ", p + n,
                " of a cache of ", S, " (", T, " new positions)");
      std::copy_n(x.data<float>() + b * T * row, n * row, cache.data<float>() + (b * S + p) * row);
    }
  }
  cache.storage()->bump_version();
}

namespace {
// Per-row losses (lse − logit of the target, 0 for ignored rows) and log-sum-exps, f32 [N], on the
// logits' device. Targets are range-checked on the host (copied back from CUDA: N int32); returns
// how many rows are not ignored.
int64_t cross_entropy_rows(const Tensor& logits, const Tensor& targets, int32_t ignore_index, const char* op,
                           Tensor* losses, Tensor* lse) {
  const int64_t V = logits.size(-1), N = rows_of(logits);
  LLM_CHECK(targets.numel() == N, op, ": ", targets.numel(), " targets (", targets.shape().str(), ") for ", N,
            " rows of logits ", logits.shape().str());
  const Tensor host_targets = host_indices(targets);
  const int32_t* t = host_targets.data<int32_t>();
  int64_t counted = 0;
  for (int64_t i = 0; i < N; ++i) {
    if (t[i] == ignore_index) continue;
    LLM_CHECK(t[i] >= 0 && t[i] < V, op, ": target ", t[i], " at row ", i, " is outside [0, ", V,
              ") and is not the ignore index ", ignore_index);
    ++counted;
  }
  *losses = Tensor::empty(Shape{N}, DType::F32, logits.device());
  *lse = Tensor::empty(Shape{N}, DType::F32, logits.device());
  if (logits.device().is_cuda()) {
#ifdef LLM_HAVE_CUDA
    with_float_type(logits.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cuda::cross_entropy_forward<T>(N, V, ptr<T>(logits), ptr<int32_t>(targets), ignore_index, ptr<float>(*losses),
                                     ptr<float>(*lse), stream_of(logits));
    });
#endif
  } else {
    cpu::cross_entropy_forward(N, V, logits.data<float>(), t, ignore_index, losses->data<float>(), lse->data<float>());
  }
  return counted;
}

// dlogits = dloss · (softmax(logits) − onehot(targets)) in the logits' dtype; dloss f32 [N]. On CUDA
// a vocabulary that is not a multiple of 8 (GPT-2's 50257) gets rows padded to one: a view whose rows
// are 16-byte aligned, so the output head's backward GEMMs read it on their tensor-core paths instead
// of a copy or the unaligned fallback.
Tensor cross_entropy_grad(const Tensor& logits, const Tensor& targets, int32_t ignore_index, const Tensor& lse,
                          const Tensor& dloss) {
  const int64_t V = logits.size(-1), N = logits.numel() / V;
  if (logits.device().is_cuda()) {
    Tensor dlogits;
#ifdef LLM_HAVE_CUDA
    const int64_t ld = (V + 7) / 8 * 8;
    if (ld == V) {
      dlogits = Tensor::empty(logits.shape(), logits.dtype(), logits.device());
    } else {
      std::vector<int64_t> padded = logits.shape().vec();
      padded.back() = ld;
      const Tensor rows = Tensor::empty(Shape(padded), logits.dtype(), logits.device());
      dlogits = detail::make_view(rows, logits.shape(), rows.strides(), 0);
    }
    with_float_type(logits.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cuda::cross_entropy_backward<T>(N, V, ptr<T>(logits), ptr<int32_t>(targets), ignore_index, ptr<float>(lse),
                                      ptr<float>(dloss), ptr<T>(dlogits), ld, stream_of(logits));
    });
#endif
    return dlogits;
  }
  Tensor dlogits = Tensor::empty(logits.shape());
  cpu::cross_entropy_backward(N, V, logits.data<float>(), targets.data<int32_t>(), ignore_index, lse.data<float>(),
                              dloss.data<float>(), dlogits.data<float>());
  return dlogits;
}

struct CrossEntropyBackward : Node {
  SavedTensor logits, targets, lse;
  int32_t ignore_index = -100;
  int64_t counted = 0;  // rows not ignored: the mean's denominator
  std::vector<Tensor> apply(std::vector<Tensor> g) override {
    const Tensor lv = logits.get(*this), tv = targets.get(*this);
    const int64_t V = lv.size(-1), N = lv.numel() / V;
    if (lv.device().is_cuda()) {
      // dloss = g / counted for every row, computed on the device from the scalar g (no host read).
      Tensor dloss = Tensor::zeros(Shape{N}, DType::F32, lv.device());
#ifdef LLM_HAVE_CUDA
      const Tensor gv = g[0].to(DType::F32);
      cuda::add<float>(N, ptr<float>(dloss), 1.f, 1, ptr<float>(gv), counted ? 1.f / static_cast<float>(counted) : 0.f,
                       ptr<float>(dloss), stream_of(lv));
#endif
      return {cross_entropy_grad(lv, tv, ignore_index, lse.get(*this), dloss), Tensor()};
    }
    const float per_row = counted ? g[0].item() / static_cast<float>(counted) : 0.f;
    return {cross_entropy_grad(lv, tv, ignore_index, lse.get(*this), Tensor::full(Shape{N}, per_row)), Tensor()};
  }
  std::vector<SavedTensor*> saved() override { return {&logits, &targets, &lse}; }
  std::string name() const override { return "CrossEntropyBackward"; }
};
}  // namespace

Tensor cross_entropy(const Tensor& logits_in, const Tensor& targets_in, int32_t ignore_index) {
  check_defined(logits_in, "cross_entropy", "logits");
  check_same_device(logits_in, targets_in, "cross_entropy");
  Tensor logits = float_input(logits_in, "cross_entropy", "logits"), targets = index_input(targets_in, "cross_entropy", "targets");
  LLM_CHECK(logits.dim() >= 1, "cross_entropy: logits need a vocabulary dimension, got ", logits.str());
  Tensor losses, lse;
  const int64_t counted = cross_entropy_rows(logits, targets, ignore_index, "cross_entropy", &losses, &lse);
  Tensor loss;
  if (logits.device().is_cuda()) {  // the mean over counted rows, a device scalar
    NoGradGuard no_grad;
    loss = ops::scale(ops::sum(losses), counted ? 1.f / static_cast<float>(counted) : 0.f);
  } else {
    const double total = cpu::sum(losses.numel(), losses.data<float>());
    loss = Tensor::full(Shape{}, counted ? total / static_cast<double>(counted) : 0.0);
  }
  record_op<CrossEntropyBackward>({&logits_in, &targets_in}, {&loss}, [&](CrossEntropyBackward& n) {
    n.logits = SavedTensor(logits);
    n.targets = SavedTensor(targets);
    n.lse = SavedTensor(lse);
    n.ignore_index = ignore_index;
    n.counted = counted;
  });
  return loss;
}

namespace {
struct TokenLogprobsBackward : Node {
  SavedTensor logits, targets, lse;
  int32_t ignore_index = -100;
  std::vector<Tensor> apply(std::vector<Tensor> g) override {
    const Tensor lv = logits.get(*this), tv = targets.get(*this);
    const int64_t V = lv.size(-1), N = lv.numel() / V;
    // d logprob / d logits = onehot - softmax: the cross-entropy gradient with the sign flipped.
    const Tensor dloss = ops::scale(float_input(g[0].to(DType::F32), "token_logprobs backward", "grad"), -1.f);
    LLM_CHECK(dloss.numel() == N, "internal: token_logprobs backward got ", dloss.numel(), " gradients for ", N, " rows");
    return {cross_entropy_grad(lv, tv, ignore_index, lse.get(*this), dloss), Tensor()};
  }
  std::vector<SavedTensor*> saved() override { return {&logits, &targets, &lse}; }
  std::string name() const override { return "TokenLogprobsBackward"; }
};
}  // namespace

Tensor token_logprobs(const Tensor& logits_in, const Tensor& targets_in, int32_t ignore_index) {
  check_defined(logits_in, "token_logprobs", "logits");
  check_same_device(logits_in, targets_in, "token_logprobs");
  Tensor logits = float_input(logits_in, "token_logprobs", "logits"), targets = index_input(targets_in, "token_logprobs", "targets");
  LLM_CHECK(logits.dim() >= 1, "token_logprobs: logits need a vocabulary dimension, got ", logits.str());
  Tensor losses, lse;
  cross_entropy_rows(logits, targets, ignore_index, "token_logprobs", &losses, &lse);
  Tensor out;
  {
    NoGradGuard no_grad;
    out = ops::scale(losses, -1.f).view(targets.shape());
  }
  record_op<TokenLogprobsBackward>({&logits_in, &targets_in}, {&out}, [&](TokenLogprobsBackward& n) {
    n.logits = SavedTensor(logits);
    n.targets = SavedTensor(targets);
    n.lse = SavedTensor(lse);
    n.ignore_index = ignore_index;
  });
  return out;
}

}  // namespace llm::ops
