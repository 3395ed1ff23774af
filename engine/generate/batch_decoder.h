// Continuous batching: a fixed number of slots share one KV cache, and sequences join and leave
// between steps. Every step() is one forward pass over all active sequences: a sequence that just
// joined feeds (a chunk of) its prompt, the others one token each (forward_cached takes a different
// number of new tokens per row). Finished sequences leave at once, so their slot is free for the next.
// Not thread-safe: one thread owns the decoder (the server's decode thread); callbacks run on it and
// must not call back into the decoder.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/generate/generate.h"

namespace llm::generate {

class BatchDecoder {
 public:
  struct Callbacks {
    std::function<void(const std::string& text)> on_text;  // text as it becomes final
    std::function<void(Generation&& result)> on_done;      // once, when the sequence finishes
  };

  // `slots`: how many sequences decode together. `prefill_chunk`: at most this many prompt tokens of
  // one sequence per step, which bounds how long a long prompt stalls the others. `capacity`: the
  // positions each slot's cache holds (prompt + generated); 0: the model's context.
  BatchDecoder(models::CausalLM& model, const data::Tokenizer& tokenizer, int64_t slots, int64_t prefill_chunk = 256,
               int64_t capacity = 0);
  ~BatchDecoder();

  // Takes a free slot for a new sequence, prefilled from the next step(); it samples as
  // generate(model, tokenizer, {prompt}, options) does. Returns its id. Throws llm::Error on a bad
  // prompt or options, or when no slot is free, before anything changes.
  uint64_t add(std::vector<int32_t> prompt, const GenerateOptions& options, Callbacks callbacks);
  // Ends a sequence now with finish_reason "cancelled" (on_done is called); unknown ids are ignored.
  void cancel(uint64_t id);
  // One forward pass; sequences that finish call on_done and free their slot.
  void step();

  int64_t slots() const { return slots_; }
  int64_t active() const { return static_cast<int64_t>(active_.size()); }
  bool has_free_slot() const { return active() < slots_; }

 private:
  struct Slot;
  // Takes a row's sequence out, moving the last active row (and its cache entries) into its place.
  std::unique_ptr<Slot> release(size_t row);

  models::CausalLM& model_;
  const data::Tokenizer& tokenizer_;
  int64_t slots_, prefill_chunk_;
  models::KVCache cache_;
  // views_[n-1]: the first n rows of cache_, so a step runs only over the active rows (kept first).
  std::vector<models::KVCache> views_;
  std::vector<std::unique_ptr<Slot>> active_;  // active_[r] decodes in cache row r
  uint64_t next_id_ = 1;
};

}  // namespace llm::generate
