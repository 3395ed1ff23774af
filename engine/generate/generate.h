// Batched generation with a KV cache: every prompt is prefilled in one padded forward pass, then all
// unfinished sequences advance one token per step together. Stops at EOS, stop strings or a token limit.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "engine/generate/sampler.h"
#include "engine/models/transformer.h"

namespace llm::generate {

struct GenerateOptions {
  int64_t max_new_tokens = 128;
  SamplingOptions sampling;
  std::vector<std::string> stop;  // stop strings (not included in the output)
  bool stop_at_eos = true;        // the tokenizer's eot/eos id ends a sequence
  // generate(): prompt i samples from stream first_stream + i of sampling.seed, so a batch split
  // across processes (each with its offset) samples exactly what the whole batch would.
  uint64_t first_stream = 0;
};

struct Generation {
  std::vector<int32_t> tokens;  // generated ids (without the prompt; without EOS)
  std::string text;             // their text, cut before a stop string
  std::string finish_reason;    // "eos", "stop" or "length"
};

struct GenerateStats {
  int64_t prompt_tokens = 0, generated_tokens = 0;
  double prefill_seconds = 0, decode_seconds = 0;
  double time_to_first_token = 0;  // seconds from the start until every sequence had its first token
};

// Called with (sequence index, text) as text becomes final (text that could still turn out to be a
// stop string is held back until it cannot).
using TextCallback = std::function<void(size_t sequence, const std::string& text)>;

// One sequence being generated, the part every decoding loop shares (generate() and BatchDecoder):
// samples each next token with its own Sampler, turns tokens into text, applies EOS, stop strings and
// the token limit, and hands out text once it can no longer turn out to be a stop string.
class Sequence {
 public:
  using OnText = std::function<void(const std::string& text)>;
  Sequence(const data::Tokenizer& tokenizer, const GenerateOptions& options, std::vector<int32_t> prompt,
           uint64_t sampler_stream);
  // Takes the logits [vocab] that follow the tokens so far and returns the sampled token to feed back,
  // or -1 once the sequence finished (result().finish_reason says why). `context_full`: there is no
  // room to feed another token, so this one is the last.
  int32_t advance(const float* logits, int64_t vocab, bool context_full, const OnText& on_text);
  // Ends the sequence now with `reason`, handing out any text held back.
  void finish(const char* reason, const OnText& on_text);
  bool done() const { return done_; }
  const Generation& result() const { return out_; }
  Generation take_result() { return std::move(out_); }

 private:
  void emit(bool finished, const OnText& on_text);

  const data::Tokenizer& tokenizer_;
  GenerateOptions options_;
  int32_t eos_;
  Sampler sampler_;
  std::vector<int32_t> history_;  // prompt + generated, for the repetition penalty
  Generation out_;
  size_t emitted_ = 0;  // bytes of out_.text handed out
  bool done_ = false;
};

// Checks what generate() and BatchDecoder require of options and a prompt (non-empty, ids in the
// vocabulary, shorter than the context); `what` names the prompt in errors.
void validate_options(const GenerateOptions& options);
void validate_prompt(const models::ModelConfig& config, const std::vector<int32_t>& prompt, const std::string& what);

// Generates a continuation of every prompt (token ids, non-empty). Sequence i samples from its own
// stream of options.sampling.seed, so results do not depend on the batch or the thread count.
std::vector<Generation> generate(models::CausalLM& model, const data::Tokenizer& tokenizer,
                                 const std::vector<std::vector<int32_t>>& prompts, const GenerateOptions& options,
                                 const TextCallback& on_text = nullptr, GenerateStats* stats = nullptr);

// Logits rows [B, vocab] as the samplers read them: f32 on the host. From the GPU that is one copy of
// just these rows per decoding step; CPU f32 logits come back as they are.
Tensor host_logits(const Tensor& logits);

// The ids a prompt text becomes: BOS first when the tokenizer has one (SentencePiece models), and the
// end-of-text id for an empty prompt of a tokenizer without BOS (GPT-2).
std::vector<int32_t> encode_prompt(const data::Tokenizer& tokenizer, const std::string& text);

}  // namespace llm::generate
