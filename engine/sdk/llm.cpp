// The C++ SDK (include/llm/llm.h) over the engine's libraries.
#include "include/llm/llm.h"

#include <filesystem>
#include <iostream>

#include "data/tokenizer.h"
#include "engine/core/error.h"
#include "engine/generate/batch_decoder.h"
#include "engine/generate/chat.h"
#include "engine/generate/chat.h"
#include "engine/train/checkpoint.h"
#include "engine/train/eval.h"
#include "engine/train/pretrained.h"
#include "engine/train/trainer.h"
#include "kernels/cpu/parallel.h"

namespace llm {

namespace {

generate::GenerateOptions to_engine(const GenerateOptions& o) {
  LLM_CHECK(o.max_tokens >= 0, "generate: max_tokens must not be negative, got ", o.max_tokens);
  generate::GenerateOptions g;
  g.max_new_tokens = o.max_tokens;
  g.sampling.temperature = o.temperature;
  g.sampling.top_k = o.top_k;
  g.sampling.top_p = o.top_p;
  g.sampling.min_p = o.min_p;
  g.sampling.repeat_penalty = o.repeat_penalty;
  g.sampling.repeat_last_n = o.repeat_last_n;
  g.sampling.seed = o.seed;
  g.stop = o.stop;
  g.stop_at_eos = o.stop_at_eos;
  return g;
}

}  // namespace

struct Model::Impl {
  std::unique_ptr<models::CausalLM> model;
  std::unique_ptr<data::Tokenizer> tokenizer;
  generate::ChatTemplate chat;  // the model's, ChatML when it has none

  // Generates from prompt ids through a one-slot BatchDecoder (the same tokens as generate()), so
  // the stream callback can stop it between tokens.
  Completion run(std::vector<int32_t> prompt, generate::GenerateOptions options, const StreamCallback& on_text) {
    Completion c;
    c.prompt_tokens = static_cast<int64_t>(prompt.size());
    const int64_t capacity = c.prompt_tokens + std::max<int64_t>(options.max_new_tokens, 0);
    generate::BatchDecoder decoder(*model, *tokenizer, 1, /*prefill_chunk=*/model->config().max_seq_len, capacity);
    bool stop_requested = false, finished = false;
    generate::BatchDecoder::Callbacks cb;
    cb.on_text = [&](const std::string& text) {
      if (on_text && !stop_requested && !on_text(text)) stop_requested = true;
    };
    cb.on_done = [&](generate::Generation&& g) {
      c.text = std::move(g.text);
      c.tokens = std::move(g.tokens);
      c.finish_reason = std::move(g.finish_reason);
      finished = true;
    };
    const uint64_t id = decoder.add(std::move(prompt), options, cb);
    while (!finished) {
      if (stop_requested) decoder.cancel(id);
      else decoder.step();
    }
    return c;
  }

  std::vector<int32_t> encode_chat(const std::vector<ChatMessage>& messages, generate::GenerateOptions& options) const {
    std::vector<generate::Message> m;
    for (const ChatMessage& x : messages) {
      LLM_CHECK(x.role == "system" || x.role == "user" || x.role == "assistant", "chat: unknown role \"", x.role,
                "\" (expected system, user or assistant)");
      m.push_back({x.role, x.content});
    }
    LLM_CHECK(!m.empty(), "chat: no messages");
    for (const std::string& s : chat.stop_strings()) options.stop.push_back(s);
    return chat.encode(*tokenizer, m, true);
  }

  // A task as one instruction: a chat turn when the model has a chat template, else a plain prompt.
  std::string task(const std::string& instruction, const std::string& plain_prompt, const GenerateOptions& options) {
    generate::GenerateOptions o = to_engine(options);
    if (!chat.is_default()) return run(encode_chat({{"user", instruction}}, o), o, nullptr).text;
    return run(generate::encode_prompt(*tokenizer, plain_prompt), o, nullptr).text;
  }
};

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;
Model::~Model() = default;

Model Model::from_pretrained(const std::string& path, const LoadOptions& options) {
  LLM_CHECK(options.threads >= 0, "LoadOptions: threads must not be negative, got ", options.threads);
  cpu::set_num_threads(options.threads);
  auto impl = std::make_unique<Impl>();
  train::InferenceModel loaded =
      train::load_inference_model(path, options.tokenizer, options.quantize_q8, "set LoadOptions::tokenizer");
  impl->model = std::move(loaded.model);
  impl->tokenizer = std::move(loaded.tokenizer);
  impl->chat = generate::ChatTemplate::of_model(path);
  return Model(std::move(impl));
}

ModelInfo Model::info() const {
  const models::ModelConfig& c = impl_->model->config();
  ModelInfo i;
  i.arch = c.arch_name();
  i.vocab_size = c.vocab_size;
  i.context_length = c.max_seq_len;
  i.n_layers = c.n_layers;
  i.dim = c.dim;
  i.parameters = c.num_parameters();  // the model's, however its weights are stored (q8 frees fp32 copies)
  i.chat_template = impl_->chat.origin();
  i.has_chat_template = !impl_->chat.is_default();
  return i;
}

std::vector<int32_t> Model::tokenize(const std::string& text, bool add_bos) const {
  std::vector<int32_t> ids;
  if (add_bos && impl_->tokenizer->bos_id() >= 0) ids.push_back(impl_->tokenizer->bos_id());
  const std::vector<int32_t> body = impl_->tokenizer->encode(text);
  ids.insert(ids.end(), body.begin(), body.end());
  return ids;
}

std::string Model::detokenize(const std::vector<int32_t>& ids) const { return impl_->tokenizer->decode(ids); }

Completion Model::generate(const std::string& prompt, const GenerateOptions& options, const StreamCallback& on_text) {
  return impl_->run(generate::encode_prompt(*impl_->tokenizer, prompt), to_engine(options), on_text);
}

Completion Model::chat(const std::vector<ChatMessage>& messages, const GenerateOptions& options, const StreamCallback& on_text) {
  generate::GenerateOptions o = to_engine(options);
  std::vector<int32_t> ids = impl_->encode_chat(messages, o);
  return impl_->run(std::move(ids), o, on_text);
}

Score Model::score(const std::string& text) {
  const std::vector<int32_t> ids = train::encode_for_eval(*impl_->tokenizer, text);
  LLM_CHECK(ids.size() >= 2, "score: the text needs at least 2 tokens (with BOS), got ", ids.size());
  const train::PerplexityResult r = train::evaluate_perplexity(*impl_->model, ids, {});
  Score s;
  s.log_likelihood = -r.nll_sum;
  s.tokens = r.scored;
  s.perplexity = r.perplexity;
  return s;
}

std::string Model::summarize(const std::string& text, const GenerateOptions& options) {
  return impl_->task("Summarize the following text in a few sentences.\n\n" + text, text + "\n\nTL;DR:", options);
}

std::string Model::translate(const std::string& text, const std::string& target_language, const GenerateOptions& options) {
  LLM_CHECK(!target_language.empty(), "translate: no target language");
  return impl_->task("Translate the following text into " + target_language + ". Reply with the translation only.\n\n" + text,
                     "Translate into " + target_language + ".\nText: " + text + "\n" + target_language + ":", options);
}

std::string Model::complete_code(const std::string& code, const GenerateOptions& options) {
  // Without a chat template the code itself is the prompt: a base model continues it.
  return impl_->task("Complete the following code. Reply with the code only.\n\n" + code, code, options);
}

// ---- training ----------------------------------------------------------------------------------

struct TrainConfig::Impl {
  train::TrainConfig config;
};

struct TrainAccess {
  static const train::TrainConfig& of(const TrainConfig& c) { return c.impl_->config; }
};

TrainConfig::TrainConfig(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TrainConfig::TrainConfig(const TrainConfig& o) : impl_(std::make_unique<Impl>(*o.impl_)) {}
TrainConfig& TrainConfig::operator=(const TrainConfig& o) {
  impl_ = std::make_unique<Impl>(*o.impl_);
  return *this;
}
TrainConfig::TrainConfig(TrainConfig&&) noexcept = default;
TrainConfig& TrainConfig::operator=(TrainConfig&&) noexcept = default;
TrainConfig::~TrainConfig() = default;

TrainConfig TrainConfig::from_file(const std::string& yaml_path, const std::vector<std::string>& overrides) {
  return TrainConfig(std::make_unique<Impl>(Impl{train::load_train_config(yaml_path, overrides)}));
}

TrainConfig TrainConfig::from_yaml(const std::string& yaml_text, const std::vector<std::string>& overrides) {
  return TrainConfig(std::make_unique<Impl>(Impl{train::parse_train_config(yaml_text, "<yaml>", overrides)}));
}

TrainConfig& TrainConfig::set(const std::string& key, const std::string& value) {
  // The override goes through the recipe parser, so it is checked exactly like llm-train --set.
  const std::string source = impl_->config.source;
  impl_->config = train::parse_train_config(train::to_yaml(impl_->config), source.empty() ? "<config>" : source, {key + "=" + value});
  impl_->config.source = source;
  return *this;
}

std::string TrainConfig::to_yaml() const { return train::to_yaml(impl_->config); }

namespace {
TrainResult run_trainer(const train::TrainConfig& config, const TrainOptions& options) {
  train::Trainer trainer(config, options.log ? *options.log : std::cout);
  if (!options.resume.empty()) trainer.resume(options.resume);
  const std::vector<train::StepRecord> records = trainer.run();
  TrainResult r;
  r.steps = trainer.step();
  if (!records.empty()) r.final_loss = records.back().loss;
  const std::string ckpt = train::checkpoint_path(trainer.config().checkpoint_dir, trainer.step());
  if (std::filesystem::exists(ckpt)) r.checkpoint = ckpt;
  return r;
}
}  // namespace

TrainResult pretrain(const TrainConfig& config, const TrainOptions& options) {
  const train::TrainConfig& c = TrainAccess::of(config);
  LLM_CHECK(!c.is_finetune(), c.source, ": finetune.method ", c.method, ": run it with llm::finetune()");
  return run_trainer(c, options);
}

TrainResult finetune(const TrainConfig& config, const TrainOptions& options) {
  const train::TrainConfig& c = TrainAccess::of(config);
  LLM_CHECK(c.is_finetune(), c.source, ": finetune.method: expected sft, grpo or reinforce (llm::pretrain() pretrains)");
  return run_trainer(c, options);
}

void stop_training() { train::Trainer::stop(); }

}  // namespace llm
