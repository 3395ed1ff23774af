// Helpers for the CUDA kernel tests: skip visibly without a GPU, device buffers, bf16 conversions.
// Every CUDA kernel is checked against its CPU kernel (kernels/cpu) on random inputs of awkward sizes,
// with outputs poisoned (NaN) before the call, using testing::max_rel_error: below 1e-2 for bf16
// paths and 1e-5 for fp32 paths.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/cuda/runtime.h"
#include "tests/common/testing.h"

namespace llm::testing {

inline bool have_gpu() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return n > 0;
}

#define LLM_SKIP_WITHOUT_GPU() \
  if (!::llm::testing::have_gpu()) GTEST_SKIP() << "no CUDA device on this machine: this CUDA test was compiled, not run"

// bf16 <-> float on the host, round-to-nearest-even as the GPU's conversions.
inline std::vector<cuda::bf16> to_bf16(const std::vector<float>& x) {
  std::vector<cuda::bf16> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = __float2bfloat16_rn(x[i]);
  return out;
}
inline std::vector<float> to_float(const std::vector<cuda::bf16>& x) {
  std::vector<float> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = __bfloat162float(x[i]);
  return out;
}
// x rounded through bf16: the values a bf16 kernel actually sees, for the CPU reference.
inline std::vector<float> round_bf16(const std::vector<float>& x) { return to_float(to_bf16(x)); }

// Device memory of n elements of T, freed on scope exit.
template <class T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) : n_(n) { cuda::check(cudaMalloc(&ptr_, (n ? n : 1) * sizeof(T)), "cudaMalloc"); }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* get() const { return ptr_; }
  size_t size() const { return n_; }
  void upload(const std::vector<T>& host) {
    cuda::check(cudaMemcpy(ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice), "upload");
  }
  std::vector<T> download() const {
    cuda::check(cudaDeviceSynchronize(), "kernel (synchronize before download)");
    std::vector<T> host(n_);
    cuda::check(cudaMemcpy(host.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost), "download");
    return host;
  }
  // Every byte 0xFF: NaN for float and bf16, so an element a kernel forgot to write fails the check.
  void poison() { cuda::check(cudaMemset(ptr_, 0xFF, n_ * sizeof(T)), "cudaMemset"); }

 private:
  T* ptr_ = nullptr;
  size_t n_;
};

}  // namespace llm::testing
