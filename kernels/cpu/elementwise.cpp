// Elementwise maps, row broadcasts, deterministic reductions and counter-based dropout.
#include "kernels/cpu/elementwise.h"

#include <omp.h>

#include <vector>

#include "kernels/cpu/loop_util.h"
#include "kernels/cpu/parallel.h"
#include "kernels/dropout_mask.h"

namespace llm::cpu {

void fill(int64_t n, float value, float* y) {
  parallel_chunks(n, [&](int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) y[i] = value;
  });
}

// The maps below allow y to alias an input: element i only reads index i before writing it.
void add(int64_t n, const float* a, const float* b, float* y) {
  parallel_chunks(n, [&](int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) y[i] = a[i] + b[i];
  });
}

void mul(int64_t n, const float* a, const float* b, float* y) {
  parallel_chunks(n, [&](int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) y[i] = a[i] * b[i];
  });
}

void scale(int64_t n, const float* x, float alpha, float* y) {
  parallel_chunks(n, [&](int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) y[i] = alpha * x[i];
  });
}

void axpy(int64_t n, float alpha, const float* x, float* y) {
  parallel_chunks(n, [&](int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) y[i] += alpha * x[i];
  });
}

void add_rows(int64_t N, int64_t C, const float* x, const float* row, float* y) {
#pragma omp parallel for schedule(static) if (N * C >= kParallelMinWork)
  for (int64_t i = 0; i < N; ++i) {
    const float* xr = x + i * C;
    float* yr = y + i * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) yr[c] = xr[c] + row[c];
  }
}

void mul_rows(int64_t N, int64_t C, const float* x, const float* row, float* y) {
#pragma omp parallel for schedule(static) if (N * C >= kParallelMinWork)
  for (int64_t i = 0; i < N; ++i) {
    const float* xr = x + i * C;
    float* yr = y + i * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) yr[c] = xr[c] * row[c];
  }
}

// Threads own column blocks; each column is accumulated in double over rows 0..N-1 in order, so the
// result does not depend on the thread count (and long columns do not lose precision).
void sum_rows(int64_t N, int64_t C, const float* x, float* y) {
  constexpr int64_t kBlock = 256;
  const int64_t blocks = (C + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (N * C >= kParallelMinWork)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t c0 = blk * kBlock;
    const int64_t width = C - c0 < kBlock ? C - c0 : kBlock;
    double acc[kBlock];
    for (int64_t c = 0; c < width; ++c) acc[c] = 0.0;
    for (int64_t i = 0; i < N; ++i) {
      const float* xr = x + i * C + c0;
#pragma omp simd
      for (int64_t c = 0; c < width; ++c) acc[c] += double(xr[c]);
    }
    for (int64_t c = 0; c < width; ++c) y[c0 + c] = float(acc[c]);
  }
}

namespace {
// Partial sums over fixed 4096-element chunks, combined in chunk order: the chunking, not the
// threads, fixes the order of additions, so the result is the same for any thread count.
template <bool kSquares>
double chunked_sum(int64_t n, const float* x) {
  constexpr int64_t kChunk = 4096;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(size_t(chunks > 0 ? chunks : 1), 0.0);
#pragma omp parallel for schedule(static) if (n >= kParallelMinWork)
  for (int64_t k = 0; k < chunks; ++k) {
    const int64_t begin = k * kChunk, end = begin + kChunk < n ? begin + kChunk : n;
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = begin; i < end; ++i) {
      const double v = double(x[i]);
      s += kSquares ? v * v : v;
    }
    partial[size_t(k)] = s;
  }
  double total = 0.0;
  for (int64_t k = 0; k < chunks; ++k) total += partial[size_t(k)];
  return total;
}

// y[i] = x[i] * scale where the shared mask keeps element i, else 0.
void dropout_apply(int64_t n, const float* x, float p, uint64_t seed, float* y) {
  const float keep_scale = dropout_mask::keep_scale(p);
  const uint64_t key = dropout_mask::key(seed);
  parallel_chunks(n, [&](int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) y[i] = dropout_mask::keep(key, i, p) ? x[i] * keep_scale : 0.0f;
  });
}
}  // namespace

double sum(int64_t n, const float* x) { return chunked_sum<false>(n, x); }
double sum_squares(int64_t n, const float* x) { return chunked_sum<true>(n, x); }

void dropout_forward(int64_t n, const float* x, float p, uint64_t seed, float* y) {
  dropout_apply(n, x, p, seed, y);
}

// The same (seed, index) hash regenerates the forward mask, so nothing is stored.
void dropout_backward(int64_t n, const float* dy, float p, uint64_t seed, float* dx) {
  dropout_apply(n, dy, p, seed, dx);
}

}  // namespace llm::cpu
