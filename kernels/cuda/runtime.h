// What every CUDA kernel and its callers share: the bf16 type, the stream type, and error checks.
// Kernels report failures (bad launch, unsupported shape) by throwing std::runtime_error with a
// message that names the kernel; the engine turns that into llm::Error.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace llm::cuda {

using bf16 = __nv_bfloat16;

// Throws std::runtime_error("CUDA error in <what>: <reason>") when err is not cudaSuccess.
inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(err));
}
// After a kernel launch: reports a bad launch configuration at the call that made it.
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

}  // namespace llm::cuda
