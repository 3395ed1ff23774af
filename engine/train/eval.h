// Evaluating a language model on text: sliding-window perplexity (the way Hugging Face's perplexity
// guide computes it) and raw logits for given token ids (for comparisons with other frameworks).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "engine/models/transformer.h"

namespace llm::train {

// One window of a sliding-window evaluation: the model sees tokens [begin, end) and is scored on
// the tokens [score_begin, end) (each predicted from the tokens before it in the window).
struct EvalWindow {
  int64_t begin = 0, end = 0, score_begin = 0;
};

// Windows of `seq_len` tokens starting every `stride` tokens over `n_tokens` tokens, stopping at the
// first window that reaches the end. Each window scores only the tokens the previous window did not
// reach (HF: trg_len = end - prev_end); the first token of a window is never scored, as nothing
// precedes it there. So with stride < seq_len every token but the very first is scored exactly once;
// with stride == seq_len (no overlap) the first token of each window is not scored at all.
// Throws llm::Error on n_tokens < 2, seq_len < 2 or stride outside [1, seq_len].
std::vector<EvalWindow> plan_eval_windows(int64_t n_tokens, int64_t seq_len, int64_t stride);

// The default window: the model's context (max_seq_len), at most 1024 tokens.
int64_t default_eval_seq_len(const models::ModelConfig& config);

// The ids to evaluate `text` on: BOS first when the tokenizer has one, then the text's tokens.
std::vector<int32_t> encode_for_eval(const data::Tokenizer& tokenizer, const std::string& text);

struct PerplexityOptions {
  int64_t seq_len = 0;  // 0: default_eval_seq_len
  int64_t stride = 0;   // 0: seq_len
};

struct PerplexityResult {
  int64_t tokens = 0;     // ids evaluated
  int64_t scored = 0;     // tokens whose negative log-likelihood is in the mean
  int64_t windows = 0;
  int64_t seq_len = 0, stride = 0;
  int64_t forwarded = 0;  // tokens run through the model (overlaps counted again)
  double nll_sum = 0;     // sum of -log p(token | context), nats
  double loss = 0;        // nll_sum / scored
  double perplexity = 0;  // exp(loss)
  double seconds = 0;
};

// Sliding-window perplexity of `ids` under `model` (no gradients recorded). The log-softmax is taken
// in double precision. `on_window(i, n)` is called after each window (progress), may be empty.
PerplexityResult evaluate_perplexity(models::CausalLM& model, const std::vector<int32_t>& ids,
                                     const PerplexityOptions& options = {},
                                     const std::function<void(int64_t, int64_t)>& on_window = {});

// Logits f32 [B, T, V] for token ids i32 [B, T] (each row run on its own, no gradients). Ids must lie in
// [0, vocab) and T in [1, max_seq_len]; `what` names the source in errors.
Tensor logits_for_ids(models::CausalLM& model, const Tensor& ids, const std::string& what = "ids");

// Reads token ids from `tokens_npy` (int32 or int64 [B, T]), runs the model and writes the logits as a
// float32 [B, T, V] .npy to `logits_npy` atomically, one row at a time. Returns the logits' shape.
Shape write_logits_npy(models::CausalLM& model, const std::string& tokens_npy, const std::string& logits_npy);

}  // namespace llm::train
