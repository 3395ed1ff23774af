// The training loop end to end on a tiny model: config errors, bit-identical resume, NaN handling,
// checkpoint files.
#include "engine/train/trainer.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "data/prepare.h"
#include "engine/train/checkpoint.h"
#include "tests/common/testing.h"

namespace llm::train {
namespace {

namespace fs = std::filesystem;

using testing::error_of;

// A byte-level copy of Tiny Shakespeare, prepared once per test process in a folder removed at exit.
struct TempDataset {
  std::string dir = (fs::temp_directory_path() / ("llm_trainer_test_" + std::to_string(::getpid()))).string();
  TempDataset() {
    data::PrepareOptions o;
    o.tokenizer = "byte";
    o.inputs = {std::string(LLM_SOURCE_DIR) + "/data/assets/tinyshakespeare/input.txt"};
    o.out_dir = dir + "/data";
    data::prepare_dataset(o, nullptr);
  }
  ~TempDataset() { fs::remove_all(dir); }
};

const std::string& dataset() {
  static const TempDataset d;
  return d.dir;
}

std::string tiny_yaml(const std::string& mode) {
  return "model: {arch: llama, vocab_size: auto, max_seq_len: 32, dim: 32, n_layers: 2, n_heads: 4, n_kv_heads: 2, "
         "hidden_dim: 48}\n"
         "data: {train: " + dataset() + "/data, mode: " + mode + "}\n"
         "optim: {lr: 3.0e-3, min_lr: 3.0e-4, warmup_steps: 3}\n"
         "train: {batch_size: 4, seq_len: 16, grad_accum: 2, max_steps: 20, eval_interval: 10, eval_batches: 2, threads: 2}\n"
         "checkpoint: {interval: 10, keep_last: 5}\n"
         "log: {interval: 0}\n";
}

TrainConfig tiny_config(const std::string& mode, const std::string& run, std::vector<std::string> extra = {}) {
  extra.push_back("checkpoint.dir=" + dataset() + "/" + run);
  return parse_train_config(tiny_yaml(mode), "tiny.yaml", extra);
}

std::vector<double> losses(const std::vector<StepRecord>& records) {
  std::vector<double> out;
  for (const StepRecord& r : records) out.push_back(r.loss);
  return out;
}

TEST(TrainConfig, ErrorsNameFileAndKey) {
  EXPECT_EQ(error_of([] { parse_train_config("optim: {lr: fast}\ndata: {train: x}", "configs/x.yaml"); }),
            "configs/x.yaml: optim.lr: expected a number, got \"fast\"");
  EXPECT_EQ(error_of([] { parse_train_config("optim: {lrr: 1}\ndata: {train: x}", "x.yaml"); }), "x.yaml: optim.lrr: unknown key");
  EXPECT_NE(error_of([] { parse_train_config("optimizer: {lr: 1}", "x.yaml"); }).find("unknown section 'optimizer'"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_train_config("data: {train: x}\ntrain: {batch_size: 0}", "x.yaml"); })
                .find("x.yaml: train.batch_size: must be positive"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_train_config("data: {train: x, mode: shuffled}", "x.yaml"); }).find("data.mode"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_train_config("model: [1, 2", "x.yaml"); }).find("x.yaml: line"), std::string::npos);
  EXPECT_EQ(error_of([] { parse_train_config("data: {train: x}", "x.yaml", {"optim.lr=oops"}); }),
            "--set optim.lr: expected a number, got \"oops\"");
}

// Bad values that used to be accepted (a silently different run, or a val loss of 0 from no batches),
// keys that are not names, and unreadable --set values: each one line naming the file or flag and key.
TEST(TrainConfig, BadValuesAndKeysAreRefusedByName) {
  auto err = [](const std::string& yaml, std::vector<std::string> overrides = {}) {
    return error_of([&] { parse_train_config("data: {train: x}\n" + yaml, "x.yaml", overrides); });
  };
  EXPECT_EQ(err("train: {eval_interval: 5, eval_batches: 0}"), "x.yaml: train.eval_batches: must be positive, got 0");
  EXPECT_EQ(err("train: {sample_interval: 5, sample_tokens: -5}"), "x.yaml: train.sample_tokens: must be positive, got -5");
  EXPECT_EQ(err("optim: {warmup_steps: -10}"), "x.yaml: optim.warmup_steps: must not be negative, got -10");
  EXPECT_EQ(err("train: {max_tokens: -1}"), "x.yaml: train.max_tokens: must not be negative, got -1");
  EXPECT_EQ(err("checkpoint: {interval: -1}"), "x.yaml: checkpoint.interval: must not be negative, got -1");
  EXPECT_EQ(err("log: {interval: -1}"), "x.yaml: log.interval: must not be negative, got -1");
  EXPECT_EQ(err("train: {threads: -4}"), "x.yaml: train.threads: must not be negative, got -4");
  EXPECT_EQ(err("train: {threads: 100000000}").rfind("x.yaml: train.threads: at most ", 0), 0u);
  EXPECT_EQ(err("train: {sample_temperature: -1}"), "x.yaml: train.sample_temperature: must not be negative, got -1");
  EXPECT_EQ(err("optim: {eps: -1}"), "x.yaml: optim.eps: must not be negative, got -1");
  EXPECT_EQ(err("optim: {weight_decay: -0.5}"), "x.yaml: optim.weight_decay: must not be negative, got -0.5");
  EXPECT_EQ(err("optim: {grad_clip: -1}"), "x.yaml: optim.grad_clip: must be 0 (off) or positive, got -1");
  EXPECT_EQ(err("optim:\n  lr:\n"), "x.yaml: optim.lr: expected a number, got nothing");
  EXPECT_EQ(err("optim:\n  ? [a, b]\n  : 1\n"), "x.yaml: line 3: expected a key name, got a list");
  EXPECT_EQ(err("", {"optim.lr=[1"}).rfind("--set optim.lr: cannot read the value \"[1\": ", 0), 0u);
  EXPECT_EQ(err("model:\n  dim: 32\n  dim: 64\n"), "x.yaml: line 4: model.dim appears twice");
  EXPECT_EQ(err("optim: {lr: 1}\noptim: {lr: 2}\n"), "x.yaml: line 3: section 'optim' appears twice");
  // The reward section, checked with the rest of the file (its errors used to lack the file's name).
  EXPECT_EQ(err("finetune: {method: grpo}").rfind("x.yaml: reward: none is enabled", 0), 0u);
  EXPECT_EQ(err("finetune: {method: grpo}\nreward: {regex: \"([x\"}").rfind("x.yaml: reward.regex: invalid pattern", 0), 0u);
  EXPECT_EQ(err("finetune: {method: reinforce}\nreward: {length_max: 4, program_timeout_s: 0}"),
            "x.yaml: reward.program_timeout_s: must be positive, got 0");
  // Zero still means off where it always did.
  EXPECT_NO_THROW(parse_train_config("data: {train: x}\ntrain: {eval_interval: 0, eval_batches: 0}\noptim: {grad_clip: 0}", "x.yaml"));
}

TEST(TrainConfig, ADirectoryIsNotAConfigFile) {
  const std::string dir = fs::temp_directory_path().string();
  EXPECT_EQ(error_of([&] { load_train_config(dir); }), dir + ": a directory, not a config file");
}

TEST(TrainConfig, OverridesAndYamlRoundTrip) {
  const TrainConfig c = tiny_config("random", "cfg", {"optim.lr=0.5", "train.seed=7"});
  EXPECT_EQ(c.lr, 0.5f);
  EXPECT_EQ(c.seed, 7u);
  EXPECT_EQ(c.model.n_kv_heads, 2);
  const TrainConfig back = parse_train_config(to_yaml(c), "roundtrip");
  EXPECT_EQ(to_yaml(back), to_yaml(c));
  // Qwen3's settings from a recipe: q/k norms and a head_dim of its own.
  const TrainConfig q = tiny_config("random", "cfg", {"model.qk_norm=true", "model.head_dim=12"});
  EXPECT_TRUE(q.model.qk_norm);
  EXPECT_EQ(q.model.head_dim(), 12);
  EXPECT_EQ(to_yaml(parse_train_config(to_yaml(q), "roundtrip")), to_yaml(q));
  // The fine-tuning sections, with text that needs quoting and a list of LoRA targets.
  const TrainConfig f = parse_train_config(
      "data: {train: x.jsonl}\n"
      "finetune: {method: grpo, system_prompt: \"Say \\\"hi\\\"\\nthen stop\", packing: false}\n"
      "lora: {rank: 4, targets: [q_proj, v_proj]}\n"
      "grpo: {group_size: 4, kl_beta: 0.0}\n"
      "reward: {exact_number: 1.0, program: \"python3 -c 'print(1)'\", regex: \"^\\\\d+$\"}\n",
      "ft.yaml");
  EXPECT_EQ(f.system_prompt, "Say \"hi\"\nthen stop");
  EXPECT_EQ(f.lora_targets, "q_proj,v_proj");
  EXPECT_EQ(f.reward.regex, "^\\d+$");
  EXPECT_FALSE(f.packing);
  const TrainConfig f2 = parse_train_config(to_yaml(f), "roundtrip");
  EXPECT_EQ(to_yaml(f2), to_yaml(f));
  EXPECT_EQ(f2.system_prompt, f.system_prompt);
  EXPECT_EQ(f2.reward.program, "python3 -c 'print(1)'");
  EXPECT_NE(error_of([] { parse_train_config("data: {train: x}\nfinetune: {method: dpo}", "x.yaml"); })
                .find("x.yaml: finetune.method: expected pretrain, sft, grpo or reinforce, got \"dpo\""),
            std::string::npos);
}

// Training 20 steps straight and 10 + resume + 10 must give bit-identical losses (same thread count).
void check_resume(const std::string& mode) {
  std::ostringstream log;
  Trainer straight(tiny_config(mode, "straight_" + mode), log);
  const std::vector<double> all = losses(straight.run());
  ASSERT_EQ(all.size(), 20u);
  EXPECT_LT(all.back(), all.front());  // it learns

  const TrainConfig cfg = tiny_config(mode, "resumed_" + mode);
  {
    Trainer first(cfg, log);
    first.run();  // writes ckpt 10 and 20; the run is continued from 10 below
  }
  Trainer second(cfg, log);
  second.resume(checkpoint_path(cfg.checkpoint_dir, 10));
  const std::vector<double> tail = losses(second.run());
  ASSERT_EQ(tail.size(), 10u);
  for (size_t i = 0; i < 10; ++i) EXPECT_EQ(tail[i], all[10 + i]) << mode << " step " << 11 + i;
  // The final weights agree bit for bit too.
  for (auto& [name, p] : straight.model().named_parameters())
    EXPECT_EQ(p.to_vector<float>(), second.model().parameter(name).to_vector<float>()) << name;
}

TEST(Trainer, ResumeContinuesTheIdenticalRunRandom) { check_resume("random"); }
TEST(Trainer, ResumeContinuesTheIdenticalRunSequential) { check_resume("sequential"); }

TEST(Trainer, ResumeAutoPicksTheNewestAndPrunes) {
  std::ostringstream log;
  const TrainConfig cfg = tiny_config("random", "auto", {"checkpoint.interval=5", "checkpoint.keep_last=2"});
  {
    Trainer t(cfg, log);
    t.run();
  }
  const std::vector<std::string> files = list_checkpoints(cfg.checkpoint_dir);
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(files.back(), checkpoint_path(cfg.checkpoint_dir, 20));
  for (const auto& e : fs::directory_iterator(cfg.checkpoint_dir))  // no temporary files left behind
    EXPECT_TRUE(e.path().extension() == ".h5" || e.path().filename() == "metrics.jsonl") << e.path();
  Trainer again(cfg, log);
  again.resume("auto");
  EXPECT_EQ(again.step(), 20);
  EXPECT_TRUE(again.run().empty());  // already finished
  std::ifstream metrics(cfg.checkpoint_dir + "/metrics.jsonl");
  std::string first_line;
  std::getline(metrics, first_line);
  EXPECT_NE(first_line.find("\"step\":1"), std::string::npos) << first_line;
  EXPECT_NE(first_line.find("\"tokens_per_s\""), std::string::npos);
}

TEST(Trainer, NonFiniteLossStopsAndKeepsTheLastCheckpoint) {
  std::ostringstream log;
  const TrainConfig cfg = tiny_config("random", "nan", {"optim.lr=1e30", "optim.warmup_steps=0", "optim.grad_clip=0",
                                                         "checkpoint.interval=1", "train.eval_interval=0"});
  Trainer t(cfg, log);
  const std::string msg = error_of([&] { t.run(); });
  EXPECT_NE(msg.find("stopping (the last checkpoint is kept as it was)"), std::string::npos) << msg;
  const std::vector<std::string> files = list_checkpoints(cfg.checkpoint_dir);
  ASSERT_FALSE(files.empty());
  EXPECT_LT(load_checkpoint(files.back()).step, t.step() + 1);  // nothing was written for the bad step
  EXPECT_NO_THROW(load_checkpoint(files.back()));
}

TEST(Trainer, ProfileStepLogsWhereThatStepsTimeWent) {
  std::ostringstream log;
  const TrainConfig cfg = tiny_config("random", "profile", {"log.profile_step=3", "train.max_steps=4",
                                                             "train.eval_interval=0", "checkpoint.interval=0"});
  Trainer t(cfg, log);
  t.run();
  const std::string text = log.str();
  const std::string header = "step 3, time per op (log.profile_step):";
  const size_t at = text.find(header);
  ASSERT_NE(at, std::string::npos) << text;
  EXPECT_EQ(text.find("time per op", at + header.size()), std::string::npos) << "profiled more than one step:\n" << text;
  for (const char* row : {"LinearResidual fwd", "Attention bwd", "AdamW step", "gradient norm", "total"})
    EXPECT_NE(text.find(row, at), std::string::npos) << row << " missing from:\n" << text.substr(at);
}

TEST(Checkpoint, RoundTripAndCorruption) {
  std::ostringstream log;
  const TrainConfig cfg = tiny_config("random", "ckpt", {"train.max_steps=2", "checkpoint.interval=0"});
  Trainer t(cfg, log);
  t.run();
  const std::string path = checkpoint_path(cfg.checkpoint_dir, 2);
  const Checkpoint c = load_checkpoint(path);
  EXPECT_EQ(c.step, 2);
  EXPECT_EQ(c.tokens, 2 * 4 * 16 * 2);
  EXPECT_EQ(c.model_config.summary(), t.model().config().summary());
  EXPECT_EQ(c.weights.size(), t.model().named_parameters().size());
  EXPECT_TRUE(c.has_optimizer);
  EXPECT_EQ(c.optimizer.step, 2);
  EXPECT_EQ(c.tokenizer, "byte");
  // A truncated copy is refused with the file named.
  const std::string bad = cfg.checkpoint_dir + "/truncated.h5";
  fs::copy_file(path, bad);
  fs::resize_file(bad, fs::file_size(path) / 2);
  const std::string msg = error_of([&] { load_checkpoint(bad); });
  EXPECT_NE(msg.find("truncated.h5"), std::string::npos) << msg;
  EXPECT_NE(error_of([&] { load_checkpoint(cfg.checkpoint_dir + "/missing.h5"); }).find("no such checkpoint"),
            std::string::npos);
}

}  // namespace
}  // namespace llm::train
