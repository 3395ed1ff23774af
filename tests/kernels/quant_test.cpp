#include "kernels/cpu/quant.h"

#include <cmath>

#include "kernels/cpu/parallel.h"
#include "tests/common/testing.h"

namespace llm::cpu {
namespace {

// Q8_0 of one block, as the format defines it (scale = max|w| / 127, q = round(w / scale)).
void reference_quantize(const float* w, int64_t n, std::vector<int>* q, std::vector<double>* scales) {
  for (int64_t b = 0; b < n / kQ8Block; ++b) {
    double amax = 0;
    for (int64_t i = 0; i < kQ8Block; ++i) amax = std::max(amax, std::fabs(double(w[b * kQ8Block + i])));
    const double s = float(amax / 127.0);
    scales->push_back(s);
    for (int64_t i = 0; i < kQ8Block; ++i) q->push_back(s > 0 ? int(std::lrint(w[b * kQ8Block + i] / float(s))) : 0);
  }
}

TEST(Q8, QuantizeMatchesTheFormat) {
  const int64_t N = 7, K = 96;  // a full row group and one of three rows
  auto w = testing::random_floats(N * K, 1);
  w[5] = 0.f;
  std::vector<int8_t> q(N * K);
  std::vector<float> s(N * K / 32);
  quantize_q8_rows(N, K, w.data(), q.data(), s.data());
  std::vector<int> rq;
  std::vector<double> rs;
  reference_quantize(w.data(), N * K, &rq, &rs);
  for (int64_t j = 0; j < N; ++j)
    for (int64_t k = 0; k < K; ++k) {
      const Q8Index at = q8_index(N, K, j, k);
      const int64_t i = j * K + k;
      EXPECT_EQ(q[at.q], rq[i]) << j << "," << k;
      EXPECT_FLOAT_EQ(s[at.scale], float(rs[i / 32])) << j << "," << k;
      // Every weight is within half a quantization step.
      EXPECT_LE(std::fabs(w[i] - s[at.scale] * q[at.q]), 0.5f * s[at.scale] + 1e-7f);
    }
}

// Small M (decoding): activations quantized too, int8 dots per block. N not a multiple of 4 ends in a
// row group of 1, 2 or 3 rows (N = 9, 130, 67).
TEST(Q8, SmallBatchesEqualTheQuantizedProduct) {
  for (const auto& [M, N, K] : std::vector<std::array<int64_t, 3>>{
           {1, 1, 32}, {1, 67, 64}, {3, 17, 96}, {5, 130, 768}, {15, 9, 160}}) {
    const auto x = testing::random_floats(M * K, 2), w = testing::random_floats(N * K, 3), bias = testing::random_floats(N, 4);
    std::vector<int8_t> q(N * K);
    std::vector<float> s(N * K / 32);
    quantize_q8_rows(N, K, w.data(), q.data(), s.data());
    std::vector<float> c = testing::poisoned(M * N);
    gemm_q8(M, N, K, x.data(), q.data(), s.data(), bias.data(), c.data());
    // Reference: the same integer products in double, with x quantized as the kernel does.
    std::vector<int> xq;
    std::vector<double> xs;
    reference_quantize(x.data(), M * K, &xq, &xs);
    std::vector<double> want(M * N), exact(M * N);
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        double acc = bias[j], full = bias[j];
        for (int64_t b = 0; b < K / 32; ++b) {
          long dot = 0;
          for (int64_t k = 0; k < 32; ++k) dot += long(xq[i * K + b * 32 + k]) * q[q8_index(N, K, j, b * 32 + k).q];
          acc += double(dot) * s[q8_index(N, K, j, b * 32).scale] * xs[i * (K / 32) + b];
        }
        for (int64_t k = 0; k < K; ++k) full += double(x[i * K + k]) * w[j * K + k];
        want[i * N + j] = acc;
        exact[i * N + j] = full;
      }
    EXPECT_LE(testing::max_rel_error(c, want), 1e-5) << M << "x" << N << "x" << K << " (" << q8_isa() << ")";
    EXPECT_LE(testing::max_rel_error(c, exact), 3e-2) << "int8 error vs the fp32 product";
  }
}

// Large M (prompts): fp32 activations times the dequantized weights.
TEST(Q8, LargeBatchesEqualTheDequantizedProduct) {
  for (const auto& [M, N, K] : std::vector<std::array<int64_t, 3>>{{kQ8DequantRows, 67, 64}, {33, 130, 768}, {100, 3, 96}}) {
    const auto x = testing::random_floats(M * K, 7), w = testing::random_floats(N * K, 8), bias = testing::random_floats(N, 9);
    std::vector<int8_t> q(N * K);
    std::vector<float> s(N * K / 32);
    quantize_q8_rows(N, K, w.data(), q.data(), s.data());
    std::vector<float> c = testing::poisoned(M * N);
    gemm_q8(M, N, K, x.data(), q.data(), s.data(), bias.data(), c.data());
    std::vector<double> want(M * N);
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        double acc = bias[j];
        for (int64_t k = 0; k < K; ++k) {
          const Q8Index at = q8_index(N, K, j, k);
          acc += double(x[i * K + k]) * (double(s[at.scale]) * q[at.q]);
        }
        want[i * N + j] = acc;
      }
    EXPECT_LE(testing::max_rel_error(c, want), 1e-5) << M << "x" << N << "x" << K;
  }
}

TEST(Q8, SameResultForAnyThreadCount) {
  for (const int64_t M : {int64_t(2), kQ8DequantRows + 1}) {
    const int64_t N = 512, K = 512;
    const auto x = testing::random_floats(M * K, 5), w = testing::random_floats(N * K, 6);
    std::vector<int8_t> q(N * K);
    std::vector<float> s(N * K / 32), c1(M * N), c2(M * N);
    quantize_q8_rows(N, K, w.data(), q.data(), s.data());
    set_num_threads(1);
    gemm_q8(M, N, K, x.data(), q.data(), s.data(), nullptr, c1.data());
    set_num_threads(2);
    gemm_q8(M, N, K, x.data(), q.data(), s.data(), nullptr, c2.data());
    set_num_threads(0);
    EXPECT_EQ(c1, c2) << "M = " << M;
  }
}

}  // namespace
}  // namespace llm::cpu
