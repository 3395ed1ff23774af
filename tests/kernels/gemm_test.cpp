// sgemm / sgemm_batched against a naive double-precision reference.
#include "kernels/cpu/gemm.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "kernels/cpu/parallel.h"
#include "tests/common/testing.h"

namespace {

using llm::testing::max_rel_error;
using llm::testing::random_floats;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// A rows×cols row-major matrix with leading dimension cols + pad; the padding holds NaN so any
// out-of-bounds read that reaches the result shows up as NaN.
struct Matrix {
  int64_t rows, cols, ld;
  std::vector<float> data;
  Matrix(int64_t r, int64_t c, int64_t pad, uint64_t seed) : rows(r), cols(c), ld(c + pad) {
    data.assign(size_t(std::max<int64_t>(1, rows * ld)), kNaN);
    const std::vector<float> values = random_floats(size_t(rows * cols), seed);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) data[size_t(i * ld + j)] = values[size_t(i * cols + j)];
  }
  float at(int64_t i, int64_t j) const { return data[size_t(i * ld + j)]; }
  std::vector<float> valid() const {  // the rows×cols elements, without padding
    std::vector<float> v;
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) v.push_back(at(i, j));
    return v;
  }
  bool padding_untouched() const {
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = cols; j < ld; ++j)
        if (!std::isnan(at(i, j))) return false;
    return true;
  }
};

struct Case {
  bool trans_a = false, trans_b = false;
  int64_t M = 1, N = 1, K = 1;
  float alpha = 1.f, beta = 0.f;
  bool bias = false;
  int64_t pad = 0;  // extra columns in every leading dimension
};

std::string describe(const Case& c) {
  return "trans_a=" + std::to_string(c.trans_a) + " trans_b=" + std::to_string(c.trans_b) +
         " M=" + std::to_string(c.M) + " N=" + std::to_string(c.N) + " K=" + std::to_string(c.K) +
         " alpha=" + std::to_string(c.alpha) + " beta=" + std::to_string(c.beta) + " bias=" + std::to_string(c.bias) +
         " pad=" + std::to_string(c.pad);
}

struct Operands {
  Matrix A, B, C;
  std::vector<float> bias;
  explicit Operands(const Case& c, uint64_t seed)
      : A(c.trans_a ? c.K : c.M, c.trans_a ? c.M : c.K, c.pad, seed),
        B(c.trans_b ? c.N : c.K, c.trans_b ? c.K : c.N, c.pad, seed + 1),
        C(c.M, c.N, c.pad, seed + 2),
        bias(c.bias ? random_floats(size_t(c.N), seed + 3) : std::vector<float>()) {
    // beta == 0 must never read C: make every element NaN so reading it would poison the result.
    if (c.beta == 0.f)
      for (int64_t i = 0; i < C.rows; ++i)
        for (int64_t j = 0; j < C.cols; ++j) C.data[size_t(i * C.ld + j)] = kNaN;
  }
};

// alpha·op(A)·op(B) + beta·C + bias in double, from the operands before the call.
std::vector<double> reference(const Case& c, const Operands& in) {
  std::vector<double> out(size_t(c.M * c.N));
  for (int64_t i = 0; i < c.M; ++i)
    for (int64_t j = 0; j < c.N; ++j) {
      double sum = 0;
      for (int64_t k = 0; k < c.K; ++k) {
        const double a = c.trans_a ? in.A.at(k, i) : in.A.at(i, k);
        const double b = c.trans_b ? in.B.at(j, k) : in.B.at(k, j);
        sum += a * b;
      }
      double v = double(c.alpha) * sum;
      if (c.beta != 0.f) v += double(c.beta) * in.C.at(i, j);
      if (c.bias) v += in.bias[size_t(j)];
      out[size_t(i * c.N + j)] = v;
    }
  return out;
}

void run(const Case& c, Operands& io) {
  llm::cpu::sgemm(c.trans_a, c.trans_b, c.M, c.N, c.K, c.alpha, io.A.data.data(), io.A.ld, io.B.data.data(), io.B.ld,
                  c.beta, io.C.data.data(), io.C.ld, c.bias ? io.bias.data() : nullptr);
}

// fp32 error of a K-long dot product grows like sqrt(K)·eps relative to the result's scale; 1e-5 holds
// up to K ≈ 300, beyond that the bound is scaled by sqrt(K / 300).
double tolerance(int64_t K) { return 1e-5 * std::max(1.0, std::sqrt(double(K) / 300.0)); }

void check(const Case& c, uint64_t seed) {
  Operands io(c, seed);
  const std::vector<double> want = reference(c, io);
  run(c, io);
  EXPECT_LE(max_rel_error(io.C.valid(), want), tolerance(c.K)) << describe(c);
  EXPECT_TRUE(io.C.padding_untouched()) << describe(c);
}

class GemmTest : public ::testing::Test {
 protected:
  void TearDown() override { llm::cpu::set_num_threads(0); }
};

TEST_F(GemmTest, AllTransposesAwkwardSizes) {
  const int64_t sizes[] = {1, 3, 17, 127};
  uint64_t seed = 1;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (int64_t M : sizes)
        for (int64_t N : sizes)
          for (int64_t K : sizes) {
            Case c;
            c.trans_a = ta, c.trans_b = tb, c.M = M, c.N = N, c.K = K;
            check(c, seed += 4);
          }
}

TEST_F(GemmTest, SizesAroundTilesAndBlocks) {
  // 257 and multiples ±1 of the micro-tile widths (8/6/4 rows, 48/16/8 columns) and of the K block.
  const int64_t shapes[][3] = {{257, 257, 257}, {257, 1, 257}, {1, 257, 257}, {257, 127, 3},  {3, 257, 127},
                               {9, 49, 5},      {16, 96, 7},   {17, 97, 256}, {48, 47, 257}, {7, 1000, 33},
                               {130, 20, 513},  {1, 1, 600},   {40, 500, 1}};
  uint64_t seed = 1000;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (const auto& s : shapes) {
        Case c;
        c.trans_a = ta, c.trans_b = tb, c.M = s[0], c.N = s[1], c.K = s[2];
        check(c, seed += 4);
      }
}

TEST_F(GemmTest, AlphaBetaBiasAndPaddedLeadingDimensions) {
  const float alphas[] = {1.f, -0.5f, 2.25f};
  const float betas[] = {0.f, 1.f, -1.5f};
  uint64_t seed = 5000;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (float alpha : alphas)
        for (float beta : betas)
          for (bool bias : {false, true}) {
            Case c;
            c.trans_a = ta, c.trans_b = tb, c.M = 19, c.N = 53, c.K = 300;
            c.alpha = alpha, c.beta = beta, c.bias = bias, c.pad = 5;
            check(c, seed += 4);
          }
}

TEST_F(GemmTest, VectorShapes) {
  // M = 1 (vector-matrix), N = 1 (matrix-vector) and K = 1 (outer product), with padding and beta.
  const int64_t shapes[][3] = {{1, 768, 768}, {1, 50, 3}, {300, 1, 200}, {5, 1, 1}, {127, 129, 1}, {1, 1, 1}};
  uint64_t seed = 7000;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (const auto& s : shapes) {
        Case c;
        c.trans_a = ta, c.trans_b = tb, c.M = s[0], c.N = s[1], c.K = s[2];
        c.beta = 0.5f, c.bias = true, c.pad = 3;
        check(c, seed += 4);
      }
}

TEST_F(GemmTest, LongReductionAndWideOutput) {
  // K = 3072 (the MLP down-projection) and N wider than one column block.
  Case c;
  c.M = 33, c.N = 70, c.K = 3072, c.trans_b = true, c.beta = 1.f, c.bias = true;
  check(c, 9000);
  c = Case();
  c.M = 20, c.N = 1100, c.K = 600, c.trans_a = true, c.pad = 1;
  check(c, 9100);
}

TEST_F(GemmTest, ZeroAlphaOrEmptyKScalesC) {
  for (int64_t K : {int64_t(0), int64_t(4)}) {
    Case c;
    c.M = 5, c.N = 7, c.K = K, c.alpha = K == 0 ? 1.f : 0.f, c.beta = -2.f, c.bias = true, c.pad = 2;
    check(c, 9200 + uint64_t(K));
    c.beta = 0.f;  // C is NaN and must come out as exactly the bias
    check(c, 9300 + uint64_t(K));
  }
}

// Bit-identical results for 1 and 2 threads, and for the same call repeated.
TEST_F(GemmTest, DeterministicAcrossThreadCounts) {
  const int64_t shapes[][3] = {{256, 768, 600}, {768, 256, 300}, {130, 500, 700}, {9, 97, 513}};
  uint64_t seed = 10000;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (const auto& s : shapes) {
        Case c;
        c.trans_a = ta, c.trans_b = tb, c.M = s[0], c.N = s[1], c.K = s[2], c.beta = 0.75f, c.bias = true;
        Operands one(c, seed += 4), two(c, seed), again(c, seed);
        llm::cpu::set_num_threads(1);
        run(c, one);
        llm::cpu::set_num_threads(2);
        run(c, two);
        run(c, again);
        EXPECT_EQ(0, std::memcmp(one.C.data.data(), two.C.data.data(), one.C.data.size() * sizeof(float)))
            << describe(c);
        EXPECT_EQ(0, std::memcmp(two.C.data.data(), again.C.data.data(), two.C.data.size() * sizeof(float)))
            << describe(c);
      }
}

TEST_F(GemmTest, Batched) {
  // Batch counts below and above the thread count, padded strides between the products.
  for (int threads : {1, 2}) {
    llm::cpu::set_num_threads(threads);
    for (int64_t batch : {int64_t(1), int64_t(3), int64_t(5)})
      for (bool ta : {false, true})
        for (bool tb : {false, true}) {
          const int64_t M = 17, N = 33, K = 65;
          const float alpha = 0.5f, beta = batch == 3 ? 0.f : 1.25f;
          const int64_t lda = (ta ? M : K) + 2, ldb = (tb ? K : N) + 1, ldc = N + 3;
          const int64_t stride_a = (ta ? K : M) * lda + 7, stride_b = (tb ? N : K) * ldb + 5,
                        stride_c = M * ldc + 11;
          const std::vector<float> A = random_floats(size_t(batch * stride_a), 1 + uint64_t(batch));
          const std::vector<float> B = random_floats(size_t(batch * stride_b), 2 + uint64_t(batch));
          std::vector<float> C = random_floats(size_t(batch * stride_c), 3 + uint64_t(batch));
          if (beta == 0.f) C.assign(C.size(), kNaN);
          const std::vector<float> C0 = C;
          llm::cpu::sgemm_batched(batch, ta, tb, M, N, K, alpha, A.data(), lda, stride_a, B.data(), ldb, stride_b,
                                  beta, C.data(), ldc, stride_c);
          for (int64_t b = 0; b < batch; ++b) {
            std::vector<double> want;
            std::vector<float> got;
            for (int64_t i = 0; i < M; ++i)
              for (int64_t j = 0; j < N; ++j) {
                double sum = 0;
                for (int64_t k = 0; k < K; ++k)
                  sum += double(A[size_t(b * stride_a + (ta ? k * lda + i : i * lda + k))]) *
                         double(B[size_t(b * stride_b + (tb ? j * ldb + k : k * ldb + j))]);
                const size_t at = size_t(b * stride_c + i * ldc + j);
                want.push_back(alpha * sum + (beta != 0.f ? double(beta) * C0[at] : 0.0));
                got.push_back(C[at]);
              }
            EXPECT_LE(max_rel_error(got, want), 1e-5) << "batch " << b << "/" << batch << " ta=" << ta << " tb=" << tb;
          }
        }
  }
}

TEST_F(GemmTest, IsaIsNamed) {
  const std::string isa = llm::cpu::sgemm_isa();
  EXPECT_TRUE(isa == "avx512" || isa == "avx2" || isa == "scalar") << isa;
}

}  // namespace
