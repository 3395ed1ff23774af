// kernels/cuda/device_query.h for the emulator: one device, and a smoke kernel that always runs.
#include "kernels/cuda/device_query.h"

#include <cuda_runtime_api.h>

namespace llm::cuda {

std::vector<DeviceInfo> query_devices() {
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  return {DeviceInfo{0, prop.name, prop.major, prop.minor, prop.multiProcessorCount, prop.totalGlobalMem}};
}

bool smoke_kernel(int device, std::string* error) {
  if (device == 0) return true;
  if (error) *error = "cuda:" + std::to_string(device) + " does not exist (the emulator has one device)";
  return false;
}

}  // namespace llm::cuda
