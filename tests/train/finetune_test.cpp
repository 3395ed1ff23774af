// Fine-tuning end to end on a synthetic task with a verifiable answer (reverse a string of digits):
// SFT teaches a tiny model to do it on held-out prompts; from a model SFT left half-trained, GRPO
// raises the reward on held-out prompts. Plus the policy objective's gradient, and exact resume.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include "engine/generate/generate.h"
#include "engine/train/checkpoint.h"
#include "engine/io/lora_adapter.h"
#include "engine/train/grpo.h"
#include "engine/train/pretrained.h"
#include "engine/train/trainer.h"
#include "tests/common/gradcheck.h"
#include "tests/common/testing.h"

namespace llm::train {
namespace {

namespace fs = std::filesystem;

// The task's records: {"prompt": "3152=", "completion": "2513", "answer": "2513"}: 2000 for SFT, 2000
// other prompts for RL, and 200 held out (no string in two sets). mixed.jsonl holds the SFT strings
// with half of the completions copies instead of reversals: a model trained on it knows both
// behaviours and picks either, the middling start that RL after SFT typically sharpens.
struct ReverseTask {
  std::string dir = (fs::temp_directory_path() / ("llm_finetune_test_" + std::to_string(::getpid()))).string();
  ReverseTask() {
    fs::create_directories(dir);
    std::mt19937 gen(7);
    std::set<std::string> seen;
    std::ofstream train(dir + "/train.jsonl"), mixed(dir + "/mixed.jsonl"), rl(dir + "/rl.jsonl"), test(dir + "/test.jsonl");
    while (seen.size() < 4200) {
      std::string w(3 + gen() % 3, '1');
      for (char& c : w) c = static_cast<char>('1' + gen() % 6);
      if (!seen.insert(w).second) continue;
      const std::string r(w.rbegin(), w.rend());
      auto record = [&](const std::string& completion) {
        return "{\"prompt\": \"" + w + "=\", \"completion\": \"" + completion + "\", \"answer\": \"" + r + "\"}\n";
      };
      (seen.size() <= 2000 ? train : seen.size() <= 4000 ? rl : test) << record(r);
      if (seen.size() <= 2000) mixed << record(gen() % 2 ? r : w);
    }
  }
  ~ReverseTask() { fs::remove_all(dir); }
};

const std::string& task_dir() {
  static const ReverseTask t;
  return t.dir;
}

TrainConfig sft_config(const std::string& run, int64_t steps, const std::string& data = "train.jsonl") {
  const std::string d = task_dir();
  return parse_train_config(
      "model: {arch: llama, vocab_size: auto, max_seq_len: 32, dim: 64, n_layers: 2, n_heads: 4, hidden_dim: 128}\n"
      "data: {train: " + d + "/" + data + ", val: " + d + "/test.jsonl, tokenizer: byte}\n"
      "finetune: {method: sft, chat_template: false}\n"
      "optim: {lr: 3.0e-3, min_lr: 3.0e-4, warmup_steps: 20, weight_decay: 0.0}\n"
      "train: {batch_size: 16, seq_len: 32, max_steps: " + std::to_string(steps) + ", eval_interval: 0, threads: 1}\n"
      "checkpoint: {dir: " + d + "/" + run + ", keep_last: 1}\n"
      "log: {interval: 0}\n",
      "sft.yaml");
}

// Greedy exact-match rate on the held-out prompts.
double exact_match(models::CausalLM& model) {
  const auto tok = data::make_byte_tokenizer();
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::string> want;
  for (const Record& r : read_records(task_dir() + "/test.jsonl")) {
    prompts.push_back(tok->encode(r.fields["prompt"].get<std::string>()));
    want.push_back(r.fields["completion"].get<std::string>());
  }
  generate::GenerateOptions o;
  o.max_new_tokens = 8;
  o.sampling.temperature = 0;
  model.set_training(false);
  const auto out = generate::generate(model, *tok, prompts, o);
  int right = 0;
  for (size_t i = 0; i < out.size(); ++i) right += out[i].text == want[i] && out[i].finish_reason == "eos";
  return static_cast<double>(right) / static_cast<double>(out.size());
}

TEST(Finetune, SftLearnsToReverseHeldOutStrings) {
  std::ostringstream log;
  Trainer t(sft_config("sft_full", 400), log);
  t.run();
  const double em = exact_match(t.model());
  std::printf("SFT: held-out exact match %.3f after 400 steps\n", em);
  EXPECT_GE(em, 0.9) << log.str();
}

TEST(Finetune, GrpoRaisesTheRewardOfAHalfTrainedModel) {
  std::ostringstream log;
  std::string checkpoint;
  {
    Trainer sft(sft_config("sft_mixed", 300, "mixed.jsonl"), log);
    sft.run();
    checkpoint = list_checkpoints(task_dir() + "/sft_mixed").back();
  }
  const std::string d = task_dir();
  Trainer rl(parse_train_config("model: {init_from: " + checkpoint + "}\n"
                                "data: {train: " + d + "/rl.jsonl, val: " + d + "/test.jsonl, tokenizer: byte}\n"
                                "finetune: {method: grpo, chat_template: false}\n"
                                "grpo: {prompts_per_step: 8, group_size: 8, max_new_tokens: 8, iterations: 2, kl_beta: 0.02}\n"
                                "reward: {exact_number: 1.0}\n"
                                "optim: {lr: 5.0e-4, min_lr: 5.0e-4, schedule: constant, weight_decay: 0.0}\n"
                                "train: {batch_size: 64, seq_len: 32, max_steps: 40, eval_interval: 0, threads: 1}\n"
                                "checkpoint: {dir: " + d + "/grpo, keep_last: 1}\n"
                                "log: {interval: 0}\n",
                                "grpo.yaml"),
             log);
  std::vector<const Record*> held_out;
  for (const Record& r : rl.validation_prompts()) held_out.push_back(&r);
  PolicyTrainer& policy = *rl.policy_trainer();
  const double sampled_before = policy.evaluate(held_out, 1.f, 4, 99), greedy_before = policy.evaluate(held_out);
  const std::vector<StepRecord> steps = rl.run();
  const double sampled_after = policy.evaluate(held_out, 1.f, 4, 99), greedy_after = policy.evaluate(held_out);
  std::printf("GRPO on held-out prompts: sampled reward %.3f -> %.3f, greedy %.3f -> %.3f\n", sampled_before,
              sampled_after, greedy_before, greedy_after);
  EXPECT_GT(sampled_before, 0.05) << "the SFT start should be middling";
  EXPECT_LT(sampled_before, 0.7) << "the SFT start should be middling";
  EXPECT_GE(sampled_after, sampled_before + 0.3);
  EXPECT_GE(greedy_after, greedy_before + 0.3);
  // The logged statistics are what they claim.
  for (const StepRecord& s : steps) {
    EXPECT_GE(s.rl.reward_mean, 0.0);
    EXPECT_LE(s.rl.reward_mean, 1.0);
    EXPECT_GE(s.rl.clip_fraction, 0.0);
    EXPECT_GT(s.rl.completion_length, 0.0);
    EXPECT_GT(s.rl.entropy, 0.0);
  }
}

TEST(Finetune, LoraTrainsOnlyAdaptersAndSavesThemForMerging) {
  std::ostringstream log;
  {
    Trainer base(sft_config("lora_base", 100), log);
    base.run();
  }
  const std::string base_ckpt = task_dir() + "/lora_base/ckpt_00000100.h5";
  TrainConfig c = sft_config("lora_run", 60);
  c.model = {};
  c.init_from = base_ckpt;
  c.lora_rank = 4;
  c.lora_alpha = 8;
  c.lora_targets = "q_proj,v_proj,down_proj";
  Trainer t(c, log);
  const auto before = t.model().named_parameters();
  std::map<std::string, std::vector<float>> start;
  for (const auto& [name, p] : before) start[name] = p.to_vector<float>();
  const std::vector<StepRecord> steps = t.run();
  EXPECT_LT(steps.back().loss, steps.front().loss);
  size_t adapters = 0;
  for (const auto& [name, p] : t.model().named_parameters()) {
    if (nn::is_lora_parameter(name)) {
      ++adapters;
      if (name.find("lora_B") != std::string::npos) {
        EXPECT_NE(p.to_vector<float>(), start[name]) << name;
      }
    } else {
      EXPECT_EQ(p.to_vector<float>(), start[name]) << name << " is frozen";
    }
  }
  EXPECT_EQ(adapters, 2u * 3u * 2u);  // A and B on 3 modules in each of 2 layers
  // The saved adapter on the base reproduces the trained model; merged, too.
  NoGradGuard no_grad;
  const Tensor ids = Tensor::from_vector(std::vector<int32_t>{'3', '1', '5', '2', '=', '2'}, Shape{1, 6});
  t.model().set_training(false);
  const std::vector<float> want = t.model().forward(ids).to_vector<float>();
  auto reloaded = load_model(base_ckpt);
  io::load_lora_adapter(task_dir() + "/lora_run/adapter", *reloaded);
  EXPECT_LE(testing::max_rel_error(reloaded->forward(ids).to_vector<float>(), want), 1e-6);
  nn::merge_lora(*reloaded);
  EXPECT_LE(testing::max_rel_error(reloaded->forward(ids).to_vector<float>(), want), 1e-5);
}

// A reward program that fails mid-run stops training with its stderr, before the weights change,
// and leaves the checkpoints written so far intact (the run resumes from the last one).
TEST(Finetune, FailingRewardProgramStopsTheRunAndKeepsCheckpoints) {
  std::ostringstream log;
  {
    Trainer sft(sft_config("reward_base", 20), log);
    sft.run();
  }
  const std::string d = task_dir(), run = d + "/reward_fail";
  const std::string yaml =
      "model: {init_from: " + d + "/reward_base/ckpt_00000020.h5}\n"
      "data: {train: " + d + "/rl.jsonl, tokenizer: byte}\n"
      "finetune: {method: reinforce, chat_template: false}\n"
      "grpo: {prompts_per_step: 2, group_size: 2, max_new_tokens: 4, kl_beta: 0.0}\n"
      // Scores the first two batches, then fails on the third.
      "reward: {program: 'n=$(cat " + run + "/calls 2>/dev/null || echo 0); n=$((n+1)); echo $n > " + run +
      "/calls; if [ $n -ge 3 ]; then echo \"judge crashed\" >&2; exit 1; fi; while read -r l; do echo 1; done'}\n"
      "train: {batch_size: 4, seq_len: 32, max_steps: 10, eval_interval: 0, threads: 1}\n"
      "checkpoint: {dir: " + run + ", interval: 1, keep_last: 5}\n"
      "log: {interval: 0}\n";
  Trainer rl(parse_train_config(yaml, "reinforce.yaml"), log);
  const std::string error = testing::error_of([&] { rl.run(); });
  EXPECT_NE(error.find("step 3: reward program"), std::string::npos) << error;
  EXPECT_NE(error.find("exited with status 1; its stderr: judge crashed"), std::string::npos) << error;
  EXPECT_EQ(list_checkpoints(run), (std::vector<std::string>{run + "/ckpt_00000001.h5", run + "/ckpt_00000002.h5"}));
  const Checkpoint last = load_checkpoint(run + "/ckpt_00000002.h5");
  EXPECT_EQ(last.step, 2);
  EXPECT_EQ(rl.step(), 2);  // the failed step did not count
}

// A prompt the reward cannot score is found when the run starts, named by file and line, not at
// whichever step first samples it.
TEST(Finetune, PromptWithoutAnAnswerIsRefusedAtStart) {
  const std::string d = task_dir(), prompts = d + "/no_answer.jsonl";
  {
    std::ofstream out(prompts);
    out << "{\"prompt\": \"12=\", \"answer\": \"21\"}\n\n{\"prompt\": \"34=\"}\n";
  }
  std::ostringstream log;
  const std::string error = testing::error_of([&] {
    Trainer t(parse_train_config(
                  "model: {arch: llama, vocab_size: auto, max_seq_len: 32, dim: 32, n_layers: 1, n_heads: 2, hidden_dim: 64}\n"
                  "data: {train: " + prompts + ", tokenizer: byte}\n"
                  "finetune: {method: grpo, chat_template: false}\n"
                  "reward: {exact_number: 1.0}\n"
                  "train: {batch_size: 4, seq_len: 32, max_steps: 1, threads: 1}\n"
                  "checkpoint: {dir: " + d + "/no_answer_run}\n",
                  "grpo.yaml"),
              log);
  });
  EXPECT_EQ(error.rfind(prompts + ":3: no \"answer\" field", 0), 0u) << error;
}

TEST(Finetune, PolicyObjectiveGradientMatchesFiniteDifferences) {
  // Positions with both signs of advantage, ratios inside and outside the clip range, and one
  // position that is not a completion token (weight 0).
  PolicyTerms t;
  t.old_logprobs = {-1.0f, -2.0f, -0.5f, -1.5f, -3.0f, -0.7f};
  t.ref_logprobs = {-1.2f, -1.8f, -0.4f, -1.0f, -2.5f, -0.9f};
  t.advantages = {1.0f, -1.0f, 0.5f, -0.3f, 2.0f, 1.0f};
  t.weights = {0.25f, 0.25f, 0.0f, 0.2f, 0.2f, 0.1f};
  t.clip_eps = 0.2f;
  t.kl_beta = 0.1f;
  // Log-probabilities near the old ones (ratios 0.6 .. 1.5) without sitting on a clip boundary.
  Tensor lp = Tensor::from_vector(std::vector<float>{-0.6f, -2.3f, -0.45f, -1.45f, -3.5f, -0.6f}, Shape{6});
  lp.set_requires_grad(true);
  const double err = testing::gradcheck([&](const std::vector<Tensor>& in) { return policy_objective(in[0], t); }, {lp}, 1e-3);
  EXPECT_LT(err, 1e-3);
  // At ratio 1 without KL the loss is -mean advantage.
  PolicyTerms plain = t;
  plain.kl_beta = 0;
  const Tensor at_old = Tensor::from_vector(t.old_logprobs, Shape{6});
  EXPECT_NEAR(policy_objective(at_old, plain).item(), -(0.25 * 1 - 0.25 * 1 - 0.2 * 0.3 + 0.2 * 2 + 0.1 * 1), 1e-6);
}

TEST(Finetune, SftResumeContinuesTheSameRun) {
  std::ostringstream log;
  TrainConfig straight_cfg = sft_config("resume_a", 12);
  straight_cfg.checkpoint_interval = 6;
  straight_cfg.keep_last = 5;
  Trainer straight(straight_cfg, log);
  const std::vector<StepRecord> all = straight.run();
  TrainConfig second_cfg = sft_config("resume_a", 12);
  Trainer second(second_cfg, log);
  second.resume(task_dir() + "/resume_a/ckpt_00000006.h5");
  const std::vector<StepRecord> rest = second.run();
  ASSERT_EQ(rest.size(), 6u);
  for (size_t i = 0; i < rest.size(); ++i) EXPECT_EQ(rest[i].loss, all[6 + i].loss) << "step " << rest[i].step;
}

}  // namespace
}  // namespace llm::train
