// Whole models trained on CUDA follow the same training on the CPU: a small GPT-2 (head dim 32: the
// simple attention kernels) and a small LLaMA with GQA (head dim 64: the tensor-core attention), from
// the same initial weights on the same fixed batch, 20 AdamW steps with global-norm clipping, per-step
// losses compared; and after the first step the device allocator takes nothing more from cudaMalloc.
//
// Tolerance: the CPU run is fp32 throughout; the GPU run has bf16 activations and bf16 matmul
// operands with fp32 master weights, gradients and moments. bf16 keeps 8 significant bits (relative
// rounding up to 2^-9 ≈ 0.2% per value); the loss is a mean over every token, which averages that
// rounding, so step 1 agrees to about 0.1%, and the runs then drift apart as their updates differ by
// bf16-sized amounts. How fast they drift was measured on the CPU: rounding only the initial
// weights to bf16 moves this fp32 run's losses by up to 0.4% over 20 steps at lr 1e-3 (and by 5%
// at lr 3e-3, where the loss falls steeply to 0.1: hence the gentler rate). bf16 at every op drifts
// more than that, so each step is allowed 4%; a broken kernel or a wrong gradient is far outside it
// (the loss then stalls near ln(vocab) ≈ 4.6 or diverges, while these runs reach 1.3 to 1.9), and
// the GPU run must also learn (final loss below 0.7 of the first).
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine/core/allocator.h"
#include "engine/core/profile.h"
#include "engine/models/transformer.h"
#include "engine/ops/ops.h"
#include "optim/adamw.h"
#include "tests/cuda/cuda_testing.h"

namespace llm::testing {
namespace {

constexpr int kSteps = 20;
constexpr double kLossTolerance = 4e-2;

struct Run {
  std::vector<double> losses;
  std::vector<uint64_t> system_allocs;  // blocks the device's allocator took from the system, per step
};

// `kSteps` AdamW updates on one fixed batch, the model on `device`.
Run train(const models::ModelConfig& config, Device device, DType activations, const Tensor& ids,
          const Tensor& targets) {
  auto model = models::make_model(config, 1234);
  model->to(device);
  model->set_activation_dtype(activations);
  optim::AdamW optimizer(model->named_parameters(), optim::AdamWConfig{});
  const Tensor x = ids.to(device), y = targets.to(device);
  Run run;
  for (int step = 0; step < kSteps; ++step) {
    const uint64_t allocs_before = allocator_for(device).stats().system_allocs;
    optimizer.zero_grad();
    const Tensor loss = ops::cross_entropy(model->forward(x), y);
    run.losses.push_back(loss.item());
    loss.backward();
    const double norm = optim::grad_norm(model->parameters());
    optimizer.step(1e-3f, optim::clip_scale(norm, 1.0));
    run.system_allocs.push_back(allocator_for(device).stats().system_allocs - allocs_before);
  }
  return run;
}

void expect_same_training(const std::string& what, const models::ModelConfig& config) {
  const int64_t B = 3, T = 33;
  const std::vector<int32_t> tokens = random_ints(static_cast<size_t>(B * (T + 1)), 5, 0, int32_t(config.vocab_size));
  std::vector<int32_t> in, out;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      in.push_back(tokens[size_t(b * (T + 1) + t)]);
      out.push_back(tokens[size_t(b * (T + 1) + t + 1)]);
    }
  const Tensor ids = Tensor::from_vector(in, Shape{B, T}), targets = Tensor::from_vector(out, Shape{B, T});
  const std::vector<double> cpu = train(config, Device::cpu(), DType::F32, ids, targets).losses;
  for (DType act : {DType::BF16, DType::F32}) {
    const std::string run = what + " on cuda with " + dtype_name(act) + " activations";
    const Run gpu_run = train(config, Device::cuda(), act, ids, targets);
    const std::vector<double>& gpu = gpu_run.losses;
    std::string table;
    for (int s = 0; s < kSteps; ++s)
      table += "\n  step " + std::to_string(s + 1) + ": cuda " + std::to_string(gpu[size_t(s)]) + ", cpu " +
               std::to_string(cpu[size_t(s)]);
    for (int s = 0; s < kSteps; ++s)
      EXPECT_NEAR(gpu[size_t(s)], cpu[size_t(s)], kLossTolerance * cpu[size_t(s)])
          << run << ": loss differs first at step " << s + 1 << table;
    EXPECT_LT(gpu.back(), 0.7 * gpu.front()) << run << ": did not learn the batch" << table;
    // The caching allocator serves every step after the first (which makes the gradients, moments
    // and activations) from its cache: no cudaMalloc inside the training loop.
    for (int s = 1; s < kSteps; ++s)
      EXPECT_EQ(gpu_run.system_allocs[size_t(s)], 0u)
          << run << ": step " << s + 1 << " took " << gpu_run.system_allocs[size_t(s)] << " blocks from cudaMalloc";
  }
}

TEST(TrainCuda, Gpt2FollowsTheCpuRun) {
  LLM_SKIP_WITHOUT_GPU();
  models::ModelConfig c;
  c.arch = models::Arch::GPT2;
  c.vocab_size = 97;
  c.max_seq_len = 64;
  c.dim = 96;
  c.n_layers = 2;
  c.n_heads = 3;
  c.n_kv_heads = 3;
  c.hidden_dim = 4 * 96;
  expect_same_training("gpt2 (head dim 32)", c);
}

TEST(TrainCuda, LlamaFollowsTheCpuRun) {
  LLM_SKIP_WITHOUT_GPU();
  models::ModelConfig c;
  c.arch = models::Arch::Llama;
  c.vocab_size = 131;
  c.max_seq_len = 64;
  c.dim = 128;
  c.n_layers = 2;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.hidden_dim = 200;
  c.tie_embeddings = false;
  expect_same_training("llama (head dim 64, GQA 2:1)", c);
}

// The op profile on the device: events on the stream, one row per op, each forward and backward
// of the model's 9 linear layers (2 blocks × qkv, proj, fc, proj, and the tied output head) counted once,
// under the name of its fused form.
TEST(TrainCuda, OpProfileCoversADeviceStep) {
  LLM_SKIP_WITHOUT_GPU();
  models::ModelConfig c;
  c.arch = models::Arch::GPT2;
  c.vocab_size = 97;
  c.max_seq_len = 64;
  c.dim = 64;
  c.n_layers = 2;
  c.n_heads = 2;
  c.n_kv_heads = 2;
  c.hidden_dim = 256;
  auto model = models::make_model(c, 7);
  model->to(Device::cuda());
  model->set_activation_dtype(DType::BF16);
  optim::AdamW optimizer(model->named_parameters(), optim::AdamWConfig{});
  const Tensor x = Tensor::from_vector(random_ints(2 * 16, 3, 0, 97), Shape{2, 16}).to(Device::cuda());
  profile::start(Device::cuda());
  optimizer.zero_grad();
  ops::cross_entropy(model->forward(x), x).backward();
  optimizer.step(1e-3f, 1.0f);
  profile::mark("AdamW step");
  const std::vector<profile::Row> rows = profile::stop();
  std::map<std::string, profile::Row> by_name;
  for (const profile::Row& r : rows) {
    EXPECT_GE(r.seconds, 0.0) << r.name;
    by_name[r.name] = r;
  }
  EXPECT_EQ(by_name["Linear fwd"].calls, 3);  // qkv ×2 and the output head
  EXPECT_EQ(by_name["Linear bwd"].calls, 3);
  EXPECT_EQ(by_name["LinearResidual fwd"].calls, 4);  // both projections ×2
  EXPECT_EQ(by_name["LinearGelu fwd"].calls, 2);
  EXPECT_EQ(by_name["LinearGelu bwd"].calls, 2);
  EXPECT_EQ(by_name["Attention bwd"].calls, 2);
  EXPECT_EQ(by_name["AdamW step"].calls, 1);
}

}  // namespace
}  // namespace llm::testing
