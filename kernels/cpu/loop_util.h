// Private to kernels/cpu: when to go parallel, and vectorized elementwise loops with padded tails.
#pragma once
#include <cstdint>

#include "kernels/cpu/simd_math.h"

namespace llm::cpu {

// Below this many elements of work a kernel runs on one thread: waking the OpenMP team costs a few
// microseconds, more than the work itself.
constexpr int64_t kParallelMinWork = int64_t(1) << 15;

// Calls body(begin, end) over [0, n) in static chunks, in parallel when n is large enough. Chunk
// boundaries are multiples of the SIMD width so no vector straddles two threads.
template <typename Body>
void parallel_chunks(int64_t n, Body body) {
  const int64_t grain = 4096;
  const int64_t chunks = (n + grain - 1) / grain;
#pragma omp parallel for schedule(static) if (n >= kParallelMinWork)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * grain;
    body(begin, begin + grain < n ? begin + grain : n);
  }
}

// y[i] = f(x[i]) (and the 2- and 3-input variants) with f a function of simd::Vf. The tail goes
// through the same f on a padded vector, so every element gets identical arithmetic.
template <typename F>
void map1(int64_t n, const float* x, float* y, F f) {
  using namespace simd;
  parallel_chunks(n, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    for (; i + kWidth <= end; i += kWidth) store(y + i, f(load(x + i)));
    if (i < end) store_partial(y + i, f(load_partial(x + i, end - i, 1.0f)), end - i);
  });
}
template <typename F>
void map2(int64_t n, const float* a, const float* b, float* y, F f) {
  using namespace simd;
  parallel_chunks(n, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    for (; i + kWidth <= end; i += kWidth) store(y + i, f(load(a + i), load(b + i)));
    if (i < end) {
      const int64_t r = end - i;
      store_partial(y + i, f(load_partial(a + i, r, 1.0f), load_partial(b + i, r, 1.0f)), r);
    }
  });
}
// Two outputs from three inputs (backward of a two-input op): f(a, b, c, &out1, &out2).
template <typename F>
void map3_to2(int64_t n, const float* a, const float* b, const float* c, float* y1, float* y2, F f) {
  using namespace simd;
  parallel_chunks(n, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    Vf o1, o2;
    for (; i + kWidth <= end; i += kWidth) {
      f(load(a + i), load(b + i), load(c + i), &o1, &o2);
      store(y1 + i, o1);
      store(y2 + i, o2);
    }
    if (i < end) {
      const int64_t r = end - i;
      f(load_partial(a + i, r, 1.0f), load_partial(b + i, r, 1.0f), load_partial(c + i, r, 1.0f), &o1, &o2);
      store_partial(y1 + i, o1, r);
      store_partial(y2 + i, o2, r);
    }
  });
}

}  // namespace llm::cpu
