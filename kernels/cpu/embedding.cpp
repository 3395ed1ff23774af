// Embedding lookup and its scatter-add backward.
#include <omp.h>

#include <cstring>

#include "kernels/cpu/fused.h"
#include "kernels/cpu/loop_util.h"
#include "kernels/cpu/parallel.h"

namespace llm::cpu {

void embedding_forward(int64_t N, int64_t C, const int32_t* ids, const float* table, float* out) {
#pragma omp parallel for schedule(static) if (N * C >= kParallelMinWork)
  for (int64_t i = 0; i < N; ++i)
    std::memcpy(out + i * C, table + int64_t(ids[i]) * C, size_t(C) * sizeof(float));
}

// Each thread owns a range of columns and walks all ids in order, so every element of dtable is the
// same sequence of additions whatever the thread count: bit-identical for any number of threads.
void embedding_backward(int64_t N, int64_t C, int64_t V, const int32_t* ids, const float* dout, float* dtable) {
  constexpr int64_t kColumnGrain = 16;  // one 64-byte line: threads never share a cache line
  const int64_t column_blocks = (C + kColumnGrain - 1) / kColumnGrain;
#pragma omp parallel if ((N + V) * C >= kParallelMinWork)
  {
    int64_t block_begin, block_end;
    split_range(column_blocks, omp_get_num_threads(), omp_get_thread_num(), &block_begin, &block_end);
    const int64_t c0 = block_begin * kColumnGrain;
    const int64_t c1 = block_end * kColumnGrain < C ? block_end * kColumnGrain : C;
    if (c0 < c1) {
      const size_t bytes = size_t(c1 - c0) * sizeof(float);
      for (int64_t v = 0; v < V; ++v) std::memset(dtable + v * C + c0, 0, bytes);
      for (int64_t i = 0; i < N; ++i) {
        const float* src = dout + i * C;
        float* dst = dtable + int64_t(ids[i]) * C;
#pragma omp simd
        for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
      }
    }
  }
}

}  // namespace llm::cpu
