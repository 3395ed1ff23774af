// The llm SDK: load a model, tokenize, generate (streaming), chat, score text, a few task helpers,
// and train from a recipe — what the command-line tools do, from C++. One shared library (libllm.so),
// found with find_package(llm) as the target llm::llm; include/llm/llm_c.h is the same for C.
//
//   llm::Model model = llm::Model::from_pretrained("path/to/model");
//   llm::GenerateOptions o;
//   o.max_tokens = 64;
//   std::cout << model.generate("Once upon a time", o).text;
//
// Errors (bad files, bad options, bad input) throw llm::Error with a message naming the file or field.
// A Model is used by one thread at a time; separate Models are independent.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "error.h"
#include "export.h"

namespace llm {

struct LoadOptions {
  std::string tokenizer;     // tokenizer spec when none comes with the model ("byte", a directory or a file)
  int threads = 0;           // CPU threads for this process; 0: all cores
  bool quantize_q8 = false;  // int8 weights (Q8_0 layout): less memory, faster decoding
};

// Sampling as llama.cpp (and llm-generate): repetition penalty, top-k, top-p, min-p, temperature.
struct GenerateOptions {
  int64_t max_tokens = 128;
  float temperature = 0.8f;  // 0: greedy
  int64_t top_k = 40;        // <= 0: off
  float top_p = 0.95f;       // >= 1: off
  float min_p = 0.05f;       // <= 0: off
  float repeat_penalty = 1.0f;
  int64_t repeat_last_n = 64;
  uint64_t seed = 0;               // the same seed gives the same text
  std::vector<std::string> stop;   // stop strings (not part of the result)
  bool stop_at_eos = true;
};

struct Completion {
  std::string text;             // the generated text, cut before a stop string
  std::vector<int32_t> tokens;  // the generated token ids
  std::string finish_reason;    // "eos", "stop", "length" or "cancelled" (the stream callback said so)
  int64_t prompt_tokens = 0;
};

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

// Receives generated text as it becomes final; returning false stops generation.
using StreamCallback = std::function<bool(const std::string& text)>;

struct Score {
  double log_likelihood = 0;  // sum of log p(token | the tokens before it), natural log
  int64_t tokens = 0;         // tokens scored (every token of the text after the first; BOS is context)
  double perplexity = 0;      // exp(-log_likelihood / tokens)
};

struct ModelInfo {
  std::string arch;  // "gpt2" or "llama"
  int64_t vocab_size = 0, context_length = 0, n_layers = 0, dim = 0, parameters = 0;
  std::string chat_template;  // where chat()'s template comes from (the model's file, or "built-in ChatML")
  bool has_chat_template = false;  // the model declares one (task helpers then use chat())
};

class LLM_API Model {
 public:
  // A Hugging Face directory, an llm checkpoint (.h5) or a llama2.c .bin.
  static Model from_pretrained(const std::string& path, const LoadOptions& options = {});
  Model(Model&&) noexcept;
  Model& operator=(Model&&) noexcept;
  ~Model();

  ModelInfo info() const;

  // Text to token ids (no special tokens; BOS first when add_bos and the tokenizer has one) and back.
  std::vector<int32_t> tokenize(const std::string& text, bool add_bos = false) const;
  std::string detokenize(const std::vector<int32_t>& ids) const;

  // A continuation of `prompt` (BOS is put first when the tokenizer has one), streamed to `on_text`.
  Completion generate(const std::string& prompt, const GenerateOptions& options = {}, const StreamCallback& on_text = nullptr);
  // The assistant's reply to a conversation, formatted with the model's chat template.
  Completion chat(const std::vector<ChatMessage>& messages, const GenerateOptions& options = {},
                  const StreamCallback& on_text = nullptr);
  // How likely the model finds `text` (sliding windows of the model's context for long texts).
  Score score(const std::string& text);

  // Task helpers: a prompt for the task, through chat() when the model has a chat template and as a
  // plain continuation otherwise. They return the generated text.
  std::string summarize(const std::string& text, const GenerateOptions& options = {});
  std::string translate(const std::string& text, const std::string& target_language, const GenerateOptions& options = {});
  std::string complete_code(const std::string& code, const GenerateOptions& options = {});

 private:
  struct Impl;
  explicit Model(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// A training recipe (the YAML of configs/, as llm-train reads it). Overrides are "section.key=value"
// with YAML scalar values, applied and checked as llm-train --set does (a recipe must be complete,
// data.train included, once they are applied).
class LLM_API TrainConfig {
 public:
  static TrainConfig from_file(const std::string& yaml_path, const std::vector<std::string>& overrides = {});
  static TrainConfig from_yaml(const std::string& yaml_text, const std::vector<std::string>& overrides = {});
  TrainConfig(const TrainConfig&);
  TrainConfig& operator=(const TrainConfig&);
  TrainConfig(TrainConfig&&) noexcept;
  TrainConfig& operator=(TrainConfig&&) noexcept;
  ~TrainConfig();

  TrainConfig& set(const std::string& key, const std::string& value);  // e.g. set("optim.lr", "3e-4")
  std::string to_yaml() const;

 private:
  struct Impl;
  explicit TrainConfig(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  friend struct TrainAccess;
};

struct TrainOptions {
  std::string resume;           // "": a fresh run; "auto": the newest checkpoint of checkpoint.dir; or a path
  std::ostream* log = nullptr;  // progress lines (llm-train's); nullptr: std::cout
};

struct TrainResult {
  int64_t steps = 0;        // the optimizer step reached
  double final_loss = 0;    // training loss of the last step
  std::string checkpoint;   // the checkpoint written at the end
};

// Pretraining, as llm-train runs it: builds the model and data loaders, trains until max_steps or
// max_tokens (or stop_training()), writes checkpoints into checkpoint.dir. A recipe whose
// finetune.method is not "pretrain" is an error (use finetune()).
LLM_API TrainResult pretrain(const TrainConfig& config, const TrainOptions& options = {});
// Fine-tuning, as llm-finetune runs it: finetune.method sft (JSONL examples through the chat template,
// full or LoRA), grpo or reinforce (sampled completions scored by the recipe's reward). Errors when the
// method is "pretrain". final_loss is the SFT loss or the policy objective of the last step.
LLM_API TrainResult finetune(const TrainConfig& config, const TrainOptions& options = {});
// Asks a running pretrain() or finetune() to save a checkpoint and return after its current step
// (signal-safe).
LLM_API void stop_training();

}  // namespace llm
