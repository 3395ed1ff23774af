// The training recipe: one YAML file with sections model, data, optim, train, checkpoint, log, dist
// (see configs/). Unknown keys and wrong types are errors that name the file and the key.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/models/config.h"
#include "engine/train/reward.h"

namespace llm::train {

struct TrainConfig {
  // model: an architecture, or `init_from` a checkpoint (continue from its weights, fresh optimizer).
  models::ModelConfig model;
  bool vocab_from_data = true;  // model.vocab_size: auto (the dataset's tokenizer decides)
  std::string init_from;

  // data: a prepared directory (llm-data prepare) or a glob of shards for train and val.
  std::string train_data;
  std::string val_data;     // default: train_data's "val" split when train_data is a prepared directory
  std::string tokenizer;    // default: the prepared directory's tokenizer (for samples)
  std::string loader_mode = "random";  // random | sequential

  // optim
  float lr = 3e-4f, min_lr = 3e-5f;
  std::string schedule = "cosine";  // constant | cosine | linear
  int64_t warmup_steps = 0;
  float beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0.1f;
  float grad_clip = 1.0f;  // max global gradient norm; 0 turns clipping off

  // train
  int64_t batch_size = 8;  // micro-batch, sequences
  int64_t seq_len = 256;
  int64_t grad_accum = 1;
  int64_t max_steps = 1000;
  int64_t max_tokens = 0;  // when > 0, stop once this many tokens were trained on (whichever first)
  int64_t eval_interval = 250;
  int64_t eval_batches = 20;
  int64_t sample_interval = 0;  // 0: no samples
  int64_t sample_tokens = 200;
  float sample_temperature = 0.8f;
  uint64_t seed = 1337;
  int64_t threads = 0;  // 0: all cores
  std::string device = "cpu";       // cpu | cuda: where the model, its gradients and AdamW's state live
  std::string precision = "auto";   // auto (bf16 on cuda, fp32 on cpu) | fp32 | bf16 (activations; weights stay fp32)
  float peak_tflops = 0;            // MFU's ceiling per GPU; 0: 989 (H100/H200 SXM dense bf16 spec) on cuda,
                                    // the measured fp32 GEMM rate on the CPU
  bool use_bf16() const { return precision == "bf16" || (precision == "auto" && device == "cuda"); }

  // kernels
  std::string matmul = "auto";     // auto | native | cublas | simple: the GEMM behind matmul and linear on cuda
  std::string attention = "auto";  // auto | simple | tensor_core: the attention kernels on cuda

  // checkpoint
  std::string checkpoint_dir = "out";
  int64_t checkpoint_interval = 0;  // 0: only at the end
  int64_t keep_last = 3;

  // log
  int64_t log_interval = 10;
  int64_t profile_step = 0;  // > 0: that step runs under the op profile (engine/core/profile.h), its table logged
  std::string metrics_path;  // JSON lines, one per step; default <checkpoint_dir>/metrics.jsonl

  // finetune (llm-finetune): the method, and how JSONL records become token rows (engine/train/sft_data.h)
  std::string method = "pretrain";  // pretrain (token shards) | sft | grpo | reinforce (JSONL records)
  std::string prompt_key = "prompt", completion_key = "completion";
  bool chat_template = true;  // the model's chat template (ChatML when it has none); false: plain text
  bool packing = true;        // sft: several examples per row; false: one example per row, padded
  std::string system_prompt;
  float val_fraction = 0;     // without data.val: hold out this share of the records for validation

  // lora: rank 0 trains every weight; rank > 0 freezes them and trains adapters (engine/nn/lora.h)
  int64_t lora_rank = 0;
  float lora_alpha = 16.f, lora_dropout = 0.f;
  std::string lora_targets = "q_proj,k_proj,v_proj,o_proj";  // comma-separated PEFT module names, or all-linear
  bool lora_rslora = false;

  // grpo (also reinforce): sampling and the clipped objective (engine/train/grpo.h)
  int64_t prompts_per_step = 4;  // per rank; train.batch_size is the micro-batch of sequences
  int64_t group_size = 8;
  int64_t max_new_tokens = 128;
  int64_t rl_iterations = 1;
  float rl_temperature = 1.0f, rl_top_p = 1.0f;
  float clip_eps = 0.2f, kl_beta = 0.04f;
  int64_t eval_prompts = 32;  // greedy completions scored at each evaluation

  RewardConfig reward;

  bool is_finetune() const { return method != "pretrain"; }
  bool is_rl() const { return method == "grpo" || method == "reinforce"; }
  // dist: data parallelism across the processes of an mpirun / srun launch (world size 1 without one).
  // train.batch_size is per rank: a step trains on world_size * batch_size * grad_accum sequences.
  std::string dist_backend = "auto";  // auto | single | mpi | nccl
  int64_t zero = 0;                   // 1: ZeRO-1, AdamW state sharded across ranks
  float bucket_mb = 25;               // gradient all-reduce bucket size
  float timeout_s = 300;              // a collective slower than this stops the run naming the missing rank

  std::string source;  // the file it came from, for messages
};

// Reads `path`, then applies `overrides` ("section.key=value", YAML scalar syntax) in order.
// Throws llm::Error: "<path>: optim.lr: expected a number, got "fast"".
TrainConfig load_train_config(const std::string& path, const std::vector<std::string>& overrides = {});
// Parses YAML text (`source` names it in errors).
TrainConfig parse_train_config(const std::string& yaml_text, const std::string& source,
                               const std::vector<std::string>& overrides = {});
// The configuration as YAML that parse_train_config reads back to the same values.
std::string to_yaml(const TrainConfig& config);

}  // namespace llm::train
