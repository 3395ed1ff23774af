// Hugging Face config.json ↔ ModelConfig, for GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM
// and Qwen2ForCausalLM.
#pragma once
#include <string>

#include "engine/models/config.h"

namespace llm::io {

// Parses config.json text; `source` (a file name) prefixes every error, which names the key.
models::ModelConfig config_from_hf_json(const std::string& text, const std::string& source);
// A config.json for the model (model_type "gpt2", "llama", or "qwen2" when attention_bias), pretty-printed.
std::string config_to_hf_json(const models::ModelConfig& config);

}  // namespace llm::io
