// RL-style reward updates: GRPO (DeepSeekMath; as in TRL) and REINFORCE with a mean baseline.
//
// One step: every prompt gets group_size completions sampled with the KV-cache generator; each is
// scored by the reward; advantages are the rewards normalized within their group (GRPO: minus the
// group mean, divided by the group's standard deviation; REINFORCE: minus the mean only). Then, for
// `iterations` optimizer steps on that batch, the policy minimizes, per completion token,
//   -min(ρ·A, clip(ρ, 1-ε, 1+ε)·A) + β·(exp(ref - lp) - (ref - lp) - 1),   ρ = exp(lp - lp_old),
// averaged over each completion's tokens and then over completions; lp, lp_old and ref are the
// token log-probabilities under the policy, the policy that sampled, and the frozen reference model
// (the KL penalty uses the k3 estimator; β = 0 needs no reference model).
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "engine/dist/data_parallel.h"
#include "engine/models/transformer.h"
#include "engine/train/reward.h"
#include "engine/train/sft_data.h"
#include "optim/adamw.h"

namespace llm::train {

struct GrpoOptions {
  bool reinforce = false;  // REINFORCE with a mean baseline instead of GRPO's normalization
  int64_t group_size = 8;
  int64_t max_new_tokens = 128;
  float temperature = 1.0f, top_p = 1.0f;
  int64_t iterations = 1;  // optimizer steps per sampled batch (μ)
  float clip_eps = 0.2f;   // ε
  float kl_beta = 0.04f;   // β
  int64_t micro_batch = 8; // sequences per forward/backward
  float grad_clip = 1.0f;
};

// Per-token terms of the objective above, for N positions (flattened [B, T]); weight is 0 where a
// position is not a completion token, else 1 / (tokens of its completion · completions).
struct PolicyTerms {
  std::vector<float> old_logprobs, ref_logprobs, advantages, weights;
  float clip_eps = 0.2f, kl_beta = 0.f;
};
// The objective's value as a differentiable function of the policy's token log-probabilities [N].
Tensor policy_objective(const Tensor& logprobs, const PolicyTerms& terms);

// What a step measured (means over completions or completion tokens as named).
struct RlStats {
  double loss = 0, reward_mean = 0, reward_std = 0, kl = 0, clip_fraction = 0, completion_length = 0, entropy = 0;
  double grad_norm = 0;
};

// Makes the token ids of a prompt record (chat template with a generation prompt, or plain text).
using PromptEncoder = std::function<std::vector<int32_t>(const Record&)>;

class PolicyTrainer {
 public:
  // `reference` may be null when kl_beta is 0. The tokenizer, encoder and reward must outlive this.
  PolicyTrainer(GrpoOptions options, models::CausalLM& policy, std::unique_ptr<models::CausalLM> reference,
                const data::Tokenizer& tokenizer, PromptEncoder encode, const Reward& reward,
                std::vector<std::string> stop_strings);

  // Data parallelism: each rank samples and scores its own prompts (whole groups), gradients are
  // averaged through `dp` before every update, and the statistics are averaged over the ranks.
  void set_data_parallel(dist::DataParallel* dp) { dp_ = dp; }

  // One sampled batch and `iterations` updates with learning rate lr. `seed` makes the sampling;
  // completion i samples from stream first_stream + i of it (ranks offset theirs, so the world
  // samples what one process with all the prompts would).
  RlStats step(optim::AdamW& optimizer, const std::vector<const Record*>& prompts, float lr, uint64_t seed,
               uint64_t first_stream = 0);
  // Mean reward of completions of the prompts (no update): greedy with temperature 0, else
  // `samples` sampled completions per prompt.
  double evaluate(const std::vector<const Record*>& prompts, float temperature = 0.f, int64_t samples = 1,
                  uint64_t seed = 0);

 private:
  struct Sampled;
  Sampled sample(const std::vector<const Record*>& prompts, int64_t per_prompt, float temperature, uint64_t seed,
                 uint64_t first_stream = 0);
  GrpoOptions opt_;
  models::CausalLM& policy_;
  std::unique_ptr<models::CausalLM> reference_;
  const data::Tokenizer& tokenizer_;
  PromptEncoder encode_;
  const Reward& reward_;
  std::vector<std::string> stop_;
  dist::DataParallel* dp_ = nullptr;
};

}  // namespace llm::train
