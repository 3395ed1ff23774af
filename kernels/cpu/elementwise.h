// Elementwise maps, broadcasting helpers, deterministic reductions, dropout and dtype conversion.
#pragma once
#include <cstdint>

namespace llm::cpu {

void fill(int64_t n, float value, float* y);
void add(int64_t n, const float* a, const float* b, float* y);        // y = a + b
void mul(int64_t n, const float* a, const float* b, float* y);        // y = a * b
void scale(int64_t n, const float* x, float alpha, float* y);         // y = alpha * x
void axpy(int64_t n, float alpha, const float* x, float* y);          // y += alpha * x
void add_rows(int64_t N, int64_t C, const float* x, const float* row, float* y);  // y[i,:] = x[i,:] + row
void mul_rows(int64_t N, int64_t C, const float* x, const float* row, float* y);  // y[i,:] = x[i,:] * row
// y[c] = sum over i of x[i,c] (bias gradients). Row order fixed: bit-identical for any thread count.
void sum_rows(int64_t N, int64_t C, const float* x, float* y);
// Sum of x (and of x²) accumulated in double over fixed-size chunks combined in a fixed order:
// bit-identical for any thread count.
double sum(int64_t n, const float* x);
double sum_squares(int64_t n, const float* x);

// Inverted dropout: y = x * keep / (1 - p), keep drawn from a counter-based generator at (seed, i),
// so the mask depends only on the seed and the element index (not on threads) and backward
// regenerates it instead of storing it.
void dropout_forward(int64_t n, const float* x, float p, uint64_t seed, float* y);
void dropout_backward(int64_t n, const float* dy, float p, uint64_t seed, float* dx);

// dtype conversion; float → bf16/f16 rounds to nearest even, NaN stays NaN.
void f32_to_bf16(int64_t n, const float* x, uint16_t* y);
void bf16_to_f32(int64_t n, const uint16_t* x, float* y);
void f32_to_f16(int64_t n, const float* x, uint16_t* y);
void f16_to_f32(int64_t n, const uint16_t* x, float* y);

}  // namespace llm::cpu
