// Token samplers with llama.cpp's flags and order: repetition penalty, top-k, top-p, min-p, then
// temperature; temperature 0 is greedy. Each sampler owns a seeded generator, so the same seed gives
// the same tokens (the logits themselves do not depend on the thread count).
#pragma once
#include <cstdint>
#include <vector>

#include "engine/core/tensor.h"

namespace llm::generate {

struct SamplingOptions {
  float temperature = 0.8f;     // <= 0: greedy (argmax)
  int64_t top_k = 40;           // keep the k most likely tokens; <= 0: off
  float top_p = 0.95f;          // keep the smallest set with this much probability; >= 1: off
  float min_p = 0.05f;          // drop tokens below min_p × the top probability; <= 0: off
  float repeat_penalty = 1.0f;  // CTRL-style penalty on recently seen tokens; 1: off
  int64_t repeat_last_n = 64;   // how many recent tokens the penalty looks at
  uint64_t seed = 0;
  // Throws llm::Error naming the first invalid field.
  void validate() const;
};

class Sampler {
 public:
  explicit Sampler(const SamplingOptions& options, uint64_t stream = 0);
  // Picks the next token from V logits; `history` (prompt and generated tokens) feeds the penalty.
  int32_t sample(const float* logits, int64_t V, const std::vector<int32_t>& history);

 private:
  SamplingOptions o_;
  Generator gen_;
  std::vector<float> work_;
  std::vector<int32_t> order_;
};

}  // namespace llm::generate
