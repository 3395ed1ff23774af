// Thread-count control and the static work partition every CPU kernel uses.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace llm::cpu {

// Threads used by the kernels (OpenMP). set_num_threads(n <= 0) restores the default.
int num_threads();
void set_num_threads(int n);

// [begin, end) of part `part` when n items are split into `parts` contiguous, near-equal ranges.
inline void split_range(int64_t n, int parts, int part, int64_t* begin, int64_t* end) {
  const int64_t base = n / parts, extra = n % parts;
  *begin = part * base + std::min<int64_t>(part, extra);
  *end = *begin + base + (part < extra ? 1 : 0);
}

// Runs fn(begin, end) over [0, n) cut into one contiguous range per thread (on the calling thread when
// threads <= 1). Each index belongs to exactly one call, so per-index results do not depend on threads.
template <typename Fn>
void parallel_ranges(int64_t n, int threads, Fn&& fn) {
  if (threads <= 1) {
    fn(int64_t(0), n);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    int64_t begin, end;
    split_range(n, omp_get_num_threads(), omp_get_thread_num(), &begin, &end);
    fn(begin, end);
  }
}

}  // namespace llm::cpu
