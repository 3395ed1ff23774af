// The process-wide switches for the wgmma kernels: kNative's GEMM (kernels/cuda/gemm.h) and the
// attention forward (kernels/cuda/attention.h). Both start on, or off when the environment variable
// LLM_CUDA_WGMMA=0 is set.
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/gemm.h"

namespace llm::cuda {

namespace {
bool wgmma_allowed_by_environment() {
  const char* env = std::getenv("LLM_CUDA_WGMMA");
  return !(env && std::strcmp(env, "0") == 0);
}
std::atomic<bool>& gemm_switch() {
  static std::atomic<bool> on{wgmma_allowed_by_environment()};
  return on;
}
std::atomic<bool>& attention_switch() {
  static std::atomic<bool> on{wgmma_allowed_by_environment()};
  return on;
}
}  // namespace

void set_gemm_wgmma(bool enabled) { gemm_switch().store(enabled); }
bool gemm_wgmma_enabled() { return gemm_switch().load(); }

void set_attention_wgmma(bool enabled) { attention_switch().store(enabled); }
bool attention_wgmma_enabled() { return attention_switch().load(); }

}  // namespace llm::cuda
