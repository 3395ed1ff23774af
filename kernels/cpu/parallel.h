// Thread-count control and the static work partition every CPU kernel uses.
#pragma once
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

}  // namespace llm::cpu
