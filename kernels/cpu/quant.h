// Weight-only int8 quantization in llama.cpp's Q8_0 layout: each row of K weights (K a multiple of 32)
// is K/32 blocks of one float scale and 32 int8 values (weight = scale · q, scale = max|w| / 127).
#pragma once
#include <cstdint>

namespace llm::cpu {

constexpr int64_t kQ8Block = 32;
// From this many rows of X on, gemm_q8 dequantizes W panel by panel into the fp32 GEMM: the product
// is compute-bound there, and the fp32 GEMM's register blocking beats per-block int8 dots with
// their per-block scaling. Below, it is bound by reading W, which int8 keeps to a quarter.
constexpr int64_t kQ8DequantRows = 16;

// w [N, K] (row-major) → q [N, K] int8 and scales [N, K/32].
void quantize_q8_rows(int64_t N, int64_t K, const float* w, int8_t* q, float* scales);

// C[M×N] = X[M×K] · Wᵀ (+ bias) with W in Q8_0 (as quantize_q8_rows wrote it).
// M < kQ8DequantRows: X is quantized to Q8_0 too, row by row, and each output is a sum over blocks
// of an int8 dot product (AVX-512 VNNI where the CPU has it) times both blocks' scales.
// M >= kQ8DequantRows: X stays fp32 and multiplies W dequantized (scale · q), in wide panels.
// Either way every output is one fixed-order sum, so results do not depend on the thread count.
void gemm_q8(int64_t M, int64_t N, int64_t K, const float* x, const int8_t* wq, const float* w_scales,
             const float* bias, float* C);

// Which dot-product code gemm_q8 uses for small M ("avx512-vnni" or "scalar").
const char* q8_isa();

}  // namespace llm::cpu
