// llm-convert --in PATH --out PATH [--tokenizer DIR|FILE] [--merge-lora ADAPTER_DIR] [--verify]
// Converts models between a Hugging Face directory (config.json + model.safetensors + tokenizer files),
// a native checkpoint (.h5, weights only) and, as input only, a llama2.c .bin. The output kind follows
// the --out path: ending in .h5 → native checkpoint, anything else → HF directory. --merge-lora folds
// a LoRA adapter (PEFT layout, engine/io/lora_adapter.h) into the weights written. --verify reloads
// what was written and checks its logits on a fixed token sequence against the input model's (with
// the adapter, when one is merged).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>

#include "engine/core/error.h"
#include "engine/io/lora_adapter.h"
#include "engine/train/checkpoint.h"
#include "engine/train/pretrained.h"

namespace {
const char* kUsage =
    "usage: llm-convert --in PATH --out PATH [--tokenizer DIR|FILE] [--merge-lora ADAPTER_DIR] [--verify]\n";

int usage(const std::string& message) {
  std::fprintf(stderr, "error: %s\n%s", message.c_str(), kUsage);
  return 2;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Logits of a fixed, deterministic token sequence.
std::vector<float> probe_logits(llm::models::CausalLM& model) {
  const llm::models::ModelConfig& c = model.config();
  const int64_t T = std::min<int64_t>(16, c.max_seq_len);
  std::vector<int32_t> ids(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) ids[t] = static_cast<int32_t>((t * 7919 + 1) % c.vocab_size);
  llm::NoGradGuard no_grad;
  return model.forward(llm::Tensor::from_vector(ids, llm::Shape{1, T})).to_vector<float>();
}
}  // namespace

int main(int argc, char** argv) {
  std::string in, out, tokenizer, lora;
  bool verify = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    if (a == "--in" || a == "--out" || a == "--tokenizer" || a == "--merge-lora") {
      const char* v = value();
      if (!v) return usage(a + " needs a path");
      (a == "--in" ? in : a == "--out" ? out : a == "--tokenizer" ? tokenizer : lora) = v;
    } else if (a == "--verify") {
      verify = true;
    } else if (a == "-h" || a == "--help") {
      std::printf("%s", kUsage);
      return 0;
    } else {
      return usage("unknown argument '" + a + "'");
    }
  }
  if (in.empty() || out.empty()) return usage("--in and --out are required");
  try {
    llm::io::LoadedModel m = llm::train::load_pretrained(in);
    if (!tokenizer.empty()) m.tokenizer = tokenizer;
    std::vector<std::pair<std::string, llm::Tensor>> weights(m.weights.begin(), m.weights.end());
    std::vector<float> want;  // the input model's logits, for --verify
    if (!lora.empty()) {
      auto model = llm::train::make_loaded_model(m);
      const llm::io::LoraAdapterInfo adapter = llm::io::load_lora_adapter(lora, *model);
      if (verify) want = probe_logits(*model);
      llm::nn::merge_lora(*model);
      weights = model->named_parameters();
      std::printf("merged LoRA adapter %s: %zu modules, r %lld, alpha %g\n", lora.c_str(), adapter.modules.size(),
                  static_cast<long long>(adapter.config.rank), adapter.config.alpha);
    }
    if (ends_with(out, ".h5")) {
      llm::train::Checkpoint ckpt;
      ckpt.model_config = m.config;
      ckpt.weights = weights;
      ckpt.has_optimizer = false;
      // A tokenizer path is recorded absolute, so the checkpoint works from any directory.
      std::error_code ec;
      if (!m.tokenizer.empty() && std::filesystem::exists(m.tokenizer, ec))
        ckpt.tokenizer = std::filesystem::absolute(m.tokenizer).lexically_normal().string();
      else
        ckpt.tokenizer = m.tokenizer;
      llm::train::save_checkpoint(out, ckpt);
    } else {
      llm::io::save_hf_directory(out, m.config, weights, m.tokenizer);
    }
    std::printf("%s -> %s: %s, %lld parameters%s\n", in.c_str(), out.c_str(), m.config.summary().c_str(),
                static_cast<long long>(m.config.num_parameters()),
                m.tokenizer.empty() ? ", no tokenizer" : (", tokenizer " + m.tokenizer).c_str());
    if (verify) {
      if (want.empty()) want = probe_logits(*llm::train::make_loaded_model(m));
      const std::vector<float> got = probe_logits(*llm::train::load_model(out));
      double max_diff = 0, scale = 0;
      for (size_t i = 0; i < want.size(); ++i) {
        max_diff = std::max(max_diff, std::fabs(static_cast<double>(got[i]) - want[i]));
        scale = std::max(scale, std::fabs(static_cast<double>(want[i])));
      }
      // A merged weight rounds differently from base + adapter computed apart: allow float32 round-off.
      const double tolerance = (lora.empty() ? 1e-6 : 1e-4) * std::max(scale, 1.0);
      LLM_CHECK(got.size() == want.size() && max_diff <= tolerance, out,
                ": verification failed: logits differ from the input model's by up to ", max_diff);
      std::printf("verified: %zu logits, max |difference| %g\n", want.size(), max_diff);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
