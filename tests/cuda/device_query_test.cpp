// Proves the CUDA path: compiled and linked on every machine with nvcc, run where there is a GPU.
#include "kernels/cuda/device_query.h"

#include "engine/core/allocator.h"
#include "tests/common/testing.h"

namespace llm {
namespace {

TEST(Cuda, DeviceQueryAndSmokeKernel) {
  const auto devices = cuda::query_devices();
  if (devices.empty()) GTEST_SKIP() << "no CUDA device (or driver) on this machine: the CUDA build was compiled but not run";
  EXPECT_EQ(static_cast<int>(devices.size()), cuda_device_count());
  for (const auto& d : devices) {
    EXPECT_GE(d.major, 5) << d.name;
    EXPECT_GT(d.total_memory, 0u);
    std::string error;
    EXPECT_TRUE(cuda::smoke_kernel(d.index, &error)) << d.name << ": " << error;
  }
}

}  // namespace
}  // namespace llm
