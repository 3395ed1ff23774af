// The training loop behind llm-train and llm-finetune: micro-batches with gradient accumulation,
// AdamW with a learning-rate schedule and global-norm clipping, validation, samples, metrics, and
// checkpoints that resume the identical run. config.method picks what a step is: next-token loss on
// token shards (pretrain) or on formatted examples (sft), or a policy update from sampled and rewarded
// completions (grpo, reinforce).
#pragma once
#include <atomic>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "data/loader.h"
#include "data/tokenizer.h"
#include "engine/dist/communicator.h"
#include "engine/dist/data_parallel.h"
#include "engine/models/transformer.h"
#include "engine/nn/lora.h"
#include "engine/train/config.h"
#include "engine/train/grpo.h"
#include "engine/train/sft_data.h"
#include "optim/adamw.h"
#include "optim/zero.h"

namespace llm::train {

struct StepRecord {
  int64_t step = 0;  // 1-based: the number of optimizer steps taken
  double loss = 0, lr = 0, grad_norm = 0, tokens_per_s = 0, mfu = 0;
  RlStats rl;        // grpo / reinforce only
};

// One optimizer step: forward and backward over each micro-batch (gradients accumulated, each loss
// scaled by 1/micro_batches.size()), global-norm clipping folded into the fused AdamW update.
// Returns the mean loss; *grad_norm gets the norm before clipping. Throws on a non-finite loss or
// gradient norm before the weights change. The trainer and `llm-bench train` both run exactly this.
// With `dp` (data parallelism) the micro-batches are this rank's slice: gradients are averaged
// across ranks during the last backward, and the loss returned is the mean over all ranks.
double training_step(models::CausalLM& model, optim::AdamW& optimizer, const std::vector<data::Batch>& micro_batches,
                     float lr, float grad_clip, double* grad_norm, dist::DataParallel* dp = nullptr);
// The same step with ZeRO-1: gradients reduce-scattered to their shard owners, the update on the
// shard, parameters all-gathered (optim/zero.h). Same losses and parameters as the step above.
double training_step(models::CausalLM& model, optim::ZeroAdamW& optimizer, const std::vector<data::Batch>& micro_batches,
                     float lr, float grad_clip, double* grad_norm);

// The sustained sgemm rate of this machine at the current thread count, FLOP/s: the ceiling MFU is
// measured against (a CPU has no datasheet number that fits every core count and clock).
double measure_gemm_ceiling();

// Data parallel when launched by mpirun / srun (config.dist): every rank builds the same model from
// the seed, reads its own slice of each global batch, and averages gradients; rank 0 alone logs,
// evaluates, samples and writes checkpoints, which hold the full state whatever the world size.
class Trainer {
 public:
  // Builds the communicator, the model (or loads init_from), optimizer and data loaders. Messages
  // go to `log` on rank 0 (other ranks are silent).
  explicit Trainer(TrainConfig config, std::ostream& log);
  ~Trainer();

  // Continues from a checkpoint file, or "auto": the newest in checkpoint.dir (a fresh start when
  // there is none). Rank 0 reads it and sends it to the others.
  void resume(const std::string& path_or_auto);

  // Trains until max_steps / max_tokens, or until stop() is called (then it saves a checkpoint and
  // returns early). Throws llm::Error when the loss becomes NaN/Inf, without writing a checkpoint.
  std::vector<StepRecord> run();

  // Asks run() to stop after the current step (safe from a signal handler).
  static void stop();

  // Mean validation loss over eval_batches (0 without validation data); grpo/reinforce: the mean
  // reward of greedy completions of eval_prompts validation prompts.
  double evaluate();
  std::string sample(int64_t n_tokens);   // text generated from the start-of-text token
  void save_checkpoint_now();

  models::CausalLM& model() { return *model_; }
  PolicyTrainer* policy_trainer() { return policy_trainer_.get(); }  // grpo / reinforce runs
  const std::vector<Record>& validation_prompts() const { return val_prompts_; }
  dist::Communicator& communicator() { return *comm_; }
  const TrainConfig& config() const { return config_; }
  int64_t step() const { return step_; }

 private:
  bool has_validation() const;
  double train_step();  // one optimizer step over grad_accum micro-batches; returns the mean loss
  void setup_finetune_data();  // sft / grpo / reinforce sources
  data::Batch next_batch();
  std::vector<int64_t> data_state() const;
  void set_data_state(const std::vector<int64_t>& state);
  bool is_root() const { return comm_->rank() == 0; }
  int64_t tokens_per_step() const { return comm_->world_size() * config_.batch_size * config_.seq_len * config_.grad_accum; }
  // Runs fn on rank 0; an error there is re-thrown on every rank (so none waits for a collective).
  void on_root(const std::function<void()>& fn);

  TrainConfig config_;
  std::unique_ptr<dist::Communicator> comm_;
  std::ostream null_log_{nullptr};  // discards what ranks other than 0 would print
  std::ostream& log_;
  std::unique_ptr<data::Tokenizer> tokenizer_;
  std::string tokenizer_spec_;
  std::unique_ptr<models::CausalLM> model_;
  std::unique_ptr<optim::AdamW> optimizer_;    // dist.zero 0
  std::unique_ptr<dist::DataParallel> dp_;     // with optimizer_, when the world is larger than 1
  std::unique_ptr<optim::ZeroAdamW> zero_;     // dist.zero 1
  optim::Schedule schedule_;
  // The data, by method: token shards (pretrain), example rows (sft), or prompt records (grpo, reinforce).
  std::unique_ptr<data::DataLoader> train_loader_, val_loader_;
  std::unique_ptr<SftDataset> sft_train_, sft_val_;
  std::vector<Record> prompts_, val_prompts_;
  std::unique_ptr<EpochOrder> prompt_order_;
  int64_t prompt_batches_ = 0;
  std::unique_ptr<Reward> reward_;
  std::unique_ptr<PolicyTrainer> policy_trainer_;
  RlStats last_rl_;
  std::unique_ptr<nn::LoraConfig> lora_;  // set when adapters train instead of the weights
  int64_t step_ = 0, tokens_ = 0;
  double last_grad_norm_ = 0;
  double peak_flops_ = 0;  // MFU's ceiling, FLOP/s: the measured GEMM rate on the CPU, the bf16 peak on a GPU
  Device device_ = Device::cpu();  // the model's, its gradients' and AdamW's device (train.device)
  static std::atomic<bool> stop_requested_;
};

}  // namespace llm::train
