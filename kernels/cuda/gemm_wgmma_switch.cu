// The process-wide switch for kNative's wgmma kernel (kernels/cuda/gemm.h).
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "kernels/cuda/gemm.h"

namespace llm::cuda {

namespace {
std::atomic<bool>& wgmma_switch() {
  static std::atomic<bool> on{[] {
    const char* env = std::getenv("LLM_CUDA_WGMMA");
    return !(env && std::strcmp(env, "0") == 0);
  }()};
  return on;
}
}  // namespace

void set_gemm_wgmma(bool enabled) { wgmma_switch().store(enabled); }
bool gemm_wgmma_enabled() { return wgmma_switch().load(); }

}  // namespace llm::cuda
