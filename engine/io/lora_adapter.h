// LoRA adapters on disk in Hugging Face PEFT's layout, so they move between this engine and PEFT:
//   DIR/adapter_config.json        {"peft_type": "LORA", "r", "lora_alpha", "lora_dropout",
//                                   "target_modules", "base_model_name_or_path", "bias": "none",
//                                   "task_type": "CAUSAL_LM", "use_rslora", ...}
//   DIR/adapter_model.safetensors  "base_model.model.<module path>.lora_A.weight" [r, in] and
//                                  ".lora_B.weight" [out, r], f32
// The module logic (apply, merge, trainable parameters) is engine/nn/lora.h.
#pragma once
#include <string>
#include <vector>

#include "engine/nn/lora.h"

namespace llm::io {

// The prefix PEFT puts before our parameter names in adapter_model.safetensors.
inline constexpr const char* kPeftPrefix = "base_model.model.";

// Parses DIR/adapter_config.json. target_modules may be a list or "all-linear"; settings we do not
// implement (bias other than "none", DoRA, rank/alpha patterns, modules_to_save, layers_to_transform,
// a regular-expression target_modules) are errors naming the key. `base_model` (optional) receives
// base_model_name_or_path ("" when absent).
nn::LoraConfig read_lora_config(const std::string& dir, std::string* base_model = nullptr);

// Writes DIR/adapter_config.json and DIR/adapter_model.safetensors (each atomically; DIR is created
// if needed) from the adapters `model` carries. "all-linear" is written as the list of module names
// it matched, as PEFT does. Errors when the model has no adapters.
void save_lora_adapter(const std::string& dir, const nn::Module& model, const nn::LoraConfig& config,
                       const std::string& base_model_name_or_path);

struct LoraAdapterInfo {
  nn::LoraConfig config;
  std::string base_model;            // base_model_name_or_path
  std::vector<std::string> modules;  // the adapted modules' paths
};

// read_lora_config + nn::apply_lora + the saved A and B. Every adapted module must find both its
// tensors with shapes [r, in] and [out, r], and every tensor of the file must belong to an adapted
// module; errors name the file and the tensor, and leave the model as it was. `seed` draws the
// dropout masks (for training on from the loaded adapter).
LoraAdapterInfo load_lora_adapter(const std::string& dir, nn::Module& model, uint64_t seed = 0);

}  // namespace llm::io
