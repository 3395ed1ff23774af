// GPU discovery and a smoke kernel (built only with CUDA).
#pragma once
#include <cstddef>
#include <string>
#include <vector>

namespace llm::cuda {

struct DeviceInfo {
  int index;
  std::string name;
  int major, minor;        // compute capability
  int multiprocessors;
  size_t total_memory;     // bytes
};

std::vector<DeviceInfo> query_devices();  // empty without a GPU or driver

// Runs a tiny kernel on `device` and checks its output; false with *error set on any failure.
bool smoke_kernel(int device, std::string* error);

}  // namespace llm::cuda
