// Weight-only int8 quantization in llama.cpp's Q8_0 layout: each row of K weights (K a multiple of 32)
// is K/32 blocks of one float scale and 32 int8 values (weight = scale · q, scale = max|w| / 127).
// Products quantize the activations to int8 the same way, block by block, and multiply with int8 dot
// products (AVX-512 VNNI where the CPU has it).
#pragma once
#include <cstdint>

namespace llm::cpu {

constexpr int64_t kQ8Block = 32;

// w [N, K] (row-major) → q [N, K] int8, scales [N, K/32], and block_sums [N, K/32] (the sum of each
// block's int8 values, which the unsigned×signed dot products need).
void quantize_q8_rows(int64_t N, int64_t K, const float* w, int8_t* q, float* scales, int32_t* block_sums);

// C[M×N] = X[M×K] · Wᵀ (+ bias) with W in Q8_0 (as quantize_q8_rows wrote it). Work is split over N
// only, and every output is one fixed-order sum, so results do not depend on the thread count.
void gemm_q8(int64_t M, int64_t N, int64_t K, const float* x, const int8_t* wq, const float* w_scales,
             const int32_t* w_block_sums, const float* bias, float* C);

// Which dot-product code gemm_q8 uses ("avx512-vnni" or "scalar").
const char* q8_isa();

}  // namespace llm::cpu
