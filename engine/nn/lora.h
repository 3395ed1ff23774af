// LoRA (low-rank adaptation) on the Linear layers of a model, as Hugging Face PEFT does it: every
// parameter of the model is frozen and chosen Linear layers gain trainable matrices A [r, in] and
// B [out, r] (nn::LoraAdapter), so that the layer computes x·Wᵀ + b + (alpha/r)·(dropout(x)·Aᵀ)·Bᵀ.
// The adapter parameters are named "<module path>.lora_A.weight" / ".lora_B.weight", which are PEFT's
// names without its "base_model.model." prefix (engine/io/lora_adapter.h saves and loads PEFT's files).
//
// Targets, as PEFT's target_modules: a name matches a Linear whose dotted path equals it or ends with
// "." + name ("q_proj" → every "model.layers.N.self_attn.q_proj"; "self_attn.o_proj" works too), and
// "all-linear" means every Linear but the output head (lm_head). Embeddings and the head are adapted
// only when named. GPT-2 keeps HF's module names: "c_attn" is the fused q,k,v projection, adapted as
// one Linear (one A and B over all 3·dim outputs, as PEFT does for GPT-2); "c_proj" matches both
// attn.c_proj and mlp.c_proj ("attn.c_proj" for the attention one alone); "c_fc" the MLP input.
// HF's Conv1D stores its weight transposed, but A and B are plain Linear matrices in PEFT too, so
// adapters move between the two without transposition.
//
// Typical fine-tuning:
//   auto model = train::load_model(path);
//   nn::LoraConfig config;  config.rank = 8;  config.alpha = 16;  config.targets = {"q_proj", "v_proj"};
//   nn::apply_lora(*model, config, seed);
//   optim::AdamW opt(nn::trainable_parameters(*model), cfg);   // only the lora_* tensors
//   ... train ...; io::save_lora_adapter(dir, *model, config, base_name);   // or merge_lora + save weights
// An adapted model's named_parameters() include the lora_* tensors, so a native checkpoint of it
// loads into a model after apply_lora with the same config. Exact resume with dropout > 0 also needs
// each adapter's call counter (LoraAdapter::calls), which picks the next dropout mask.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "engine/nn/module.h"

namespace llm::nn {

struct LoraConfig {
  int64_t rank = 8;                  // r
  float alpha = 16.f;                // scale = alpha / r
  float dropout = 0.f;               // on each adapter's input while training, in [0, 1)
  std::vector<std::string> targets;  // module-name suffixes, or "all-linear"
  bool rslora = false;               // rank-stabilized LoRA: scale = alpha / sqrt(r) (PEFT's use_rslora)
  float scale() const;
  // Errors for a bad rank, alpha or dropout, or no targets.
  void validate() const;
};

// Freezes every parameter of `model` (requires_grad false) and adds an adapter to each Linear that
// config.targets names: A kaiming-uniform as PEFT (uniform ±1/sqrt(in)), B zero, so the model's output
// is unchanged until B trains. Deterministic from `seed` (initial A and every dropout mask). Returns
// the adapted modules' dotted paths in model order. Errors: a bad rank/alpha/dropout, no targets, a
// target that matches no Linear (naming it and the model's Linear names), a layer already adapted;
// the model is unchanged when it throws.
std::vector<std::string> apply_lora(Module& model, const LoraConfig& config, uint64_t seed);

// Folds every adapter into its base weight (W += scale·B·A), removes the adapters and refreshes a
// Q8 copy of the weight if there is one. requires_grad of the base weights is left as it is. Returns
// the merged modules' paths.
std::vector<std::string> merge_lora(Module& model);

// The Linear layers that carry an adapter, with their dotted paths.
std::vector<std::pair<std::string, Linear*>> lora_layers(Module& model);

// The parameters that train: those with requires_grad (after apply_lora, exactly the lora_* tensors).
// Pass these to the optimizer.
std::vector<std::pair<std::string, Tensor>> trainable_parameters(const Module& model);

// The adapter tensors alone ("<path>.lora_A.weight", "<path>.lora_B.weight"), in model order.
std::vector<std::pair<std::string, Tensor>> lora_parameters(const Module& model);

// True for a parameter name an adapter owns.
bool is_lora_parameter(const std::string& name);

}  // namespace llm::nn
