// The process-wide choice between the fast and the simple fused kernels (kernels/cuda/fused.h).
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "kernels/cuda/fused.h"

namespace llm::cuda {

namespace {
std::atomic<FusedVariant>& variant() {
  static std::atomic<FusedVariant> v{[] {
    const char* env = std::getenv("LLM_CUDA_FUSED");
    return env && std::strcmp(env, "simple") == 0 ? FusedVariant::kSimple : FusedVariant::kFast;
  }()};
  return v;
}
}  // namespace

void set_fused_variant(FusedVariant v) { variant().store(v); }
FusedVariant fused_variant() { return variant().load(); }
const char* to_string(FusedVariant v) { return v == FusedVariant::kFast ? "fast" : "simple"; }

}  // namespace llm::cuda
