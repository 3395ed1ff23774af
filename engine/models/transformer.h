// Decoder-only language models: GPT-2 and the LLaMA family, built from engine/nn modules with Hugging
// Face parameter names, so checkpoints map onto them without special cases.
#pragma once
#include <memory>
#include <vector>

#include "engine/models/config.h"
#include "engine/nn/module.h"

namespace llm::models {

struct ForwardOptions {
  Tensor positions;  // i32 [T] or [B, T]; default 0..T-1
  Tensor doc;        // i32 [B, T] document ids of packed sequences; default: one document per row
};

class CausalLM : public nn::Module {
 public:
  explicit CausalLM(const ModelConfig& config) : config_(config) {}
  // ids i32 [B, T] → logits f32 [B, T, vocab].
  virtual Tensor forward(const Tensor& ids, const ForwardOptions& options = {}) = 0;
  // GPT-2 initialization: normal(0, 0.02) for matrices and embeddings, residual output projections
  // scaled by 1/sqrt(2·n_layers), zero biases, unit norm weights. Deterministic from the seed.
  void init_weights(uint64_t seed);
  const ModelConfig& config() const { return config_; }

 protected:
  ModelConfig config_;
};

// The model for config.arch, with weights initialized from `seed`.
std::unique_ptr<CausalLM> make_model(const ModelConfig& config, uint64_t seed = 0);

}  // namespace llm::models
