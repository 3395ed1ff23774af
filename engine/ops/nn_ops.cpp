// Neural-network ops: activations, softmax, norms, embedding, RoPE, attention, cross-entropy.
#include <cmath>

#include "engine/ops/op_util.h"
#include "engine/ops/ops.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/fused.h"

namespace llm::ops {

using autograd::Node;
using autograd::SavedTensor;
using detail::cpu_f32;
using detail::cpu_i32;
using detail::record_op;

namespace {
// Activations y = f(x) whose backward needs x: one node type, parameterized by the kernels.
using UnaryForward = void (*)(int64_t, const float*, float*);
using UnaryBackward = void (*)(int64_t, const float*, const float*, float*);

struct UnaryBackwardNode : Node {
  SavedTensor x;
  UnaryBackward backward = nullptr;
  const char* op = "";
  std::vector<Tensor> apply(std::vector<Tensor> g) override {
    const Tensor xv = x.get(*this), gc = g[0].contiguous();
    Tensor dx = Tensor::empty(xv.shape());
    backward(xv.numel(), xv.data<float>(), gc.data<float>(), dx.data<float>());
    return {dx};
  }
  std::vector<SavedTensor*> saved() override { return {&x}; }
  std::string name() const override { return std::string(op) + "Backward"; }
};

Tensor unary(const Tensor& x_in, const char* op, UnaryForward fwd, UnaryBackward bwd) {
  Tensor x = cpu_f32(x_in, op, "x");
  Tensor y = Tensor::empty(x.shape());
  fwd(x.numel(), x.data<float>(), y.data<float>());
  record_op<UnaryBackwardNode>({&x_in}, {&y}, [&](UnaryBackwardNode& n) {
    n.x = SavedTensor(x);
    n.backward = bwd;
    n.op = op;
  });
  return y;
}

int64_t rows_of(const Tensor& x) { return x.dim() ? x.numel() / x.size(-1) : 1; }
}  // namespace

Tensor gelu(const Tensor& x) { return unary(x, "Gelu", cpu::gelu_forward, cpu::gelu_backward); }
Tensor silu(const Tensor& x) { return unary(x, "Silu", cpu::silu_forward, cpu::silu_backward); }

namespace {
struct SwigluBackward : Node {
  SavedTensor gate, up;
  std::vector<Tensor> apply(std::vector<Tensor> g) override {
    const Tensor gv = gate.get(*this), uv = up.get(*this), gc = g[0].contiguous();
    Tensor dgate = Tensor::empty(gv.shape()), dup = Tensor::empty(uv.shape());
    cpu::swiglu_backward(gv.numel(), gv.data<float>(), uv.data<float>(), gc.data<float>(), dgate.data<float>(),
                         dup.data<float>());
    return {dgate, dup};
  }
  std::vector<SavedTensor*> saved() override { return {&gate, &up}; }
  std::string name() const override { return "SwigluBackward"; }
};
}  // namespace

Tensor swiglu(const Tensor& gate_in, const Tensor& up_in) {
  Tensor gate = cpu_f32(gate_in, "swiglu", "gate"), up = cpu_f32(up_in, "swiglu", "up");
  check_shape(up, gate.shape(), "swiglu", "up");
  Tensor y = Tensor::empty(gate.shape());
  cpu::swiglu_forward(gate.numel(), gate.data<float>(), up.data<float>(), y.data<float>());
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
    const Tensor yv = y.get(*this), gc = g[0].contiguous();
    Tensor dx = Tensor::empty(yv.shape());
    cpu::softmax_backward(rows_of(yv), yv.size(-1), yv.data<float>(), gc.data<float>(), dx.data<float>());
    return {dx};
  }
  std::vector<SavedTensor*> saved() override { return {&y}; }
  std::string name() const override { return "SoftmaxBackward"; }
};
}  // namespace

Tensor softmax(const Tensor& x_in) {
  Tensor x = cpu_f32(x_in, "softmax", "x");
  LLM_CHECK(x.dim() >= 1, "softmax: needs at least one dimension, got ", x.str());
  Tensor y = Tensor::empty(x.shape());
  cpu::softmax_forward(rows_of(x), x.size(-1), x.data<float>(), y.data<float>());
  record_op<SoftmaxBackward>({&x_in}, {&y}, [&](SoftmaxBackward& n) { n.y = SavedTensor(y); });
  return y;
}

namespace {
struct LayerNormBackward : Node {
  SavedTensor x, w, mean, rstd;
  std::vector<Tensor> apply(std::vector<Tensor> g) override {
    const Tensor xv = x.get(*this), wv = w.get(*this), gc = g[0].contiguous();
    const int64_t C = xv.size(-1);
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
  Tensor x = cpu_f32(x_in, "layer_norm", "x"), w = cpu_f32(w_in, "layer_norm", "weight"),
         b = cpu_f32(b_in, "layer_norm", "bias");
  LLM_CHECK(x.dim() >= 1, "layer_norm: needs at least one dimension, got ", x.str());
  const int64_t C = x.size(-1), N = rows_of(x);
  check_shape(w, Shape{C}, "layer_norm", "weight");
  check_shape(b, Shape{C}, "layer_norm", "bias");
  Tensor y = Tensor::empty(x.shape()), mean = Tensor::empty(Shape{N}), rstd = Tensor::empty(Shape{N});
  cpu::layernorm_forward(N, C, x.data<float>(), w.data<float>(), b.data<float>(), eps, y.data<float>(),
                         mean.data<float>(), rstd.data<float>());
  record_op<LayerNormBackward>({&x_in, &w_in, &b_in}, {&y}, [&](LayerNormBackward& n) {
    n.x = SavedTensor(x);
    n.w = SavedTensor(w);
    n.mean = SavedTensor(mean);
    n.rstd = SavedTensor(rstd);
  });
  return y;
}

namespace {
struct RmsNormBackward : Node {
  SavedTensor x, w, rstd;
  std::vector<Tensor> apply(std::vector<Tensor> g) override {
    const Tensor xv = x.get(*this), wv = w.get(*this), gc = g[0].contiguous();
    const int64_t C = xv.size(-1);
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
  Tensor x = cpu_f32(x_in, "rms_norm", "x"), w = cpu_f32(w_in, "rms_norm", "weight");
  LLM_CHECK(x.dim() >= 1, "rms_norm: needs at least one dimension, got ", x.str());
  const int64_t C = x.size(-1), N = rows_of(x);
  check_shape(w, Shape{C}, "rms_norm", "weight");
  Tensor y = Tensor::empty(x.shape()), rstd = Tensor::empty(Shape{N});
  cpu::rmsnorm_forward(N, C, x.data<float>(), w.data<float>(), eps, y.data<float>(), rstd.data<float>());
  record_op<RmsNormBackward>({&x_in, &w_in}, {&y}, [&](RmsNormBackward& n) {
    n.x = SavedTensor(x);
    n.w = SavedTensor(w);
    n.rstd = SavedTensor(rstd);
  });
  return y;
}

namespace {
struct EmbeddingBackward : Node {
  SavedTensor ids;
  int64_t V = 0, C = 0;
  std::vector<Tensor> apply(std::vector<Tensor> g) override {
    const Tensor iv = ids.get(*this), gc = g[0].contiguous();
    Tensor dtable = Tensor::empty(Shape{V, C});
    cpu::embedding_backward(iv.numel(), C, V, iv.data<int32_t>(), gc.data<float>(), dtable.data<float>());
    return {Tensor(), dtable};
  }
  std::vector<SavedTensor*> saved() override { return {&ids}; }
  std::string name() const override { return "EmbeddingBackward"; }
};
}  // namespace

Tensor embedding(const Tensor& ids_in, const Tensor& table_in) {
  Tensor ids = cpu_i32(ids_in, "embedding", "ids"), table = cpu_f32(table_in, "embedding", "table");
  LLM_CHECK(table.dim() == 2, "embedding: table must be 2-D [vocab, dim], got ", table.str());
  const int64_t V = table.size(0), C = table.size(1), N = ids.numel();
  const int32_t* id = ids.data<int32_t>();
  for (int64_t i = 0; i < N; ++i)
    LLM_CHECK(id[i] >= 0 && id[i] < V, "embedding: id ", id[i], " at position ", i, " is outside the vocabulary [0, ", V, ")");
  std::vector<int64_t> shape = ids.shape().vec();
  shape.push_back(C);
  Tensor out = Tensor::empty(Shape(shape));
  cpu::embedding_forward(N, C, id, table.data<float>(), out.data<float>());
  record_op<EmbeddingBackward>({&ids_in, &table_in}, {&out}, [&](EmbeddingBackward& n) {
    n.ids = SavedTensor(ids);
    n.V = V;
    n.C = C;
  });
  return out;
}

namespace {
// Positions for every token of x [B, T, H, D]: given [T] (shared) or [B, T].
Tensor token_positions(const Tensor& positions_in, int64_t B, int64_t T) {
  Tensor p = cpu_i32(positions_in, "rope", "positions");
  if (p.shape() == Shape{B, T}) return p;
  LLM_CHECK(p.shape() == Shape{T}, "rope: positions must have shape [", T, "] or [", B, ", ", T, "], got ",
            p.shape().str());
  Tensor all = Tensor::empty(Shape{B, T}, DType::I32);
  for (int64_t b = 0; b < B; ++b) std::copy(p.data<int32_t>(), p.data<int32_t>() + T, all.data<int32_t>() + b * T);
  return all;
}

struct RopeBackward : Node {
  SavedTensor positions;
  float theta = 0.f;
  cpu::RopeLayout layout{};
  std::vector<Tensor> apply(std::vector<Tensor> g) override {
    const Tensor gc = g[0].contiguous(), pv = positions.get(*this);
    Tensor dx = Tensor::empty(gc.shape());
    cpu::rope(pv.numel(), gc.size(2), gc.size(3), gc.data<float>(), pv.data<int32_t>(), theta, layout, true,
              dx.data<float>());
    return {dx, Tensor()};
  }
  std::vector<SavedTensor*> saved() override { return {&positions}; }
  std::string name() const override { return "RopeBackward"; }
};
}  // namespace

Tensor rope(const Tensor& x_in, const Tensor& positions_in, float theta, cpu::RopeLayout layout) {
  Tensor x = cpu_f32(x_in, "rope", "x");
  LLM_CHECK(x.dim() == 4, "rope: x must be [B, T, H, D], got ", x.str());
  LLM_CHECK(x.size(3) % 2 == 0, "rope: head dimension ", x.size(3), " must be even");
  const Tensor pos = token_positions(positions_in, x.size(0), x.size(1));
  Tensor y = Tensor::empty(x.shape());
  cpu::rope(pos.numel(), x.size(2), x.size(3), x.data<float>(), pos.data<int32_t>(), theta, layout, false,
            y.data<float>());
  record_op<RopeBackward>({&x_in, &positions_in}, {&y}, [&](RopeBackward& n) {
    n.positions = SavedTensor(pos);
    n.theta = theta;
    n.layout = layout;
  });
  return y;
}

namespace {
struct AttentionBackward : Node {
  SavedTensor q, k, v, doc, out, lse;
  cpu::AttentionShape shape{};
  float scale = 1.f;
  std::vector<Tensor> apply(std::vector<Tensor> g) override {
    const Tensor qv = q.get(*this), kv = k.get(*this), vv = v.get(*this), gc = g[0].contiguous();
    const Tensor docv = doc.defined() ? doc.get(*this) : Tensor();
    Tensor dq = Tensor::empty(qv.shape()), dk = Tensor::empty(kv.shape()), dv = Tensor::empty(vv.shape());
    cpu::attention_backward(shape, qv.data<float>(), kv.data<float>(), vv.data<float>(),
                            docv.defined() ? docv.data<int32_t>() : nullptr, scale, out.get(*this).data<float>(),
                            lse.get(*this).data<float>(), gc.data<float>(), dq.data<float>(), dk.data<float>(),
                            dv.data<float>());
    return {dq, dk, dv, Tensor()};
  }
  std::vector<SavedTensor*> saved() override { return {&q, &k, &v, &doc, &out, &lse}; }
  std::string name() const override { return "AttentionBackward"; }
};
}  // namespace

Tensor attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const Tensor& doc_in, float scale,
                 int64_t window) {
  Tensor q = cpu_f32(q_in, "attention", "q"), k = cpu_f32(k_in, "attention", "k"), v = cpu_f32(v_in, "attention", "v");
  LLM_CHECK(q.dim() == 4, "attention: q must be [B, T, Hq, D], got ", q.str());
  const cpu::AttentionShape s{q.size(0), q.size(1), q.size(2), k.dim() == 4 ? k.size(2) : 0, q.size(3), window};
  check_shape(k, Shape{s.B, s.T, s.Hkv, s.D}, "attention", "k");
  check_shape(v, k.shape(), "attention", "v");
  LLM_CHECK(s.Hkv > 0 && s.Hq % s.Hkv == 0, "attention: ", s.Hq, " query heads are not a multiple of ", s.Hkv,
            " key/value heads");
  Tensor doc;
  if (doc_in.defined()) {
    doc = cpu_i32(doc_in, "attention", "doc");
    check_shape(doc, Shape{s.B, s.T}, "attention", "doc");
  }
  const float sc = scale > 0.f ? scale : 1.f / std::sqrt(static_cast<float>(s.D));
  Tensor out = Tensor::empty(q.shape()), lse = Tensor::empty(Shape{s.B, s.Hq, s.T});
  cpu::attention_forward(s, q.data<float>(), k.data<float>(), v.data<float>(),
                         doc.defined() ? doc.data<int32_t>() : nullptr, sc, out.data<float>(), lse.data<float>());
  record_op<AttentionBackward>({&q_in, &k_in, &v_in, &doc_in}, {&out}, [&](AttentionBackward& n) {
    n.q = SavedTensor(q);
    n.k = SavedTensor(k);
    n.v = SavedTensor(v);
    n.doc = SavedTensor(doc);
    n.out = SavedTensor(out);
    n.lse = SavedTensor(lse);
    n.shape = s;
    n.scale = sc;
  });
  return out;
}

Tensor attention_cached(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const Tensor& past_in, float scale,
                        int64_t window) {
  LLM_CHECK(!autograd::needs_grad({&q_in, &k_in, &v_in}), "attention_cached: inference only; run it under NoGradGuard");
  Tensor q = cpu_f32(q_in, "attention_cached", "q"), k = cpu_f32(k_in, "attention_cached", "k_cache"),
         v = cpu_f32(v_in, "attention_cached", "v_cache"), past = cpu_i32(past_in, "attention_cached", "past");
  LLM_CHECK(q.dim() == 4 && k.dim() == 4, "attention_cached: q and the caches must be 4-D, got ", q.str(), " and ", k.str());
  const int64_t B = q.size(0), Tq = q.size(1), Hq = q.size(2), D = q.size(3), S = k.size(1), Hkv = k.size(2);
  check_shape(k, Shape{B, S, Hkv, D}, "attention_cached", "k_cache");
  check_shape(v, k.shape(), "attention_cached", "v_cache");
  check_shape(past, Shape{B}, "attention_cached", "past");
  LLM_CHECK(Hkv > 0 && Hq % Hkv == 0, "attention_cached: ", Hq, " query heads are not a multiple of ", Hkv, " kv heads");
  Tensor out = Tensor::empty(q.shape());
  cpu::attention_cached_forward(B, Tq, S, Hq, Hkv, D, q.data<float>(), k.data<float>(), v.data<float>(),
                                past.data<int32_t>(), scale > 0.f ? scale : 1.f / std::sqrt(static_cast<float>(D)),
                                out.data<float>(), window);
  return out;
}

namespace {
struct CrossEntropyBackward : Node {
  SavedTensor logits, targets, lse;
  int32_t ignore_index = -100;
  int64_t counted = 0;  // rows not ignored: the mean's denominator
  std::vector<Tensor> apply(std::vector<Tensor> g) override {
    const Tensor lv = logits.get(*this), tv = targets.get(*this);
    const int64_t V = lv.size(-1), N = lv.numel() / V;
    const float per_row = counted ? g[0].item() / static_cast<float>(counted) : 0.f;
    Tensor dloss = Tensor::full(Shape{N}, per_row);
    Tensor dlogits = Tensor::empty(lv.shape());
    cpu::cross_entropy_backward(N, V, lv.data<float>(), tv.data<int32_t>(), ignore_index, lse.get(*this).data<float>(),
                                dloss.data<float>(), dlogits.data<float>());
    return {dlogits, Tensor()};
  }
  std::vector<SavedTensor*> saved() override { return {&logits, &targets, &lse}; }
  std::string name() const override { return "CrossEntropyBackward"; }
};
}  // namespace

Tensor cross_entropy(const Tensor& logits_in, const Tensor& targets_in, int32_t ignore_index) {
  Tensor logits = cpu_f32(logits_in, "cross_entropy", "logits"), targets = cpu_i32(targets_in, "cross_entropy", "targets");
  LLM_CHECK(logits.dim() >= 1, "cross_entropy: logits need a vocabulary dimension, got ", logits.str());
  const int64_t V = logits.size(-1), N = rows_of(logits);
  LLM_CHECK(targets.numel() == N, "cross_entropy: ", targets.numel(), " targets (", targets.shape().str(), ") for ", N,
            " rows of logits ", logits.shape().str());
  const int32_t* t = targets.data<int32_t>();
  int64_t counted = 0;
  for (int64_t i = 0; i < N; ++i) {
    if (t[i] == ignore_index) continue;
    LLM_CHECK(t[i] >= 0 && t[i] < V, "cross_entropy: target ", t[i], " at row ", i, " is outside [0, ", V,
              ") and is not the ignore index ", ignore_index);
    ++counted;
  }
  Tensor losses = Tensor::empty(Shape{N}), lse = Tensor::empty(Shape{N});
  cpu::cross_entropy_forward(N, V, logits.data<float>(), t, ignore_index, losses.data<float>(), lse.data<float>());
  const double total = cpu::sum(N, losses.data<float>());
  Tensor loss = Tensor::full(Shape{}, counted ? total / static_cast<double>(counted) : 0.0);
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
    Tensor dloss = Tensor::empty(Shape{N});
    const Tensor gv = g[0].contiguous();
    for (int64_t i = 0; i < N; ++i) dloss.data<float>()[i] = -gv.data<float>()[i];
    Tensor dlogits = Tensor::empty(lv.shape());
    cpu::cross_entropy_backward(N, V, lv.data<float>(), tv.data<int32_t>(), ignore_index, lse.get(*this).data<float>(),
                                dloss.data<float>(), dlogits.data<float>());
    return {dlogits, Tensor()};
  }
  std::vector<SavedTensor*> saved() override { return {&logits, &targets, &lse}; }
  std::string name() const override { return "TokenLogprobsBackward"; }
};
}  // namespace

Tensor token_logprobs(const Tensor& logits_in, const Tensor& targets_in, int32_t ignore_index) {
  Tensor logits = cpu_f32(logits_in, "token_logprobs", "logits"), targets = cpu_i32(targets_in, "token_logprobs", "targets");
  LLM_CHECK(logits.dim() >= 1, "token_logprobs: logits need a vocabulary dimension, got ", logits.str());
  const int64_t V = logits.size(-1), N = rows_of(logits);
  LLM_CHECK(targets.numel() == N, "token_logprobs: ", targets.numel(), " targets (", targets.shape().str(), ") for ", N,
            " rows of logits ", logits.shape().str());
  const int32_t* t = targets.data<int32_t>();
  for (int64_t i = 0; i < N; ++i)
    LLM_CHECK(t[i] == ignore_index || (t[i] >= 0 && t[i] < V), "token_logprobs: target ", t[i], " at row ", i,
              " is outside [0, ", V, ") and is not the ignore index ", ignore_index);
  Tensor out = Tensor::empty(targets.shape()), lse = Tensor::empty(Shape{N});
  cpu::cross_entropy_forward(N, V, logits.data<float>(), t, ignore_index, out.data<float>(), lse.data<float>());
  float* o = out.data<float>();
  for (int64_t i = 0; i < N; ++i) o[i] = -o[i];
  record_op<TokenLogprobsBackward>({&logits_in, &targets_in}, {&out}, [&](TokenLogprobsBackward& n) {
    n.logits = SavedTensor(logits);
    n.targets = SavedTensor(targets);
    n.lse = SavedTensor(lse);
    n.ignore_index = ignore_index;
  });
  return out;
}

}  // namespace llm::ops
