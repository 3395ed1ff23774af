// Causal flash attention (kernels/cpu/attention.h) against a naive double-precision reference that
// materializes the whole score matrix; the reference backward is itself checked by finite differences.
#include "kernels/cpu/attention.h"

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cpu/parallel.h"
#include "tests/common/testing.h"

namespace llm::cpu {
namespace {

using llm::testing::max_rel_error;
using llm::testing::poisoned;
using llm::testing::random_floats;

size_t q_size(const AttentionShape& s) { return static_cast<size_t>(s.B * s.T * s.Hq * s.D); }
size_t kv_size(const AttentionShape& s) { return static_cast<size_t>(s.B * s.T * s.Hkv * s.D); }
size_t lse_size(const AttentionShape& s) { return static_cast<size_t>(s.B * s.Hq * s.T); }

// Literal mask of the contract (not the contiguous-range shortcut the kernel uses).
bool allowed(const AttentionShape& s, const int32_t* doc, int64_t b, int64_t t, int64_t key) {
  return key <= t && (s.window <= 0 || key > t - s.window) && (!doc || doc[b * s.T + key] == doc[b * s.T + t]);
}

struct Reference {
  std::vector<double> out, lse;
};

// Probabilities of one query row over all T keys (0 where masked) and its log-sum-exp.
template <typename F>
double reference_row(const AttentionShape& s, const F* q, const F* k, const int32_t* doc, double scale,
                     int64_t b, int64_t h, int64_t t, std::vector<double>& prob) {
  const int64_t hk = h / (s.Hq / s.Hkv);
  const F* qrow = q + ((b * s.T + t) * s.Hq + h) * s.D;
  double max_score = -INFINITY;
  prob.assign(static_cast<size_t>(s.T), 0.0);
  for (int64_t key = 0; key < s.T; ++key) {
    if (!allowed(s, doc, b, t, key)) continue;
    const F* krow = k + ((b * s.T + key) * s.Hkv + hk) * s.D;
    double dot = 0;
    for (int64_t d = 0; d < s.D; ++d) dot += double(qrow[d]) * double(krow[d]);
    prob[key] = scale * dot;
    max_score = std::max(max_score, prob[key]);
  }
  double sum = 0;
  for (int64_t key = 0; key < s.T; ++key) {
    prob[key] = allowed(s, doc, b, t, key) ? std::exp(prob[key] - max_score) : 0.0;
    sum += prob[key];
  }
  for (auto& p : prob) p /= sum;
  return max_score + std::log(sum);
}

template <typename F>
Reference reference_forward(const AttentionShape& s, const F* q, const F* k, const F* v,
                            const int32_t* doc, double scale) {
  Reference r{std::vector<double>(q_size(s)), std::vector<double>(lse_size(s))};
  std::vector<double> prob;
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.Hq; ++h)
      for (int64_t t = 0; t < s.T; ++t) {
        r.lse[(b * s.Hq + h) * s.T + t] = reference_row(s, q, k, doc, scale, b, h, t, prob);
        double* o = r.out.data() + ((b * s.T + t) * s.Hq + h) * s.D;
        for (int64_t key = 0; key < s.T; ++key) {
          if (prob[key] == 0) continue;
          const F* vrow = v + ((b * s.T + key) * s.Hkv + h / (s.Hq / s.Hkv)) * s.D;
          for (int64_t d = 0; d < s.D; ++d) o[d] += prob[key] * double(vrow[d]);
        }
      }
  return r;
}

struct Grads {
  std::vector<double> dq, dk, dv;
};

template <typename F>
Grads reference_backward(const AttentionShape& s, const F* q, const F* k, const F* v, const int32_t* doc,
                         double scale, const F* dout) {
  Grads g{std::vector<double>(q_size(s)), std::vector<double>(kv_size(s)), std::vector<double>(kv_size(s))};
  std::vector<double> prob, dprob(static_cast<size_t>(s.T));
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.Hq; ++h)
      for (int64_t t = 0; t < s.T; ++t) {
        reference_row(s, q, k, doc, scale, b, h, t, prob);
        const int64_t hk = h / (s.Hq / s.Hkv), qi = ((b * s.T + t) * s.Hq + h) * s.D;
        double delta = 0;  // Σ_s P·dP, which equals rowsum(dout ⊙ out)
        for (int64_t key = 0; key < s.T; ++key) {
          const F* vrow = v + ((b * s.T + key) * s.Hkv + hk) * s.D;
          double dot = 0;
          for (int64_t d = 0; d < s.D; ++d) dot += double(dout[qi + d]) * double(vrow[d]);
          dprob[key] = dot;
          delta += prob[key] * dot;
        }
        for (int64_t key = 0; key < s.T; ++key) {
          if (prob[key] == 0) continue;
          const int64_t ki = ((b * s.T + key) * s.Hkv + hk) * s.D;
          const double dscore = prob[key] * (dprob[key] - delta) * scale;
          for (int64_t d = 0; d < s.D; ++d) {
            g.dq[qi + d] += dscore * double(k[ki + d]);
            g.dk[ki + d] += dscore * double(q[qi + d]);
            g.dv[ki + d] += prob[key] * double(dout[qi + d]);
          }
        }
      }
  return g;
}

// Contiguous documents of random lengths 1..max_len (with at least one of length 1 when T > 1).
std::vector<int32_t> random_documents(int64_t B, int64_t T, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::vector<int32_t> doc(static_cast<size_t>(B * T));
  const int64_t max_len = std::max<int64_t>(2, T / 3);
  for (int64_t b = 0; b < B; ++b) {
    int32_t id = 7 + static_cast<int32_t>(b);
    for (int64_t t = 0; t < T;) {
      const int64_t len = t == 1 ? 1 : std::uniform_int_distribution<int64_t>(1, max_len)(gen);
      for (int64_t i = 0; i < len && t < T; ++i, ++t) doc[b * T + t] = id;
      id += 3;
    }
  }
  return doc;
}

// ---- the reference backward against central differences of the reference forward ---------------

double weighted_loss(const AttentionShape& s, const std::vector<double>& q, const std::vector<double>& k,
                     const std::vector<double>& v, const int32_t* doc, double scale,
                     const std::vector<double>& weight) {
  const Reference r = reference_forward(s, q.data(), k.data(), v.data(), doc, scale);
  double loss = 0;
  for (size_t i = 0; i < r.out.size(); ++i) loss += weight[i] * r.out[i];
  return loss;
}

std::vector<double> to_double(const std::vector<float>& x) { return {x.begin(), x.end()}; }

void check_reference_gradients(const AttentionShape& s, bool with_docs) {
  const std::vector<int32_t> docs = random_documents(s.B, s.T, 5);
  const int32_t* doc = with_docs ? docs.data() : nullptr;
  std::vector<double> q = to_double(random_floats(q_size(s), 1)), k = to_double(random_floats(kv_size(s), 2)),
                      v = to_double(random_floats(kv_size(s), 3)), w = to_double(random_floats(q_size(s), 4));
  const double scale = 0.9;
  const Grads g = reference_backward(s, q.data(), k.data(), v.data(), doc, scale, w.data());
  const double h = 1e-6;
  auto check = [&](std::vector<double>& x, const std::vector<double>& grad, const char* name) {
    std::vector<double> numeric(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      const double saved = x[i];
      x[i] = saved + h;
      const double up = weighted_loss(s, q, k, v, doc, scale, w);
      x[i] = saved - h;
      const double down = weighted_loss(s, q, k, v, doc, scale, w);
      x[i] = saved;
      numeric[i] = (up - down) / (2 * h);
    }
    EXPECT_LE(max_rel_error(grad, numeric), 1e-7) << name;
  };
  check(q, g.dq, "dq");
  check(k, g.dk, "dk");
  check(v, g.dv, "dv");
}

TEST(AttentionReference, BackwardMatchesFiniteDifferences) {
  check_reference_gradients({1, 5, 2, 1, 3}, false);
  check_reference_gradients({1, 6, 2, 1, 3}, true);
  check_reference_gradients({2, 4, 2, 2, 2}, true);
  check_reference_gradients({1, 6, 2, 1, 3, 2}, true);  // a sliding window of 2
}

// ---- the fp32 kernels against the double reference ----------------------------------------------

struct Case {
  AttentionShape shape;
  bool docs;
  float scale;  // 0: 1/sqrt(D)
};

struct Inputs {
  std::vector<float> q, k, v, dout;
  std::vector<int32_t> docs;
  float scale;
  const int32_t* doc() const { return docs.empty() ? nullptr : docs.data(); }
};

Inputs make_inputs(const Case& c, uint64_t seed) {
  const AttentionShape& s = c.shape;
  Inputs in{random_floats(q_size(s), seed), random_floats(kv_size(s), seed + 1),
            random_floats(kv_size(s), seed + 2), random_floats(q_size(s), seed + 3), {},
            c.scale != 0 ? c.scale : 1.f / std::sqrt(float(s.D))};
  if (c.docs) in.docs = random_documents(s.B, s.T, seed + 4);
  return in;
}

struct Outputs {
  std::vector<float> out, lse, dq, dk, dv;
};

Outputs run_kernels(const AttentionShape& s, const Inputs& in) {
  Outputs o{poisoned(q_size(s)), poisoned(lse_size(s)), poisoned(q_size(s)), poisoned(kv_size(s)),
            poisoned(kv_size(s))};
  attention_forward(s, in.q.data(), in.k.data(), in.v.data(), in.doc(), in.scale, o.out.data(), o.lse.data());
  attention_backward(s, in.q.data(), in.k.data(), in.v.data(), in.doc(), in.scale, o.out.data(), o.lse.data(),
                     in.dout.data(), o.dq.data(), o.dk.data(), o.dv.data());
  return o;
}

std::string describe(const Case& c) {
  const AttentionShape& s = c.shape;
  return "B=" + std::to_string(s.B) + " T=" + std::to_string(s.T) + " Hq=" + std::to_string(s.Hq) +
         " Hkv=" + std::to_string(s.Hkv) + " D=" + std::to_string(s.D) + (c.docs ? " docs" : "") +
         (s.window ? " window=" + std::to_string(s.window) : "") +
         " scale=" + std::to_string(c.scale);
}

const Case kCases[] = {
    {{1, 1, 1, 1, 8}, false, 0},        // a single token
    {{2, 1, 2, 1, 17}, true, 0},        // a single token with documents, MQA
    {{2, 3, 2, 2, 17}, false, 0.3f},    // MHA, odd D
    {{1, 17, 4, 1, 64}, true, 0},       // MQA with documents
    {{2, 64, 4, 2, 8}, true, 1.7f},     // GQA 2, exactly one tile, peaky softmax
    {{1, 127, 8, 2, 17}, false, 0},     // GQA 4, partial tile
    {{2, 127, 3, 3, 128}, true, 0.05f}, // MHA, wide heads
    {{1, 257, 2, 1, 64}, false, 0},     // several tiles plus one key
    {{1, 257, 4, 1, 128}, true, 0.7f},  // MQA, documents across tiles
    {{2, 257, 8, 2, 17}, true, 0},      // GQA 4 with documents
    {{1, 257, 4, 2, 64, 100}, false, 0},  // a sliding window across tile boundaries
    {{2, 130, 4, 1, 17, 7}, true, 0},     // a window narrower than a tile, with documents
    {{1, 70, 2, 2, 16, 1}, false, 0},     // a window of one: each query sees itself
};

// Relative to the largest reference value. Sums run over up to 257 keys in fp32 (and D = 128 terms
// per score), so a few 1e-7 roundings add up; 1e-5 still leaves a wide margin below real bugs.
constexpr double kTol = 1e-5;

// Gradients that are exactly zero in the reference (T = 1: one key, so dq = dk = 0) are, in fp32, the
// rounding of dP − Δ (two dot products over D of values in [-1, 1]); check those absolutely.
double grad_error(const std::vector<float>& got, const std::vector<double>& want) {
  double max_want = 0, max_got = 0;
  for (double w : want) max_want = std::max(max_want, std::fabs(w));
  if (max_want > 0) return max_rel_error(got, want);
  for (float g : got) max_got = std::isnan(g) ? INFINITY : std::max(max_got, double(std::fabs(g)));
  return max_got;
}

TEST(Attention, MatchesDoubleReference) {
  uint64_t seed = 100;
  for (const Case& c : kCases) {
    SCOPED_TRACE(describe(c));
    const AttentionShape& s = c.shape;
    const Inputs in = make_inputs(c, seed += 10);
    const Outputs o = run_kernels(s, in);
    const Reference r = reference_forward(s, in.q.data(), in.k.data(), in.v.data(), in.doc(), in.scale);
    const Grads g = reference_backward(s, in.q.data(), in.k.data(), in.v.data(), in.doc(), in.scale,
                                       in.dout.data());
    EXPECT_LE(max_rel_error(o.out, r.out), kTol) << "out";
    EXPECT_LE(max_rel_error(o.lse, r.lse), kTol) << "lse";
    EXPECT_LE(grad_error(o.dq, g.dq), kTol) << "dq";
    EXPECT_LE(grad_error(o.dk, g.dk), kTol) << "dk";
    EXPECT_LE(max_rel_error(o.dv, g.dv), kTol) << "dv";
  }
}

// With every document of length 1, each query sees only itself: out = v and dv = dout exactly; dq
// and dk are zero up to the rounding of dP − Δ (two fp32 dot products of the same numbers).
TEST(Attention, LengthOneDocumentsAttendOnlyToThemselves) {
  const AttentionShape s{1, 70, 2, 2, 16};
  Inputs in = make_inputs({s, false, 0}, 7);
  for (int32_t t = 0; t < s.T; ++t) in.docs.push_back(t);
  const Outputs o = run_kernels(s, in);
  EXPECT_EQ(std::memcmp(o.out.data(), in.v.data(), o.out.size() * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(o.dv.data(), in.dout.data(), o.dv.size() * sizeof(float)), 0);
  for (float x : o.dq) ASSERT_LE(std::fabs(x), 1e-6f);
  for (float x : o.dk) ASSERT_LE(std::fabs(x), 1e-6f);
}

// q, k, v as views of one fused [B, T, Hq + 2·Hkv, D] tensor (plus a few padding elements per token)
// through the token strides, and dq, dk, dv written into views of a fused gradient: the same bits
// as with dense copies, and nothing between the views' rows is written.
TEST(Attention, TokenStridesReadAndWriteViewsOfFusedTensors) {
  for (const Case& c : {Case{{2, 130, 4, 2, 17, 0}, true, 0}, Case{{1, 70, 2, 1, 64, 9}, false, 0}}) {
    SCOPED_TRACE(describe(c));
    const AttentionShape& s = c.shape;
    const Inputs in = make_inputs(c, 1234);
    const Outputs dense = run_kernels(s, in);

    const int64_t q_row = s.Hq * s.D, kv_row = s.Hkv * s.D, stride = q_row + 2 * kv_row + 3, rows = s.B * s.T;
    std::vector<float> qkv = poisoned(static_cast<size_t>(rows * stride));
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(&qkv[r * stride], &in.q[r * q_row], sizeof(float) * q_row);
      std::memcpy(&qkv[r * stride + q_row], &in.k[r * kv_row], sizeof(float) * kv_row);
      std::memcpy(&qkv[r * stride + q_row + kv_row], &in.v[r * kv_row], sizeof(float) * kv_row);
    }
    AttentionShape strided = s;
    strided.q_stride = strided.kv_stride = stride;
    const float *q = qkv.data(), *k = q + q_row, *v = k + kv_row;
    std::vector<float> out = poisoned(q_size(s)), lse = poisoned(lse_size(s)), grads = poisoned(qkv.size());
    attention_forward(strided, q, k, v, in.doc(), in.scale, out.data(), lse.data());
    float *dq = grads.data(), *dk = dq + q_row, *dv = dk + kv_row;
    attention_backward(strided, q, k, v, in.doc(), in.scale, out.data(), lse.data(), in.dout.data(), dq, dk, dv);

    EXPECT_EQ(0, std::memcmp(out.data(), dense.out.data(), out.size() * sizeof(float))) << "out";
    EXPECT_EQ(0, std::memcmp(lse.data(), dense.lse.data(), lse.size() * sizeof(float))) << "lse";
    for (int64_t r = 0; r < rows; ++r) {
      ASSERT_EQ(0, std::memcmp(dq + r * stride, &dense.dq[r * q_row], sizeof(float) * q_row)) << "dq row " << r;
      ASSERT_EQ(0, std::memcmp(dk + r * stride, &dense.dk[r * kv_row], sizeof(float) * kv_row)) << "dk row " << r;
      ASSERT_EQ(0, std::memcmp(dv + r * stride, &dense.dv[r * kv_row], sizeof(float) * kv_row)) << "dv row " << r;
      for (int64_t i = q_row + 2 * kv_row; i < stride; ++i)
        ASSERT_TRUE(std::isnan(grads[r * stride + i])) << "padding element " << i << " of row " << r << " written";
    }
  }
}

bool same_bits(const Outputs& a, const Outputs& b) {
  auto eq = [](const std::vector<float>& x, const std::vector<float>& y) {
    return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
  };
  return eq(a.out, b.out) && eq(a.lse, b.lse) && eq(a.dq, b.dq) && eq(a.dk, b.dk) && eq(a.dv, b.dv);
}

// Each task writes disjoint outputs in a fixed order, so the bits do not depend on the thread count.
// The backward picks its schedule from the thread count (fused per kv head with enough batch×kv
// heads, split over key tiles and query blocks otherwise): 1 thread runs the fused schedule for both
// shapes, 2 threads split the first, 3 threads split both, and all must agree bit for bit.
TEST(Attention, DeterministicAcrossRunsAndThreadCounts) {
  for (const Case& c : {Case{{1, 200, 3, 1, 40}, true, 0}, Case{{2, 150, 4, 2, 24}, false, 0}}) {
    SCOPED_TRACE(describe(c));
    const Inputs in = make_inputs(c, 900);
    set_num_threads(2);
    const Outputs first = run_kernels(c.shape, in), second = run_kernels(c.shape, in);
    set_num_threads(1);
    const Outputs single = run_kernels(c.shape, in);
    set_num_threads(3);
    const Outputs three = run_kernels(c.shape, in);
    set_num_threads(0);
    EXPECT_TRUE(same_bits(first, second));
    EXPECT_TRUE(same_bits(first, single));
    EXPECT_TRUE(same_bits(first, three));
  }
}

}  // namespace
}  // namespace llm::cpu
