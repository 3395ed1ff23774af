// `llm-bench cuda`: GPU kernel and training benchmarks, one function per kernel family (each in its
// own file here), timed with CUDA events, medians printed as TFLOP/s rows.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace llm::bench_cuda {

// Milliseconds per call of fn on `stream`: warm-up, then the median of `reps` calls each timed by
// a pair of CUDA events.
inline double median_ms(const std::function<void()>& fn, cudaStream_t stream, int warmup = 3, int reps = 20) {
  for (int i = 0; i < warmup; ++i) fn();
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  std::vector<float> ms(reps);
  for (int i = 0; i < reps; ++i) {
    cudaEventRecord(start, stream);
    fn();
    cudaEventRecord(stop, stream);
    cudaEventSynchronize(stop);
    cudaEventElapsedTime(&ms[i], start, stop);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(ms.begin(), ms.end());
  return ms[reps / 2];
}

// One row of the table: what, at which shape, measured TFLOP/s (or another unit) and a reference.
inline void print_row(const std::string& op, const std::string& shape, const std::string& variant, double value,
                      const char* unit, double ref = -1) {
  std::printf("%-14s %-28s %-10s %10.1f %-8s", op.c_str(), shape.c_str(), variant.c_str(), value, unit);
  if (ref > 0) std::printf(" %7.1f%% of ref", 100.0 * value / ref);
  std::printf("\n");
  std::fflush(stdout);
}

// The sections of `llm-bench cuda`, each in its own file here, registering itself at start-up:
//   static bench_cuda::Section gemm_section(10, "gemm", &bench_gemm);
// They run in increasing `order` (gemm 10, attention 20, training 30) and print their own rows.
struct Section {
  Section(int order, const char* name, void (*run)());
  int order;
  const char* name;
  void (*run)();
};
std::vector<const Section*> sections();  // sorted by order

}  // namespace llm::bench_cuda
