// Hugging Face model directories in and out: config.json + model.safetensors (or shards listed in
// model.safetensors.index.json) + tokenizer files, for GPT2LMHeadModel, LlamaForCausalLM,
// MistralForCausalLM and Qwen2ForCausalLM. Our parameter names are HF's; GPT-2's Conv1D weights are
// stored [in, out] by HF and [out, in] (nn.Linear) here, so they are transposed on the way in and out.
//
// load_pretrained() (engine/train/pretrained.h) adds native checkpoints on top of this.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/core/tensor.h"
#include "engine/models/config.h"

namespace llm::io {

// A model read from disk: its configuration, weights under our (HF) parameter names in nn.Linear
// orientation, and a tokenizer spec for data::load_tokenizer ("" when none came with it).
struct LoadedModel {
  models::ModelConfig config;
  std::map<std::string, Tensor> weights;
  std::string tokenizer;
};

// The parameters a model of this configuration has: name → shape (what make_model builds).
std::map<std::string, Shape> expected_parameters(const models::ModelConfig& config);

// Checks that `weights` holds exactly the expected parameters with the expected shapes; errors name
// `source` and the missing, unexpected or mis-shaped tensor.
void check_weights(const models::ModelConfig& config, const std::map<std::string, Tensor>& weights,
                   const std::string& source);

// A HF directory (config.json, model.safetensors or model.safetensors.index.json + shards). Unknown
// model types, missing/unexpected/mis-shaped tensors and damaged files are errors naming the file.
LoadedModel load_hf_directory(const std::string& dir);

// The same, one weight at a time: opening reads config.json and the safetensors headers (no tensor
// data); for_each_weight then reads each parameter (converted to f32, in our names and orientation)
// only as it hands it over, so a caller that turns weights into something smaller (Q8) never holds
// them all in f32.
class HfDirectory {
 public:
  explicit HfDirectory(const std::string& dir);
  const models::ModelConfig& config() const { return config_; }
  std::string tokenizer() const;  // tokenizer_spec_in(dir)
  // Every parameter once; errors as load_hf_directory's (a missing one after the others were given).
  void for_each_weight(const std::function<void(const std::string&, Tensor)>& visit) const;

 private:
  struct Stored;
  std::string dir_, config_path_;
  models::ModelConfig config_;
  bool fused_projections_ = false;  // Phi-3: qkv_proj and gate_up_proj stack ours
  std::shared_ptr<Stored> stored_;
};

// Writes dir/config.json, dir/model.safetensors (f32, HF names and orientation) and copies the
// tokenizer files found in `tokenizer_source` (a directory, or one tokenizer file; "" for none).
// Creates `dir` if needed; every file is written atomically.
void save_hf_directory(const std::string& dir, const models::ModelConfig& config,
                       const std::vector<std::pair<std::string, Tensor>>& weights, const std::string& tokenizer_source);

// The tokenizer spec for files in `dir` (tokenizer.json, tokenizer.model, encoder.json + vocab.bpe):
// the directory itself when it holds one of them, else "".
std::string tokenizer_spec_in(const std::string& dir);

}  // namespace llm::io
