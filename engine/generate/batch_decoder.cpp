#include "engine/generate/batch_decoder.h"

#include <algorithm>

namespace llm::generate {

struct BatchDecoder::Slot {
  uint64_t id;
  Sequence seq;
  std::vector<int32_t> pending;  // tokens still to feed: the prompt (in chunks), then each sampled token
  Callbacks callbacks;
};

BatchDecoder::BatchDecoder(models::CausalLM& model, const data::Tokenizer& tokenizer, int64_t slots, int64_t prefill_chunk,
                           int64_t capacity)
    : model_(model),
      tokenizer_(tokenizer),
      slots_(slots),
      prefill_chunk_(prefill_chunk),
      cache_(model.make_cache(std::max<int64_t>(slots, 1), capacity > 0 ? std::min(capacity, model.config().max_seq_len)
                                                                         : model.config().max_seq_len)) {
  LLM_CHECK(slots >= 1, "BatchDecoder: slots must be at least 1, got ", slots);
  LLM_CHECK(prefill_chunk >= 1, "BatchDecoder: prefill_chunk must be at least 1, got ", prefill_chunk);
  for (int64_t n = 1; n <= slots; ++n) {
    models::KVCache view(model.config(), 1, 1);
    for (size_t l = 0; l < cache_.k.size(); ++l) {
      view.k[l] = cache_.k[l].slice(0, 0, n);
      view.v[l] = cache_.v[l].slice(0, 0, n);
    }
    view.batch = n;
    view.capacity = cache_.capacity;
    view.length.assign(static_cast<size_t>(n), 0);
    views_.push_back(std::move(view));
  }
}

BatchDecoder::~BatchDecoder() = default;

uint64_t BatchDecoder::add(std::vector<int32_t> prompt, const GenerateOptions& options, Callbacks callbacks) {
  validate_options(options);
  validate_prompt(model_.config(), prompt, "prompt");
  LLM_CHECK(static_cast<int64_t>(prompt.size()) <= cache_.capacity, "BatchDecoder: the prompt has ", prompt.size(),
            " tokens; a slot holds ", cache_.capacity);
  LLM_CHECK(has_free_slot(), "BatchDecoder: all ", slots_, " slots are busy");
  const uint64_t id = next_id_++;
  const size_t row = active_.size();
  cache_.length[row] = 0;
  std::vector<int32_t> pending = prompt;
  active_.push_back(std::unique_ptr<Slot>(
      new Slot{id, Sequence(tokenizer_, options, std::move(prompt), 0), std::move(pending), std::move(callbacks)}));
  return id;
}

std::unique_ptr<BatchDecoder::Slot> BatchDecoder::release(size_t row) {
  std::unique_ptr<Slot> slot = std::move(active_[row]);
  const size_t last = active_.size() - 1;
  if (row != last) {
    // Move the last row's cached keys and values into the freed row, so active rows stay first.
    const int64_t n = cache_.length[last];
    for (size_t l = 0; n > 0 && l < cache_.k.size(); ++l)
      for (Tensor* t : {&cache_.k[l], &cache_.v[l]})
        t->select(0, static_cast<int64_t>(row)).slice(0, 0, n).copy_(t->select(0, static_cast<int64_t>(last)).slice(0, 0, n));
    cache_.length[row] = cache_.length[last];
    active_[row] = std::move(active_[last]);
  }
  cache_.length[last] = 0;
  active_.pop_back();
  return slot;
}

void BatchDecoder::cancel(uint64_t id) {
  for (size_t r = 0; r < active_.size(); ++r) {
    if (active_[r]->id != id) continue;
    const std::unique_ptr<Slot> slot = release(r);
    slot->seq.finish("cancelled", slot->callbacks.on_text);
    if (slot->callbacks.on_done) slot->callbacks.on_done(slot->seq.take_result());
    return;
  }
}

void BatchDecoder::step() {
  if (active_.empty()) return;
  NoGradGuard no_grad;
  const int64_t n = active(), V = model_.config().vocab_size;
  int64_t T = 1;
  for (const auto& s : active_) T = std::max<int64_t>(T, std::min<int64_t>(static_cast<int64_t>(s->pending.size()), prefill_chunk_));
  std::vector<int32_t> ids(static_cast<size_t>(n * T), 0), n_new(static_cast<size_t>(n));
  for (int64_t r = 0; r < n; ++r) {
    const std::vector<int32_t>& p = active_[r]->pending;
    n_new[r] = static_cast<int32_t>(std::min<int64_t>(static_cast<int64_t>(p.size()), prefill_chunk_));
    std::copy_n(p.begin(), n_new[r], ids.begin() + r * T);
  }
  models::KVCache& view = views_[static_cast<size_t>(n - 1)];
  std::copy_n(cache_.length.begin(), n, view.length.begin());
  const Tensor logits = host_logits(model_.forward_cached(Tensor::from_vector(ids, Shape{n, T}), n_new, view));
  std::copy_n(view.length.begin(), n, cache_.length.begin());

  std::vector<size_t> finished;
  for (int64_t r = 0; r < n; ++r) {
    Slot& s = *active_[r];
    s.pending.erase(s.pending.begin(), s.pending.begin() + n_new[r]);
    if (!s.pending.empty()) continue;  // still prefilling its prompt
    const int32_t tok = s.seq.advance(logits.data<float>() + r * V, V, cache_.length[r] >= cache_.capacity, s.callbacks.on_text);
    if (tok >= 0) s.pending.push_back(tok);
    else finished.push_back(static_cast<size_t>(r));
  }
  // Highest rows first: a release moves the last row, which is then never one still to release.
  for (auto it = finished.rbegin(); it != finished.rend(); ++it) {
    const std::unique_ptr<Slot> slot = release(*it);
    if (slot->callbacks.on_done) slot->callbacks.on_done(slot->seq.take_result());
  }
}

}  // namespace llm::generate
