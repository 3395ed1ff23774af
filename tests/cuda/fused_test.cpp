// The fused CUDA kernels (kernels/cuda/fused.h) against the CPU kernels (kernels/cpu/fused.h) on the
// same inputs (bf16-rounded where the GPU reads bf16), for T = fp32 and bf16, both variants (fast and
// simple: the test name ends in /fast or /simple), awkward sizes, NaN-poisoned outputs. A failure
// names the function, the output, the shape and type (in the trace), the max relative error and the
// first wrong element with its got/want values.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cpu/fused.h"
#include "kernels/cuda/fused.h"
#include "optim/adamw.h"
#include "tests/cuda/cuda_testing.h"

namespace llm::testing {
namespace {

using cuda::bf16;
using cuda::FusedVariant;

// ---- typed host/device helpers ------------------------------------------------------------------
template <class T> constexpr double kTol = 1e-5;  // fp32 paths
template <> constexpr double kTol<bf16> = 1e-2;
template <class T> const char* type_name() { return std::is_same_v<T, float> ? "fp32" : "bf16"; }

// x in T on the host (for bf16: rounded to nearest even), and back to float.
template <class T> std::vector<T> host_as(const std::vector<float>& x) {
  if constexpr (std::is_same_v<T, float>) return x; else return to_bf16(x);
}
template <class T> std::vector<float> floats_of(const std::vector<T>& x) {
  if constexpr (std::is_same_v<T, float>) return x; else return to_float(x);
}
// The values a T kernel actually sees: what the CPU reference must be given.
template <class T> std::vector<float> seen(const std::vector<float>& x) { return floats_of(host_as<T>(x)); }

template <class T> std::vector<float> download_floats(const DeviceBuffer<T>& buf) { return floats_of(buf.download()); }

// A device buffer of T holding x (rounded for bf16).
template <class T> struct Dev : DeviceBuffer<T> {
  explicit Dev(const std::vector<float>& x) : DeviceBuffer<T>(host_as<T>(x)) {}
  explicit Dev(size_t n) : DeviceBuffer<T>(n) { this->poison(); }
};

// EXPECT max_rel_error(got, want) <= tol; on failure: the largest error, how many elements are off,
// and the first one beyond tol·max|want| as [row, column] (row_len > 0) or [index], with got/want.
void expect_close(const std::string& what, const std::vector<float>& got, const std::vector<float>& want, double tol,
                  int64_t row_len = 0) {
  ASSERT_EQ(got.size(), want.size()) << what;
  const double err = max_rel_error(got, want);
  if (err <= tol) return;
  double max_abs = 1e-6;
  for (float w : want) max_abs = std::max(max_abs, std::fabs(double(w)));
  size_t first = got.size(), bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double e = std::fabs(double(got[i]) - double(want[i]));
    if (std::isnan(e) || e > tol * max_abs) {
      if (first == got.size()) first = i;
      ++bad;
    }
  }
  std::string where = "[" + std::to_string(first) + "]";
  if (row_len > 0)
    where = "[" + std::to_string(int64_t(first) / row_len) + ", " + std::to_string(int64_t(first) % row_len) + "]";
  ADD_FAILURE() << what << ": max relative error " << err << " > " << tol << "; " << bad << " of " << got.size()
                << " elements off, the first at " << where << ": got " << got[first] << ", want " << want[first];
}

// Bitwise equality, naming the first differing element.
void expect_identical(const std::string& what, const std::vector<float>& got, const std::vector<float>& want,
                      int64_t row_len = 0) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0) {
      std::string where = "[" + std::to_string(i) + "]";
      if (row_len > 0)
        where = "[" + std::to_string(int64_t(i) / row_len) + ", " + std::to_string(int64_t(i) % row_len) + "]";
      ADD_FAILURE() << what << ": not bit-identical, first at " << where << ": got " << got[i] << ", want " << want[i];
      return;
    }
  }
}

std::string shape_str(std::initializer_list<int64_t> dims) {
  std::string s;
  for (int64_t d : dims) s += (s.empty() ? "" : "x") + std::to_string(d);
  return s;
}

// Every test runs once per variant; the variant is set for the test and restored after.
class CudaFused : public ::testing::TestWithParam<FusedVariant> {
 protected:
  void SetUp() override { cuda::set_fused_variant(GetParam()); }
  void TearDown() override { cuda::set_fused_variant(FusedVariant::kFast); }
};

struct RowShape {
  int64_t N, C;
};
// 1, 3, 17, 127, 769: no 16-byte packs (scalar paths); 768, 1024: packs; 300 rows: several row chunks
// in the weight-gradient sums.
const RowShape kNormShapes[] = {{1, 1}, {3, 3},    {2, 17},    {5, 127},  {4, 768},
                                {3, 769}, {2, 1024}, {300, 96}, {1000, 33}};

// ---- norms --------------------------------------------------------------------------------------
template <class T>
void check_layernorm(int64_t N, int64_t C) {
  SCOPED_TRACE("layernorm " + shape_str({N, C}) + " " + type_name<T>());
  const size_t n = size_t(N * C);
  const auto x = seen<T>(random_floats(n, 1, -2.f, 3.f)), w = seen<T>(random_floats(size_t(C), 2, 0.5f, 1.5f)),
             b = seen<T>(random_floats(size_t(C), 3)), dy = seen<T>(random_floats(n, 4));
  const float eps = 1e-5f;
  const size_t rows = static_cast<size_t>(N), cols = static_cast<size_t>(C);
  std::vector<float> y(n), mean(rows), rstd(rows), dx(n), dw(cols), db(cols);
  cpu::layernorm_forward(N, C, x.data(), w.data(), b.data(), eps, y.data(), mean.data(), rstd.data());
  cpu::layernorm_backward(N, C, dy.data(), x.data(), w.data(), mean.data(), rstd.data(), dx.data(), dw.data(),
                          db.data());

  Dev<T> d_x(x), d_w(w), d_b(b), d_dy(dy), d_y(n), d_dx(n);
  Dev<float> d_mean(rows), d_rstd(rows), d_dw(cols), d_db(cols);
  cuda::layernorm_forward<T>(N, C, d_x.get(), d_w.get(), d_b.get(), eps, d_y.get(), d_mean.get(), d_rstd.get(),
                             nullptr);
  expect_close("layernorm_forward y", download_floats(d_y), y, kTol<T>, C);
  expect_close("layernorm_forward mean", d_mean.download(), mean, kTol<T>);
  expect_close("layernorm_forward rstd", d_rstd.download(), rstd, kTol<T>);
  // The backward gets the CPU's statistics, so both sides see identical inputs.
  d_mean.upload(mean);
  d_rstd.upload(rstd);
  cuda::layernorm_backward<T>(N, C, d_dy.get(), d_x.get(), d_w.get(), d_mean.get(), d_rstd.get(), d_dx.get(),
                              d_dw.get(), d_db.get(), nullptr);
  expect_close("layernorm_backward dx", download_floats(d_dx), dx, kTol<T>, C);
  expect_close("layernorm_backward dw", d_dw.download(), dw, kTol<T>);
  expect_close("layernorm_backward db", d_db.download(), db, kTol<T>);
}

template <class T>
void check_rmsnorm(int64_t N, int64_t C) {
  SCOPED_TRACE("rmsnorm " + shape_str({N, C}) + " " + type_name<T>());
  const size_t n = size_t(N * C);
  const auto x = seen<T>(random_floats(n, 5, -2.f, 3.f)), w = seen<T>(random_floats(size_t(C), 6, 0.5f, 1.5f)),
             dy = seen<T>(random_floats(n, 7));
  const float eps = 1e-6f;
  const size_t rows = static_cast<size_t>(N), cols = static_cast<size_t>(C);
  std::vector<float> y(n), rstd(rows), dx(n), dw(cols);
  cpu::rmsnorm_forward(N, C, x.data(), w.data(), eps, y.data(), rstd.data());
  cpu::rmsnorm_backward(N, C, dy.data(), x.data(), w.data(), rstd.data(), dx.data(), dw.data());

  Dev<T> d_x(x), d_w(w), d_dy(dy), d_y(n), d_dx(n);
  Dev<float> d_rstd(rows), d_dw(cols);
  cuda::rmsnorm_forward<T>(N, C, d_x.get(), d_w.get(), eps, d_y.get(), d_rstd.get(), nullptr);
  expect_close("rmsnorm_forward y", download_floats(d_y), y, kTol<T>, C);
  expect_close("rmsnorm_forward rstd", d_rstd.download(), rstd, kTol<T>);
  d_rstd.upload(rstd);
  cuda::rmsnorm_backward<T>(N, C, d_dy.get(), d_x.get(), d_w.get(), d_rstd.get(), d_dx.get(), d_dw.get(), nullptr);
  expect_close("rmsnorm_backward dx", download_floats(d_dx), dx, kTol<T>, C);
  expect_close("rmsnorm_backward dw", d_dw.download(), dw, kTol<T>);
}

TEST_P(CudaFused, LayerNorm) {
  LLM_SKIP_WITHOUT_GPU();
  for (const auto& s : kNormShapes) {
    check_layernorm<float>(s.N, s.C);
    check_layernorm<bf16>(s.N, s.C);
  }
}

TEST_P(CudaFused, RmsNorm) {
  LLM_SKIP_WITHOUT_GPU();
  for (const auto& s : kNormShapes) {
    check_rmsnorm<float>(s.N, s.C);
    check_rmsnorm<bf16>(s.N, s.C);
  }
}

// ---- activations --------------------------------------------------------------------------------
// `offset` elements into each buffer: 1 makes every pointer misaligned for 16-byte packs.
template <class T>
void check_activations(int64_t n, int64_t offset) {
  SCOPED_TRACE("activations n=" + std::to_string(n) + " offset=" + std::to_string(offset) + " " + type_name<T>());
  const size_t m = size_t(n + offset);
  const auto a = seen<T>(random_floats(m, 11, -6.f, 6.f)), b = seen<T>(random_floats(m, 12, -3.f, 3.f)),
             d = seen<T>(random_floats(m, 13));
  Dev<T> d_a(a), d_b(b), d_d(d), out1(m), out2(m);
  const int64_t o = offset;
  const float *pa = a.data() + o, *pb = b.data() + o, *pd = d.data() + o;
  const T *ga = d_a.get() + o, *gb = d_b.get() + o, *gd = d_d.get() + o;
  T *g1 = out1.get() + o, *g2 = out2.get() + o;
  std::vector<float> want1(static_cast<size_t>(n)), want2(static_cast<size_t>(n));
  auto tail = [o](const std::vector<float>& all) { return std::vector<float>(all.begin() + o, all.end()); };
  // Poisons the outputs, runs the GPU function, compares with the CPU results in want1 (and want2).
  auto check = [&](const char* what, const auto& gpu, bool two_outputs = false) {
    out1.poison();
    out2.poison();
    gpu();
    expect_close(std::string(what) + (two_outputs ? " first output" : ""), tail(download_floats(out1)), want1,
                 kTol<T>);
    if (two_outputs) expect_close(std::string(what) + " second output", tail(download_floats(out2)), want2, kTol<T>);
  };
  cpu::gelu_forward(n, pa, want1.data());
  check("gelu_forward", [&] { cuda::gelu_forward<T>(n, ga, g1, nullptr); });
  cpu::gelu_backward(n, pa, pd, want1.data());
  check("gelu_backward", [&] { cuda::gelu_backward<T>(n, ga, gd, g1, nullptr); });
  cpu::silu_forward(n, pa, want1.data());
  check("silu_forward", [&] { cuda::silu_forward<T>(n, ga, g1, nullptr); });
  cpu::silu_backward(n, pa, pd, want1.data());
  check("silu_backward", [&] { cuda::silu_backward<T>(n, ga, gd, g1, nullptr); });
  cpu::swiglu_forward(n, pa, pb, want1.data());
  check("swiglu_forward", [&] { cuda::swiglu_forward<T>(n, ga, gb, g1, nullptr); });
  cpu::swiglu_backward(n, pa, pb, pd, want1.data(), want2.data());
  check("swiglu_backward", [&] { cuda::swiglu_backward<T>(n, ga, gb, gd, g1, g2, nullptr); }, true);
}

TEST_P(CudaFused, Activations) {
  LLM_SKIP_WITHOUT_GPU();
  for (int64_t n : {1, 3, 17, 127, 769, 4099, 8192})
    for (int64_t offset : {0, 1}) {
      check_activations<float>(n, offset);
      check_activations<bf16>(n, offset);
    }
}

// ---- RoPE ---------------------------------------------------------------------------------------
template <class T>
void check_rope(int64_t N, int64_t H, int64_t D, cpu::RopeLayout layout, bool inverse, bool in_place) {
  SCOPED_TRACE("rope " + shape_str({N, H, D}) + (layout == cpu::RopeLayout::kHalf ? " half" : " interleaved") +
               (inverse ? " inverse" : " forward") + (in_place ? " in place " : " ") + type_name<T>());
  const size_t n = size_t(N * H * D);
  const auto x = seen<T>(random_floats(n, 21, -2.f, 2.f));
  auto positions = random_ints(size_t(N), 22, 0, 4096);
  positions[0] = 32000;  // a long-context angle: ~3e4 radians
  // Plain and with Llama 3.2's rope_scaling (kernels/rope_frequencies.h: the same formula on both sides).
  for (const RopeFrequencies freqs :
       {RopeFrequencies(10000.f), RopeFrequencies(500000.f, {RopeScalingType::kLlama3, 32.f, 1.f, 4.f, 8192.f})}) {
    SCOPED_TRACE(freqs.scaling.type == RopeScalingType::kNone ? "theta 10000" : "llama3 scaling");
    std::vector<float> want(n);
    cpu::rope(N, H, D, x.data(), positions.data(), freqs, layout, inverse, want.data());

    Dev<T> d_x(x), d_out(n);
    DeviceBuffer<int32_t> d_pos(positions);
    T* out = in_place ? d_x.get() : d_out.get();
    cuda::rope<T>(N, H, D, d_x.get(), d_pos.get(), freqs, layout, inverse, out, nullptr);
    expect_close("rope", download_floats(in_place ? d_x : d_out), want, kTol<T>, D);
  }
}

TEST_P(CudaFused, Rope) {
  LLM_SKIP_WITHOUT_GPU();
  struct Shape {
    int64_t N, H, D;
  };
  for (const Shape s : {Shape{1, 1, 2}, Shape{3, 2, 6}, Shape{5, 3, 64}, Shape{17, 4, 128}, Shape{2, 3, 34}})
    for (auto layout : {cpu::RopeLayout::kHalf, cpu::RopeLayout::kInterleaved})
      for (bool inverse : {false, true})
        for (bool in_place : {false, true}) {
          check_rope<float>(s.N, s.H, s.D, layout, inverse, in_place);
          check_rope<bf16>(s.N, s.H, s.D, layout, inverse, in_place);
        }
}

// ---- softmax and cross-entropy --------------------------------------------------------------------
template <class T>
void check_softmax(int64_t N, int64_t C) {
  SCOPED_TRACE("softmax " + shape_str({N, C}) + " " + type_name<T>());
  const size_t n = size_t(N * C);
  const auto x = seen<T>(random_floats(n, 31, -5.f, 5.f)), dy = seen<T>(random_floats(n, 32));
  std::vector<float> y(n), dx(n);
  cpu::softmax_forward(N, C, x.data(), y.data());
  Dev<T> d_x(x), d_y(n);
  cuda::softmax_forward<T>(N, C, d_x.get(), d_y.get(), nullptr);
  expect_close("softmax_forward", download_floats(d_y), y, kTol<T>, C);

  const auto y_in = seen<T>(y);  // the backward reads y in T
  cpu::softmax_backward(N, C, y_in.data(), dy.data(), dx.data());
  Dev<T> d_yin(y_in), d_dy(dy), d_dx(n);
  cuda::softmax_backward<T>(N, C, d_yin.get(), d_dy.get(), d_dx.get(), nullptr);
  expect_close("softmax_backward", download_floats(d_dx), dx, kTol<T>, C);
}

TEST_P(CudaFused, Softmax) {
  LLM_SKIP_WITHOUT_GPU();
  for (const RowShape s : {RowShape{1, 1}, RowShape{3, 3}, RowShape{2, 17}, RowShape{5, 127}, RowShape{3, 769},
                           RowShape{4, 1024}, RowShape{2, 5000}}) {
    check_softmax<float>(s.N, s.C);
    check_softmax<bf16>(s.N, s.C);
  }
}

constexpr int32_t kIgnore = -100;

template <class T>
void check_cross_entropy(int64_t N, int64_t V) {
  SCOPED_TRACE("cross_entropy " + shape_str({N, V}) + " " + type_name<T>());
  const size_t n = size_t(N * V);
  const auto logits = seen<T>(random_floats(n, 41, -4.f, 4.f));
  auto targets = random_ints(size_t(N), 42, 0, int32_t(V));
  for (size_t i = 1; i < targets.size(); i += 3) targets[i] = kIgnore;  // every third row ignored
  const auto dloss = random_floats(size_t(N), 43, 0.1f, 1.f);
  const size_t rows = static_cast<size_t>(N);
  std::vector<float> losses(rows), lse(rows), dlogits(n);
  cpu::cross_entropy_forward(N, V, logits.data(), targets.data(), kIgnore, losses.data(), lse.data());
  cpu::cross_entropy_backward(N, V, logits.data(), targets.data(), kIgnore, lse.data(), dloss.data(), dlogits.data());

  Dev<T> d_logits(logits), d_dlogits(n);
  DeviceBuffer<int32_t> d_targets(targets);
  Dev<float> d_losses(rows), d_lse(rows), d_dloss(dloss);
  cuda::cross_entropy_forward<T>(N, V, d_logits.get(), d_targets.get(), kIgnore, d_losses.get(), d_lse.get(), nullptr);
  expect_close("cross_entropy_forward losses", d_losses.download(), losses, kTol<T>);
  expect_close("cross_entropy_forward lse", d_lse.download(), lse, kTol<T>);

  d_lse.upload(lse);  // identical inputs for the backward
  cuda::cross_entropy_backward<T>(N, V, d_logits.get(), d_targets.get(), kIgnore, d_lse.get(), d_dloss.get(),
                                  d_dlogits.get(), V, nullptr);
  expect_close("cross_entropy_backward", download_floats(d_dlogits), dlogits, kTol<T>, V);
  // Into rows padded to a multiple of 8 (+8): the row elements as above, the padding left as it was.
  const int64_t ld = (V + 7) / 8 * 8 + 8;
  Dev<T> d_padded(size_t(N * ld));
  cuda::cross_entropy_backward<T>(N, V, d_logits.get(), d_targets.get(), kIgnore, d_lse.get(), d_dloss.get(),
                                  d_padded.get(), ld, nullptr);
  const std::vector<float> padded = download_floats(d_padded);
  std::vector<float> rows_of_padded;
  size_t padding_touched = 0;
  for (int64_t i = 0; i < N; ++i) {
    rows_of_padded.insert(rows_of_padded.end(), padded.begin() + i * ld, padded.begin() + i * ld + V);
    for (int64_t c = V; c < ld; ++c) padding_touched += !std::isnan(padded[size_t(i * ld + c)]);
  }
  expect_close("cross_entropy_backward into padded rows", rows_of_padded, dlogits, kTol<T>, V);
  EXPECT_EQ(padding_touched, 0u) << "cross_entropy_backward wrote past V in padded rows (ld " << ld << ")";
  // In place: the gradient overwrites the logits (ignored rows must become zeros).
  cuda::cross_entropy_backward<T>(N, V, d_logits.get(), d_targets.get(), kIgnore, d_lse.get(), d_dloss.get(),
                                  d_logits.get(), V, nullptr);
  expect_close("cross_entropy_backward in place", download_floats(d_logits), dlogits, kTol<T>, V);
}

TEST_P(CudaFused, CrossEntropy) {
  LLM_SKIP_WITHOUT_GPU();
  // 50304: GPT-2's padded vocabulary (16-byte packs); 50257: unpadded (scalar path).
  for (const RowShape s : {RowShape{1, 1}, RowShape{3, 3}, RowShape{4, 17}, RowShape{5, 127}, RowShape{3, 769},
                           RowShape{4, 50304}, RowShape{4, 50257}}) {
    check_cross_entropy<float>(s.N, s.C);
    check_cross_entropy<bf16>(s.N, s.C);
  }
}

// ---- embedding ----------------------------------------------------------------------------------
template <class T>
void check_embedding(int64_t N, int64_t C, int64_t V) {
  SCOPED_TRACE("embedding N=" + std::to_string(N) + " table " + shape_str({V, C}) + " " + type_name<T>());
  const auto ids = random_ints(size_t(N), 51, 0, int32_t(V > 3 ? V - 3 : V));  // repeats; the last ids unused
  const auto table = seen<T>(random_floats(size_t(V * C), 52));
  const auto dout = seen<T>(random_floats(size_t(N * C), 53));
  const size_t out_size = static_cast<size_t>(N * C), table_size = static_cast<size_t>(V * C);
  std::vector<float> out(out_size), dtable(table_size);
  cpu::embedding_forward(N, C, ids.data(), table.data(), out.data());
  cpu::embedding_backward(N, C, V, ids.data(), dout.data(), dtable.data());

  DeviceBuffer<int32_t> d_ids(ids);
  Dev<T> d_table(table), d_out(out_size), d_dout(dout);
  Dev<float> d_dtable(table_size);
  cuda::embedding_forward<T>(N, C, d_ids.get(), d_table.get(), d_out.get(), nullptr);
  expect_identical("embedding_forward", download_floats(d_out), out, C);
  // The same additions in the same order (increasing i, from 0) as the CPU: bit-identical to it.
  cuda::embedding_backward<T>(N, C, V, d_ids.get(), d_dout.get(), d_dtable.get(), nullptr);
  const auto first = d_dtable.download();
  expect_identical("embedding_backward vs CPU", first, dtable, C);
  d_dtable.poison();
  cuda::embedding_backward<T>(N, C, V, d_ids.get(), d_dout.get(), d_dtable.get(), nullptr);
  expect_identical("embedding_backward second run vs first", d_dtable.download(), first, C);
}

TEST_P(CudaFused, Embedding) {
  LLM_SKIP_WITHOUT_GPU();
  struct Shape {
    int64_t N, C, V;
  };
  // V > 64: several id ranges; C = 300, 769: a partial column tile; N = 1000 over V = 37: many repeats.
  for (const Shape s : {Shape{1, 1, 1}, Shape{3, 3, 5}, Shape{17, 17, 7}, Shape{1000, 33, 37}, Shape{513, 300, 300},
                        Shape{64, 768, 130}, Shape{40, 769, 70}}) {
    check_embedding<float>(s.N, s.C, s.V);
    check_embedding<bf16>(s.N, s.C, s.V);
  }
}

// ---- optimizer ----------------------------------------------------------------------------------
// Tensors of these sizes (0 included); 60 of them take two launches of the fast kernel's table.
std::vector<int64_t> tensor_sizes(bool many) {
  std::vector<int64_t> sizes = {1, 3, 17, 0, 2049, 8191, 8192, 8193, 100003};
  if (many)
    for (int k = 0; k < 51; ++k) sizes.push_back((k * 37) % 300 + 1);
  return sizes;
}

// A device copy of x; an empty x copies nothing.
std::unique_ptr<DeviceBuffer<float>> device_copy(const std::vector<float>& x) {
  auto buf = std::make_unique<DeviceBuffer<float>>(x.size());
  if (!x.empty()) buf->upload(x);
  return buf;
}

double reference_sum_of_squares(const std::vector<std::vector<float>>& grads) {
  double s = 0;
  for (const auto& g : grads)
    for (float v : g) s += double(v) * double(v);
  return s;
}

TEST_P(CudaFused, SumOfSquaresAndClipScale) {
  LLM_SKIP_WITHOUT_GPU();
  for (bool many : {false, true}) {
    const auto sizes = tensor_sizes(many);
    SCOPED_TRACE(std::to_string(sizes.size()) + " tensors");
    std::vector<std::vector<float>> grads;
    std::vector<std::unique_ptr<DeviceBuffer<float>>> buffers;
    std::vector<const float*> pointers;
    for (size_t k = 0; k < sizes.size(); ++k) {
      grads.push_back(random_floats(size_t(sizes[k]), 60 + k, -2.f, 2.f));
      buffers.push_back(device_copy(grads.back()));
      pointers.push_back(buffers.back()->get());
    }
    DeviceBuffer<float> sumsq(1), again(1), scale(1);
    sumsq.poison();
    again.poison();
    cuda::sum_of_squares(pointers.data(), sizes.data(), int(sizes.size()), sumsq.get(), nullptr);
    cuda::sum_of_squares(pointers.data(), sizes.data(), int(sizes.size()), again.get(), nullptr);
    const float got = sumsq.download()[0];
    expect_close("sum_of_squares", {got}, {float(reference_sum_of_squares(grads))}, 1e-5);
    expect_identical("sum_of_squares second run vs first", again.download(), {got});

    const double norm = std::sqrt(double(got));
    for (float max_norm : {0.f, float(norm) * 2, float(norm) / 3}) {
      SCOPED_TRACE("max_norm " + std::to_string(max_norm));
      scale.poison();
      cuda::clip_scale(sumsq.get(), max_norm, scale.get(), nullptr);
      expect_identical("clip_scale", scale.download(), {optim::clip_scale(norm, max_norm)});
    }
  }
  DeviceBuffer<float> empty(1);
  empty.poison();
  cuda::sum_of_squares(nullptr, nullptr, 0, empty.get(), nullptr);
  expect_identical("sum_of_squares of no tensors", empty.download(), {0.f});
}

// Several AdamW steps over many tensors (decay on and off, some with a bf16 copy), the gradient scale
// from the device (clip_scale of the gradients' sum of squares) on top of h.grad_scale.
TEST_P(CudaFused, AdamW) {
  LLM_SKIP_WITHOUT_GPU();
  for (bool many : {false, true})
    for (bool device_scale : {false, true}) {
      const auto sizes = tensor_sizes(many);
      SCOPED_TRACE(std::to_string(sizes.size()) + " tensors, grad scale " + (device_scale ? "on the device" : "off"));
      const size_t count = sizes.size();
      struct Host {
        std::vector<float> param, m, v;
      };
      std::vector<Host> host(count);
      std::vector<std::unique_ptr<DeviceBuffer<float>>> params, grads, ms, vs;
      std::vector<std::unique_ptr<DeviceBuffer<bf16>>> copies;
      std::vector<cuda::AdamWTensor> tensors(count);
      for (size_t k = 0; k < count; ++k) {
        const size_t n = size_t(sizes[k]);
        host[k] = {random_floats(n, 70 + k), std::vector<float>(n, 0.f), std::vector<float>(n, 0.f)};
        params.push_back(device_copy(host[k].param));
        grads.push_back(std::make_unique<DeviceBuffer<float>>(n));
        ms.push_back(device_copy(host[k].m));
        vs.push_back(device_copy(host[k].v));
        copies.push_back(std::make_unique<DeviceBuffer<bf16>>(n));
        copies.back()->poison();
        const bool with_copy = k % 2 == 0, decay = k % 3 != 1;
        tensors[k] = {params[k]->get(), grads[k]->get(), ms[k]->get(), vs[k]->get(),
                      with_copy ? copies[k]->get() : nullptr, int64_t(n), decay};
      }
      std::vector<const float*> grad_pointers;
      for (const auto& g : grads) grad_pointers.push_back(g->get());
      DeviceBuffer<float> sumsq(1), scale(1);
      for (int64_t step = 1; step <= 4; ++step) {
        SCOPED_TRACE("step " + std::to_string(step));
        std::vector<std::vector<float>> g(count);
        for (size_t k = 0; k < count; ++k) {
          g[k] = random_floats(size_t(sizes[k]), 1000 * uint64_t(step) + k, -1.f, 1.f);
          if (!g[k].empty()) grads[k]->upload(g[k]);
        }
        const cuda::AdamWHyper h{1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, step, 0.8f};
        float device_factor = 1.f;
        if (device_scale) {  // clip to a norm of 1
          cuda::sum_of_squares(grad_pointers.data(), sizes.data(), int(count), sumsq.get(), nullptr);
          cuda::clip_scale(sumsq.get(), 1.f, scale.get(), nullptr);
          device_factor = scale.download()[0];
          ASSERT_LT(device_factor, 1.f) << "the test meant to clip";
        }
        cuda::adamw_update(tensors.data(), int(count), h, device_scale ? scale.get() : nullptr, nullptr);
        for (size_t k = 0; k < count; ++k) {
          cpu::AdamWHyper hk = h;
          hk.grad_scale = h.grad_scale * device_factor;
          hk.weight_decay = tensors[k].decay ? h.weight_decay : 0.f;
          cpu::adamw_update(sizes[k], host[k].param.data(), g[k].data(), host[k].m.data(), host[k].v.data(), hk);
        }
      }
      for (size_t k = 0; k < count; ++k) {
        if (sizes[k] == 0) continue;
        SCOPED_TRACE("tensor " + std::to_string(k) + " of " + std::to_string(sizes[k]) + " elements");
        const auto param = params[k]->download();
        expect_close("adamw param", param, host[k].param, 1e-5);
        expect_close("adamw m", ms[k]->download(), host[k].m, 1e-5);
        expect_close("adamw v", vs[k]->download(), host[k].v, 1e-5);
        if (tensors[k].param_bf16)
          expect_identical("adamw bf16 copy", to_float(copies[k]->download()), round_bf16(param));
      }
    }
}

// Argument checks happen on the host before any launch, so this one runs without a GPU too.
TEST(CudaFusedArguments, BadShapesThrowNamingTheKernel) {
  auto message = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string("(no exception)");
  };
  EXPECT_EQ(message([] { cuda::rope<float>(2, 1, 3, nullptr, nullptr, 1e4f, cpu::RopeLayout::kHalf, false, nullptr,
                                          nullptr); }),
            "cuda::rope: needs H >= 1 heads of an even head dimension D >= 2");
  EXPECT_EQ(message([] { cuda::layernorm_forward<bf16>(-1, 8, nullptr, nullptr, nullptr, 1e-5f, nullptr, nullptr,
                                                        nullptr, nullptr); }),
            "cuda::layernorm_forward: the row count N must be in [0, 2^31)");
  EXPECT_EQ(message([] { cuda::cross_entropy_forward<float>(4, 0, nullptr, nullptr, -100, nullptr, nullptr, nullptr); }),
            "cuda::cross_entropy_forward: the row length must be at least 1");
  const int64_t negative = -5;
  EXPECT_EQ(message([&] { cuda::sum_of_squares(nullptr, &negative, 1, nullptr, nullptr); }),
            "cuda::sum_of_squares: needs count >= 0 tensors");
}

INSTANTIATE_TEST_SUITE_P(Variants, CudaFused, ::testing::Values(FusedVariant::kFast, FusedVariant::kSimple),
                         [](const ::testing::TestParamInfo<FusedVariant>& variant) {
                           return std::string(cuda::to_string(variant.param));
                         });

}  // namespace
}  // namespace llm::testing
