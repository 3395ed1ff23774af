// Single-precision GEMM for the CPU: cache-blocked, packed, register-tiled, OpenMP-parallel.
#pragma once
#include <cstdint>

namespace llm::cpu {

// Row-major C[M×N] = alpha · op(A) · op(B) + beta · C (+ bias broadcast over rows).
//   op(A) is M×K: A is stored M×K (lda ≥ K), or K×M when trans_a (lda ≥ M).
//   op(B) is K×N: B is stored K×N (ldb ≥ N), or N×K when trans_b (ldb ≥ K).
//   beta == 0 means C is write-only: it is never read, so it may hold NaN.
//   bias, when not null, has N entries added to every row of C after the product.
// Work is split over M and N only, never over K, so results are bit-identical for any thread count.
void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
           const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc,
           const float* bias = nullptr);

// `batch` independent products; operand i starts at A + i·stride_a, B + i·stride_b, C + i·stride_c.
void sgemm_batched(int64_t batch, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                   const float* A, int64_t lda, int64_t stride_a, const float* B, int64_t ldb, int64_t stride_b,
                   float beta, float* C, int64_t ldc, int64_t stride_c);

// Which micro-kernel this build uses ("avx512", "avx2" or "scalar"), for logs and benchmarks.
const char* sgemm_isa();

}  // namespace llm::cpu
