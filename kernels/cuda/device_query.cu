// The first CUDA source: enumerates GPUs and runs one trivial kernel, so every build proves that
// the CUDA path compiles and links, and a GPU machine proves that it runs.
#include "kernels/cuda/device_query.h"

#include <cuda_runtime.h>

#include <cstdio>

namespace llm::cuda {

namespace {
__global__ void fill_iota(int* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = i;
}
}  // namespace

std::vector<DeviceInfo> query_devices() {
  std::vector<DeviceInfo> out;
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return out;
  }
  for (int d = 0; d < n; ++d) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, d) != cudaSuccess) continue;
    out.push_back({d, p.name, p.major, p.minor, p.multiProcessorCount, static_cast<size_t>(p.totalGlobalMem)});
  }
  return out;
}

bool smoke_kernel(int device, std::string* error) {
  constexpr int n = 1000;
  int* d_buf = nullptr;
  int host[n];
  auto fail = [&](cudaError_t e) {
    if (error) *error = cudaGetErrorString(e);
    if (d_buf) cudaFree(d_buf);
    return false;
  };
  cudaError_t e;
  if ((e = cudaSetDevice(device)) != cudaSuccess) return fail(e);
  if ((e = cudaMalloc(&d_buf, n * sizeof(int))) != cudaSuccess) return fail(e);
  fill_iota<<<(n + 255) / 256, 256>>>(d_buf, n);
  if ((e = cudaGetLastError()) != cudaSuccess) return fail(e);
  if ((e = cudaMemcpy(host, d_buf, sizeof(host), cudaMemcpyDeviceToHost)) != cudaSuccess) return fail(e);
  cudaFree(d_buf);
  for (int i = 0; i < n; ++i)
    if (host[i] != i) {
      if (error) *error = "kernel wrote wrong values";
      return false;
    }
  return true;
}

}  // namespace llm::cuda
