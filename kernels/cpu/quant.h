// Weight-only int8 quantization with llama.cpp's Q8_0 blocks: each row of K weights (K a multiple of
// 32) is K/32 blocks of one float scale and 32 int8 values (weight = scale · q, scale = max|w| / 127).
//
// Storage is in row groups, so that decoding reads memory in one sequential stream: rows are taken
// kQ8Rows at a time (the last group may have fewer), and inside a group the blocks are stored
// block-major — block 0 of each of the group's rows, then block 1 of each, ... — in q (int8, N·K
// values) and likewise in scales (N·K/32 floats). q8_index says where weight (j, k) lives.
#pragma once
#include <algorithm>
#include <cstdint>

namespace llm::cpu {

constexpr int64_t kQ8Block = 32;
constexpr int64_t kQ8Rows = 4;
// From this many rows of X on, gemm_q8 dequantizes W panel by panel into the fp32 GEMM: the product
// is compute-bound there, and the fp32 GEMM's register blocking beats per-block int8 dots with
// their per-block scaling. Below, it is bound by reading W, which int8 keeps to a quarter.
constexpr int64_t kQ8DequantRows = 16;

// Where weight (j, k) of an N×K matrix is stored: its int8 value at q[.q], its block's scale at
// scales[.scale].
struct Q8Index {
  int64_t q, scale;
};
inline Q8Index q8_index(int64_t N, int64_t K, int64_t j, int64_t k) {
  const int64_t first = j - j % kQ8Rows, rows = std::min(kQ8Rows, N - first), b = k / kQ8Block;
  const int64_t slot = b * rows + (j - first);  // the block's place in its group
  return {first * K + slot * kQ8Block + k % kQ8Block, first * (K / kQ8Block) + slot};
}

// w [N, K] (row-major) → q (N·K int8) and scales (N·K/32), in the row-group layout above.
void quantize_q8_rows(int64_t N, int64_t K, const float* w, int8_t* q, float* scales);

// C[M×N] = X[M×K] · Wᵀ (+ bias) with W as quantize_q8_rows wrote it.
// M < kQ8DequantRows: X is quantized to Q8_0 too, row by row, and each output is a sum over blocks
// of an int8 dot product (AVX-512 VNNI where the CPU has it, else AVX2) times both blocks' scales.
// M >= kQ8DequantRows: X stays fp32 and multiplies W dequantized (scale · q), in wide panels.
// Either way every output is one fixed-order sum, so results do not depend on the thread count.
void gemm_q8(int64_t M, int64_t N, int64_t K, const float* x, const int8_t* wq, const float* w_scales,
             const float* bias, float* C);

// Which dot-product code gemm_q8 uses for small M ("avx512-vnni", "avx2" or "scalar").
const char* q8_isa();

}  // namespace llm::cpu
