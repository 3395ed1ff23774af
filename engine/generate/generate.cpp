#include "engine/generate/generate.h"

#include <algorithm>
#include <chrono>

namespace llm::generate {

using clock_type = std::chrono::steady_clock;

namespace {
double seconds_since(clock_type::time_point t) { return std::chrono::duration<double>(clock_type::now() - t).count(); }

// The text token `tok` adds after `history`: decoding a short window with and without it, so that
// tokenizer conventions apply as in a full decode (SentencePiece drops the space that starts a text,
// byte pieces join into characters).
std::string text_increment(const data::Tokenizer& tok, const std::vector<int32_t>& history, int32_t next) {
  constexpr size_t kWindow = 8;
  std::vector<int32_t> window(history.end() - static_cast<std::ptrdiff_t>(std::min(kWindow, history.size())), history.end());
  const std::string before = tok.decode(window);
  window.push_back(next);
  const std::string after = tok.decode(window);
  if (after.compare(0, before.size(), before) == 0) return after.substr(before.size());
  return tok.token_text(next);  // the window's own text changed: fall back to the token's bytes
}

// Length of the longest suffix of text that is a proper prefix of some stop string: text that may
// still become a stop string and must not be emitted yet.
size_t pending_stop_prefix(const std::string& text, const std::vector<std::string>& stops) {
  size_t hold = 0;
  for (const std::string& s : stops)
    for (size_t k = std::min(s.size() - 1, text.size()); k > hold; --k)
      if (text.compare(text.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
  return hold;
}
}  // namespace

Tensor host_logits(const Tensor& logits) { return logits.to(Device::cpu()).to(DType::F32); }

std::vector<int32_t> encode_prompt(const data::Tokenizer& tokenizer, const std::string& text) {
  std::vector<int32_t> ids;
  if (tokenizer.bos_id() >= 0) ids.push_back(tokenizer.bos_id());
  const std::vector<int32_t> body = tokenizer.encode(text);
  ids.insert(ids.end(), body.begin(), body.end());
  if (ids.empty() && tokenizer.eot_id() >= 0) ids.push_back(tokenizer.eot_id());
  return ids;
}

Sequence::Sequence(const data::Tokenizer& tokenizer, const GenerateOptions& options, std::vector<int32_t> prompt,
                   uint64_t sampler_stream)
    : tokenizer_(tokenizer),
      options_(options),
      eos_(options.stop_at_eos ? tokenizer.eot_id() : -1),
      sampler_(options.sampling, sampler_stream),
      history_(std::move(prompt)) {}

void Sequence::emit(bool finished, const OnText& on_text) {
  const size_t hold = finished ? 0 : pending_stop_prefix(out_.text, options_.stop);
  const size_t upto = out_.text.size() - hold;
  if (upto > emitted_ && on_text) on_text(out_.text.substr(emitted_, upto - emitted_));
  emitted_ = std::max(emitted_, upto);
}

void Sequence::finish(const char* reason, const OnText& on_text) {
  if (done_) return;
  done_ = true;
  out_.finish_reason = reason;
  emit(true, on_text);
}

int32_t Sequence::advance(const float* logits, int64_t vocab, bool context_full, const OnText& on_text) {
  LLM_CHECK(!done_, "Sequence::advance: the sequence has finished");
  if (static_cast<int64_t>(out_.tokens.size()) >= options_.max_new_tokens) {
    finish("length", on_text);
    return -1;
  }
  const int32_t tok = sampler_.sample(logits, vocab, history_);
  if (tok == eos_) {
    finish("eos", on_text);
    return -1;
  }
  out_.text += text_increment(tokenizer_, history_, tok);
  out_.tokens.push_back(tok);
  history_.push_back(tok);
  // A stop string ends the sequence; the text is cut where it begins.
  size_t cut = std::string::npos;
  for (const std::string& stop : options_.stop)
    cut = std::min(cut, out_.text.find(stop, emitted_ > stop.size() ? emitted_ - stop.size() : 0));
  if (cut != std::string::npos) {
    out_.text.resize(cut);
    finish("stop", on_text);
    return -1;
  }
  emit(false, on_text);
  if (context_full) {  // no room to feed this token back
    finish("length", on_text);
    return -1;
  }
  return tok;
}

void validate_options(const GenerateOptions& options) {
  options.sampling.validate();
  for (const std::string& s : options.stop) LLM_CHECK(!s.empty(), "generate: empty stop string");
}

void validate_prompt(const models::ModelConfig& config, const std::vector<int32_t>& prompt, const std::string& what) {
  LLM_CHECK(!prompt.empty(), "generate: ", what, " has no tokens");
  LLM_CHECK(static_cast<int64_t>(prompt.size()) < config.max_seq_len, "generate: ", what, " has ", prompt.size(),
            " tokens; the model's context is ", config.max_seq_len);
  for (int32_t t : prompt)
    LLM_CHECK(t >= 0 && t < config.vocab_size, "generate: ", what, " has token id ", t, " outside the vocabulary");
}

std::vector<Generation> generate(models::CausalLM& model, const data::Tokenizer& tokenizer,
                                 const std::vector<std::vector<int32_t>>& prompts, const GenerateOptions& options,
                                 const TextCallback& on_text, GenerateStats* stats) {
  NoGradGuard no_grad;
  validate_options(options);
  LLM_CHECK(!prompts.empty(), "generate: no prompts");
  const int64_t B = static_cast<int64_t>(prompts.size()), V = model.config().vocab_size;
  int64_t longest = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    validate_prompt(model.config(), prompts[i], "prompt " + std::to_string(i));
    longest = std::max<int64_t>(longest, static_cast<int64_t>(prompts[i].size()));
  }
  const int64_t capacity = std::min(model.config().max_seq_len, longest + std::max<int64_t>(options.max_new_tokens, 0));
  models::KVCache cache = model.make_cache(B, capacity);
  std::vector<Sequence> seqs;
  for (int64_t b = 0; b < B; ++b) seqs.emplace_back(tokenizer, options, prompts[b], options.first_stream + static_cast<uint64_t>(b));

  const auto start = clock_type::now();
  std::vector<int32_t> ids(static_cast<size_t>(B * longest), 0), n_new(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    std::copy(prompts[b].begin(), prompts[b].end(), ids.begin() + b * longest);
    n_new[b] = static_cast<int32_t>(prompts[b].size());
  }
  Tensor logits = host_logits(model.forward_cached(Tensor::from_vector(ids, Shape{B, longest}), n_new, cache));
  GenerateStats st;
  for (const auto& p : prompts) st.prompt_tokens += static_cast<int64_t>(p.size());
  st.prefill_seconds = seconds_since(start);

  for (int64_t step = 0;; ++step) {
    std::vector<int32_t> next(static_cast<size_t>(B), 0);
    bool any = false;
    for (int64_t b = 0; b < B; ++b) {
      n_new[b] = 0;
      if (seqs[b].done()) continue;
      const int32_t tok = seqs[b].advance(logits.data<float>() + b * V, V, cache.length[b] >= capacity,
                                          [&](const std::string& text) {
                                            if (on_text) on_text(static_cast<size_t>(b), text);
                                          });
      if (tok < 0) continue;
      next[b] = tok;
      n_new[b] = 1;
      any = true;
    }
    if (step == 0) st.time_to_first_token = seconds_since(start);
    if (!any) break;
    logits = host_logits(model.forward_cached(Tensor::from_vector(next, Shape{B, 1}), n_new, cache));
  }
  st.decode_seconds = seconds_since(start) - st.prefill_seconds;
  std::vector<Generation> out;
  for (Sequence& s : seqs) {
    st.generated_tokens += static_cast<int64_t>(s.result().tokens.size());
    out.push_back(s.take_result());
  }
  if (stats) *stats = st;
  return out;
}

}  // namespace llm::generate
