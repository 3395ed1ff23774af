// llm-train --config configs/X.yaml [--set section.key=value ...] [--resume PATH|auto]
// Pretraining from a YAML recipe. Ctrl-C (SIGINT) or SIGTERM saves a checkpoint and exits.
// The same source builds llm-finetune (LLM_FINETUNE): the same loop, for recipes whose
// finetune.method is sft, grpo or reinforce.
// Data parallel under a launcher: mpirun -np N llm-train ... or srun llm-train ... (dist section).
#include <csignal>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "engine/core/error.h"
#include "engine/dist/communicator.h"
#include "engine/train/trainer.h"

namespace {
#ifdef LLM_FINETUNE
constexpr const char* kTool = "llm-finetune";
#else
constexpr const char* kTool = "llm-train";
#endif

int usage(const std::string& message) {
  std::fprintf(stderr, "error: %s\nusage: %s --config FILE.yaml [--set section.key=value ...] [--resume PATH|auto]\n",
               message.c_str(), kTool);
  return 2;
}

extern "C" void on_signal(int) { llm::train::Trainer::stop(); }
}  // namespace

int main(int argc, char** argv) {
  std::string config_path, resume;
  std::vector<std::string> overrides;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    if (a == "--config") {
      const char* v = value();
      if (!v) return usage("--config needs a file");
      config_path = v;
    } else if (a == "--set") {
      const char* v = value();
      if (!v) return usage("--set needs section.key=value");
      overrides.push_back(v);
    } else if (a == "--resume") {
      const char* v = value();
      if (!v) return usage("--resume needs a checkpoint path or auto");
      resume = v;
    } else if (a == "-h" || a == "--help") {
      std::printf("usage: %s --config FILE.yaml [--set section.key=value ...] [--resume PATH|auto]\n", kTool);
      return 0;
    } else {
      return usage("unknown argument '" + a + "'");
    }
  }
  if (config_path.empty()) return usage("--config is required");
  try {
    llm::train::TrainConfig config = llm::train::load_train_config(config_path, overrides);
#ifdef LLM_FINETUNE
    LLM_CHECK(config.is_finetune(), config_path, ": finetune.method: expected sft, grpo or reinforce (llm-train pretrains)");
#else
    LLM_CHECK(!config.is_finetune(), config_path, ": finetune.method ", config.method, ": run it with llm-finetune");
#endif
    llm::train::Trainer trainer(std::move(config), std::cout);
    if (!resume.empty()) trainer.resume(resume);
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    trainer.run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    std::fflush(stderr);
    llm::dist::abort_world(1);  // other ranks may be waiting for this one: end the launch now
    return 1;
  }
  return 0;
}
