// Native checkpoints: one HDF5 file with the model configuration, weights, AdamW state, step, and
// the RNG and data-loader positions, so a resumed run continues exactly. Written atomically.
//
// Layout: attributes on "/": format = "llm-checkpoint", version, step, tokens, model_config (HF
// config.json text), train_config (YAML), tokenizer (spec); datasets model/<parameter name>,
// optim/m/<name>, optim/v/<name> (f32), state/loader (i64: shard, position, batches, rng words) and
// state/rng (i64: the training generator's words).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine/core/tensor.h"
#include "engine/models/config.h"
#include "optim/adamw.h"

namespace llm::train {

struct Checkpoint {
  models::ModelConfig model_config;
  std::vector<std::pair<std::string, Tensor>> weights;
  bool has_optimizer = false;
  optim::AdamW::State optimizer;
  int64_t step = 0;
  int64_t tokens = 0;
  std::vector<int64_t> loader_state;  // DataLoader state flattened (see trainer.cpp)
  std::vector<uint64_t> rng_state;
  std::string train_config_yaml;
  std::string tokenizer;
};

// Writes atomically (temporary file, fsync, rename): an interrupted write never replaces a good file.
void save_checkpoint(const std::string& path, const Checkpoint& ckpt);
// Reads a checkpoint; with weights_only the optimizer and run state are skipped.
Checkpoint load_checkpoint(const std::string& path, bool weights_only = false);

// Checkpoint files of a run directory (ckpt_<step>.h5), sorted by step.
std::vector<std::string> list_checkpoints(const std::string& dir);
std::string checkpoint_path(const std::string& dir, int64_t step);
// Deletes all but the newest `keep` checkpoints in dir.
void prune_checkpoints(const std::string& dir, int64_t keep);

}  // namespace llm::train
