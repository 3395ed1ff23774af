// The emulator's checks fire (built only with -DLLM_CUDA_EMULATOR=ON): each misuse the engine's host
// code could commit aborts with a message naming the function and the argument.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/fused.h"
#include "kernels/cuda/gemm.h"
#include "tests/cuda/cuda_testing.h"

namespace llm::testing {
namespace {

// LLM_CUDA_EXCLUDE (kernels/cuda/gemm.h) is plain host code, the real one here. It is read once per
// process, on the first question; nothing else in this program asks, so setting it here is in time.
TEST(CudaSwitches, KernelExclusionsComeFromTheEnvironment) {
  ::setenv("LLM_CUDA_EXCLUDE", "gemm_tma,attention_bwd_wgmma  bogus", 1);
  ::testing::internal::CaptureStderr();
  EXPECT_TRUE(cuda::kernel_excluded("gemm_tma"));
  EXPECT_TRUE(cuda::kernel_excluded("attention_bwd_wgmma"));
  EXPECT_FALSE(cuda::kernel_excluded("gemm_wgmma"));
  EXPECT_FALSE(cuda::kernel_excluded("attention_wgmma"));
  EXPECT_FALSE(cuda::kernel_excluded("bogus"));
  const std::string warnings = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(warnings.find("warning: LLM_CUDA_EXCLUDE: unknown kernel 'bogus'"), std::string::npos) << warnings;
  EXPECT_EQ(warnings.find('\n'), warnings.size() - 1) << "one line, once: " << warnings;
}

TEST(CudaEmulator, DeviceMemoryStartsAsNaNAndRoundTrips) {
  DeviceBuffer<float> d(17);
  for (float v : d.download()) EXPECT_TRUE(std::isnan(v));
  const std::vector<float> x = random_floats(17, 1);
  d.upload(x);
  EXPECT_EQ(d.download(), x);
}

TEST(CudaEmulator, KernelsRejectHostPointers) {
  std::vector<float> host(8, 1.f);
  DeviceBuffer<float> d(8);
  EXPECT_DEATH(cuda::gelu_forward(8, host.data(), d.get(), nullptr), "cuda::gelu_forward: x \\(.*\\) is not device memory");
  EXPECT_DEATH(cuda::scale(8, d.get(), 2.f, host.data(), nullptr), "cuda::scale: y \\(.*\\) is not device memory");
}

TEST(CudaEmulator, KernelsRejectExtentsPastTheAllocation) {
  DeviceBuffer<float> x(8), y(7);
  EXPECT_DEATH(cuda::fill(8, 1.f, y.get(), nullptr), "cuda::fill: y \\(.*, 32 bytes\\) runs past the end");
  EXPECT_DEATH(cuda::fill(8, 1.f, x.get() + 1, nullptr), "cuda::fill: y .* runs past the end");
  DeviceBuffer<cuda::bf16> a(6 * 4), b(4 * 5), c(6 * 5);
  cuda::Gemm g;
  g.M = 6;
  g.N = 5;
  g.K = 4;
  g.A = a.get();
  g.lda = 4;
  g.B = b.get();
  g.ldb = 5;
  g.C = c.get();
  g.ldc = 5;
  g.batch = 2;  // A and C shared by both products; the second B starts where b ends
  g.stride_b = 20;
  EXPECT_DEATH(cuda::gemm(g, cuda::GemmBackend::kAuto, nullptr), "cuda::gemm: B \\(.*, 80 bytes\\) runs past the end");
}

TEST(CudaEmulator, CopiesCheckTheirDirection) {
  std::vector<float> host(4);
  DeviceBuffer<float> d(4);
  EXPECT_DEATH((void)cudaMemcpy(d.get(), host.data(), 16, cudaMemcpyDeviceToHost), "cudaMemcpy: dst \\(device to host\\)");
  EXPECT_DEATH((void)cudaMemcpy(host.data(), d.get(), 16, cudaMemcpyHostToDevice), "cudaMemcpy: dst \\(host to device\\)");
  EXPECT_DEATH((void)cudaMemcpy(host.data(), d.get(), 20, cudaMemcpyDeviceToHost), "src \\(device to host\\).*runs past");
}

TEST(CudaEmulator, DeadStreamsAndForeignFreesAbort) {
  cudaStream_t s = nullptr;
  ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
  ASSERT_EQ(cudaStreamDestroy(s), cudaSuccess);
  DeviceBuffer<float> d(4);
  EXPECT_DEATH(cuda::fill(4, 0.f, d.get(), s), "cuda::fill: the stream argument is not a live stream");
  std::vector<float> host(4);
  EXPECT_DEATH((void)cudaFree(host.data()), "cudaFree: the pointer is not the start of a live device allocation");
}

}  // namespace
}  // namespace llm::testing
