// DataLoader: batches of inputs/targets (int32 [B, T]) from token shards, deterministic from the
// seed, sharded by rank, with a position that checkpoints save and restore.
//
// sequential (exactly llm.c, without shuffling): shards are read one after another, in order. A
// global batch is world_size * B * T + 1 contiguous tokens; rank r takes the B*T + 1 tokens starting
// r * B * T into it: inputs are its first B*T as a B x T matrix, targets the same shifted by one.
// The cursor then advances by world_size * B * T; when the next global batch would run past the end
// of the shard, the loader moves to the start of the next shard (after the last, back to the first).
//
// random: every step draws world_size * B window starts from a generator seeded with `seed`; a
// window is T + 1 consecutive tokens inside one shard, uniform over all such windows of all shards.
// Rank r keeps windows r*B .. r*B + B - 1, so world_size 2 with B reproduces world_size 1 with 2B.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "data/shards.h"
#include "engine/core/tensor.h"

namespace llm::data {

struct LoaderOptions {
  enum class Mode { Sequential, Random };
  int64_t B = 4;
  int64_t T = 64;
  Mode mode = Mode::Sequential;
  uint64_t seed = 1337;
  int rank = 0;
  int world_size = 1;
  // > 0: every token read must lie in [0, vocab_size), else an error naming the shard and position
  // (a token past the model's vocabulary would otherwise reach the embedding as an unexplained
  // "id outside the vocabulary", or read out of bounds on the GPU).
  int64_t vocab_size = 0;
};
LoaderOptions::Mode parse_loader_mode(const std::string& name);  // "sequential" | "random"

struct Batch {
  Batch() = default;
  Batch(Tensor inputs_, Tensor targets_, Tensor doc_ = Tensor(), Tensor positions_ = Tensor())
      : inputs(std::move(inputs_)), targets(std::move(targets_)), doc(std::move(doc_)), positions(std::move(positions_)) {}
  Tensor inputs;   // i32 [B, T]
  Tensor targets;  // i32 [B, T]; -100 (cross_entropy's ignore index) where no loss is taken
  Tensor doc;        // optional i32 [B, T]: document ids of packed rows (attention stays inside each)
  Tensor positions;  // optional i32 [B, T]: positions, restarting at each packed document
};

// Everything needed to continue exactly where a run stopped. Identical on every rank.
struct LoaderState {
  int64_t shard = 0;              // sequential: current shard
  int64_t position = 0;           // sequential: first token of the next global batch in that shard
  std::vector<uint64_t> rng;      // random: generator state (6 words)
  int64_t batches = 0;            // batches served so far
};

class DataLoader {
 public:
  // source: a prepared directory (meta.json; `split` is "train" or "val"), or a file or glob pattern
  // of shards (.h5 or llm.c .bin, e.g. "data/fineweb_train_*.bin"; `split` is then ignored), sorted.
  DataLoader(const std::string& source, const std::string& split, LoaderOptions options);

  Batch next();
  // next() as plain vectors (B*T each, row-major), for callers that do not need tensors.
  void next(std::vector<int32_t>& inputs, std::vector<int32_t>& targets);

  LoaderState state() const;
  void set_state(const LoaderState& state);
  void reset();  // back to the start of the run (same seed)

  const LoaderOptions& options() const { return opt_; }
  const std::vector<std::string>& files() const { return files_; }
  int64_t num_tokens() const { return total_tokens_; }
  // The tokenizer identity the shards were written with ("" for llm.c .bin shards).
  const std::string& tokenizer_identity() const { return identity_; }

 private:
  void read_tokens(int64_t shard, int64_t offset, int64_t count, int32_t* out) const;
  LoaderOptions opt_;
  std::vector<std::string> files_;
  std::vector<std::unique_ptr<TokenShard>> shards_;
  std::vector<int64_t> window_prefix_;  // random: cumulative window counts per shard
  int64_t total_tokens_ = 0;
  std::string identity_;
  LoaderState state_;
  Generator gen_;
  std::vector<int32_t> buf_;
};

}  // namespace llm::data
