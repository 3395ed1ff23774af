// The process-wide switches for the wgmma kernels and their TMA forms: kNative's GEMM (kernels/cuda/gemm.h)
// and the attention forward (kernels/cuda/attention.h). They start on; the environment variable
// LLM_CUDA_WGMMA=0 turns the wgmma kernels off, LLM_CUDA_TMA=0 their TMA forms. LLM_CUDA_EXCLUDE
// names kernels to treat as absent (kernel_excluded).
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <sstream>
#include <string>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/gemm.h"

namespace llm::cuda {

namespace {
bool allowed_by_environment(const char* variable) {
  const char* env = std::getenv(variable);
  return !(env && std::strcmp(env, "0") == 0);
}
std::atomic<bool>& gemm_switch() {
  static std::atomic<bool> on{allowed_by_environment("LLM_CUDA_WGMMA")};
  return on;
}
std::atomic<bool>& tma_switch() {
  static std::atomic<bool> on{allowed_by_environment("LLM_CUDA_TMA")};
  return on;
}
std::atomic<bool>& attention_switch() {
  static std::atomic<bool> on{allowed_by_environment("LLM_CUDA_WGMMA")};
  return on;
}
std::atomic<bool>& attention_tma_switch() {
  static std::atomic<bool> on{allowed_by_environment("LLM_CUDA_TMA")};
  return on;
}
// LLM_CUDA_EXCLUDE's names, read once; an unknown name is reported once on stderr (a typo would
// otherwise exclude nothing, silently).
const std::set<std::string>& excluded_kernels() {
  static const std::set<std::string> names = [] {
    std::set<std::string> out;
    const char* env = std::getenv("LLM_CUDA_EXCLUDE");
    std::string list = env ? env : "";
    for (char& c : list)
      if (c == ',') c = ' ';
    std::istringstream words(list);
    for (std::string w; words >> w;) {
      static const std::set<std::string> known = {"gemm_wgmma", "gemm_tma", "attention_wgmma", "attention_tma",
                                                  "attention_bwd_wgmma"};
      if (known.count(w)) out.insert(w);
      else std::fprintf(stderr, "warning: LLM_CUDA_EXCLUDE: unknown kernel '%s' (known: gemm_wgmma, gemm_tma, "
                        "attention_wgmma, attention_tma, attention_bwd_wgmma)\n", w.c_str());
    }
    return out;
  }();
  return names;
}
}  // namespace

bool kernel_excluded(const char* name) { return excluded_kernels().count(name) > 0; }

void set_gemm_wgmma(bool enabled) { gemm_switch().store(enabled); }
bool gemm_wgmma_enabled() { return gemm_switch().load(); }

void set_gemm_tma(bool enabled) { tma_switch().store(enabled); }
bool gemm_tma_enabled() { return tma_switch().load(); }

void set_attention_wgmma(bool enabled) { attention_switch().store(enabled); }
bool attention_wgmma_enabled() { return attention_switch().load(); }

void set_attention_tma(bool enabled) { attention_tma_switch().store(enabled); }
bool attention_tma_enabled() { return attention_tma_switch().load(); }

}  // namespace llm::cuda
