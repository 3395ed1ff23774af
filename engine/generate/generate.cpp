#include "engine/generate/generate.h"

#include <algorithm>
#include <chrono>

namespace llm::generate {

using clock_type = std::chrono::steady_clock;

namespace {
double seconds_since(clock_type::time_point t) { return std::chrono::duration<double>(clock_type::now() - t).count(); }

// Per sequence: its text so far, how much of it was handed out, and whether it finished.
struct Stream {
  std::vector<int32_t> history;  // prompt + generated, for the repetition penalty
  Generation out;
  size_t emitted = 0;
  bool done = false;
};

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

std::vector<int32_t> encode_prompt(const data::Tokenizer& tokenizer, const std::string& text) {
  std::vector<int32_t> ids;
  if (tokenizer.bos_id() >= 0) ids.push_back(tokenizer.bos_id());
  const std::vector<int32_t> body = tokenizer.encode(text);
  ids.insert(ids.end(), body.begin(), body.end());
  if (ids.empty() && tokenizer.eot_id() >= 0) ids.push_back(tokenizer.eot_id());
  return ids;
}

std::vector<Generation> generate(models::CausalLM& model, const data::Tokenizer& tokenizer,
                                 const std::vector<std::vector<int32_t>>& prompts, const GenerateOptions& options,
                                 const TextCallback& on_text, GenerateStats* stats) {
  NoGradGuard no_grad;
  options.sampling.validate();
  for (const std::string& s : options.stop) LLM_CHECK(!s.empty(), "generate: empty stop string");
  LLM_CHECK(!prompts.empty(), "generate: no prompts");
  const int64_t B = static_cast<int64_t>(prompts.size()), V = model.config().vocab_size;
  const int64_t context = model.config().max_seq_len;
  int64_t longest = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    LLM_CHECK(!prompts[i].empty(), "generate: prompt ", i, " has no tokens");
    LLM_CHECK(static_cast<int64_t>(prompts[i].size()) < context, "generate: prompt ", i, " has ", prompts[i].size(),
              " tokens; the model's context is ", context);
    for (int32_t t : prompts[i]) LLM_CHECK(t >= 0 && t < V, "generate: prompt ", i, " has token id ", t, " outside the vocabulary");
    longest = std::max<int64_t>(longest, static_cast<int64_t>(prompts[i].size()));
  }
  const int64_t capacity = std::min(context, longest + std::max<int64_t>(options.max_new_tokens, 0));
  models::KVCache cache(model.config(), B, capacity);
  std::vector<Stream> streams(prompts.size());
  std::vector<Sampler> samplers;
  for (int64_t b = 0; b < B; ++b) {
    streams[b].history = prompts[b];
    samplers.emplace_back(options.sampling, static_cast<uint64_t>(b));
  }
  const int32_t eos = options.stop_at_eos ? tokenizer.eot_id() : -1;

  // Hands out newly final text of sequence b; `finished` flushes what was held back.
  auto emit = [&](int64_t b, bool finished) {
    Stream& s = streams[b];
    const size_t hold = finished ? 0 : pending_stop_prefix(s.out.text, options.stop);
    const size_t upto = s.out.text.size() - hold;
    if (upto > s.emitted && on_text) on_text(static_cast<size_t>(b), s.out.text.substr(s.emitted, upto - s.emitted));
    s.emitted = std::max(s.emitted, upto);
  };
  auto finish = [&](int64_t b, const char* reason) {
    streams[b].done = true;
    streams[b].out.finish_reason = reason;
    emit(b, true);
  };

  const auto start = clock_type::now();
  std::vector<int32_t> ids(static_cast<size_t>(B * longest), 0), n_new(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    std::copy(prompts[b].begin(), prompts[b].end(), ids.begin() + b * longest);
    n_new[b] = static_cast<int32_t>(prompts[b].size());
  }
  Tensor logits = model.forward_cached(Tensor::from_vector(ids, Shape{B, longest}), n_new, cache);
  GenerateStats st;
  for (const auto& p : prompts) st.prompt_tokens += static_cast<int64_t>(p.size());
  st.prefill_seconds = seconds_since(start);

  for (int64_t step = 0;; ++step) {
    std::vector<int32_t> next(static_cast<size_t>(B), 0);
    bool any = false;
    for (int64_t b = 0; b < B; ++b) {
      Stream& s = streams[b];
      n_new[b] = 0;
      if (s.done) continue;
      if (step >= options.max_new_tokens) {
        finish(b, "length");
        continue;
      }
      const int32_t tok = samplers[b].sample(logits.data<float>() + b * V, V, s.history);
      if (tok == eos) {
        finish(b, "eos");
        continue;
      }
      s.out.text += text_increment(tokenizer, s.history, tok);
      s.out.tokens.push_back(tok);
      s.history.push_back(tok);
      ++st.generated_tokens;
      // A stop string ends the sequence; the text is cut where it begins.
      size_t cut = std::string::npos;
      for (const std::string& stop : options.stop) cut = std::min(cut, s.out.text.find(stop, s.emitted > stop.size() ? s.emitted - stop.size() : 0));
      if (cut != std::string::npos) {
        s.out.text.resize(cut);
        finish(b, "stop");
        continue;
      }
      emit(b, false);
      if (cache.length[b] >= capacity) {  // no room to feed this token back: the context is full
        finish(b, "length");
        continue;
      }
      next[b] = tok;
      n_new[b] = 1;
      any = true;
    }
    if (step == 0) st.time_to_first_token = seconds_since(start);
    if (!any) break;
    logits = model.forward_cached(Tensor::from_vector(next, Shape{B, 1}), n_new, cache);
  }
  st.decode_seconds = seconds_since(start) - st.prefill_seconds;
  if (stats) *stats = st;
  std::vector<Generation> out;
  for (Stream& s : streams) out.push_back(std::move(s.out));
  return out;
}

}  // namespace llm::generate
