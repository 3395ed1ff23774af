// `llm-bench cuda` section 30: GPT-2 124M training on the GPU, the engine's whole step (forward,
// backward, gradient norm, AdamW) with bf16 activations and fp32 master weights, T = 1024, at the
// largest micro-batch that fits (64, 32, 16, 8, 4 tried in turn). Tokens/s, and MFU against the
// dense bf16 peak (models::kGpuPeakBf16Flops, 989 TFLOP/s: H100/H200 SXM). Then one more step under
// the op profile (engine/core/profile.h): where the step's device time goes; and the MFU again with
// every GEMM on the hand-written kernels (kernels.matmul: native).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "engine/core/cuda_context.h"
#include "engine/core/profile.h"
#include "engine/models/transformer.h"
#include "engine/ops/ops.h"
#include "optim/adamw.h"
#include "tools/bench_cuda/bench_cuda.h"

namespace llm::bench_cuda {
namespace {

models::ModelConfig gpt2_124m() {
  models::ModelConfig c;
  c.arch = models::Arch::GPT2;
  c.vocab_size = 50257;
  c.max_seq_len = 1024;
  c.dim = 768;
  c.n_layers = 12;
  c.n_heads = 12;
  c.n_kv_heads = 12;
  c.hidden_dim = 3072;
  return c;
}

// One training step on a micro-batch (x, y), marked for the op profile as the trainer's step is.
void step(models::CausalLM& model, optim::AdamW& optimizer, const Tensor& x, const Tensor& y) {
  optimizer.zero_grad();
  profile::mark("zero grad");
  ops::cross_entropy(model.forward(x), y).backward();
  const double norm = optim::grad_norm(model.parameters());
  profile::mark("gradient norm");
  optimizer.step(1e-4f, optim::clip_scale(norm, 1.0));
  profile::mark("AdamW step");
}

// Median seconds per training step at micro-batch B (throws when it does not fit); with `rows`, one
// more step under the op profile, whose rows it fills.
double step_seconds(models::CausalLM& model, optim::AdamW& optimizer, int64_t B, int64_t T, int64_t vocab,
                    std::vector<profile::Row>* rows = nullptr) {
  std::vector<int32_t> ids(static_cast<size_t>(B * T));
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 7919 + 13) % static_cast<size_t>(vocab));
  const Tensor x = Tensor::from_vector(ids, Shape{B, T}).to(Device::cuda());
  std::rotate(ids.begin(), ids.begin() + 1, ids.end());
  const Tensor y = Tensor::from_vector(ids, Shape{B, T}).to(Device::cuda());
  std::vector<double> times;
  for (int i = 0; i < 7; ++i) {  // two warm-up steps: kAuto's GEMM timing, the allocator's cache
    const auto t0 = std::chrono::steady_clock::now();
    step(model, optimizer, x, y);
    cuda_context::synchronize(0);
    if (i >= 2) times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  if (rows) {
    profile::start(Device::cuda());
    step(model, optimizer, x, y);
    *rows = profile::stop();
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

void bench_train() {
  const models::ModelConfig config = gpt2_124m();
  const int64_t T = 1024;
  auto model = models::make_model(config, 1);
  model->to(Device::cuda());
  model->set_activation_dtype(DType::BF16);
  optim::AdamW optimizer(model->named_parameters(), optim::AdamWConfig{});
  for (int64_t B : {64, 32, 16, 8, 4}) {
    const std::string shape = "gpt2-124m B=" + std::to_string(B) + " T=" + std::to_string(T);
    try {
      std::vector<profile::Row> rows;
      const double s = step_seconds(*model, optimizer, B, T, config.vocab_size, &rows);
      const double tokens_per_s = static_cast<double>(B * T) / s;
      const double flops = config.training_flops_per_token(T) * tokens_per_s;
      print_row("train step", shape, ops::to_string(ops::matmul_backend()), tokens_per_s * 1e-3, "ktok/s");
      print_row("train MFU", shape, "bf16", flops * 1e-12, "TFLOP/s", models::kGpuPeakBf16Flops * 1e-12);
      std::printf("where one step's device time goes (%s; a mark's time runs from the previous mark):\n%s",
                  shape.c_str(), profile::format(rows, 1, 20).c_str());
      // The same step on the hand-written GEMMs alone (auto may have picked cuBLAS for some shapes).
      const ops::MatmulBackend was = ops::matmul_backend();
      ops::set_matmul_backend(ops::MatmulBackend::kNative);
      const double native_s = step_seconds(*model, optimizer, B, T, config.vocab_size);
      ops::set_matmul_backend(was);
      const double native_flops = config.training_flops_per_token(T) * static_cast<double>(B * T) / native_s;
      print_row("train MFU", shape, "native", native_flops * 1e-12, "TFLOP/s", models::kGpuPeakBf16Flops * 1e-12);
      return;
    } catch (const std::exception& e) {  // too large: free what the failed step cached, try half
      std::printf("%-14s %-28s did not run (%s)\n", "train step", shape.c_str(), e.what());
      optimizer.zero_grad();
      cuda_context::synchronize(0);
      allocator_for(Device::cuda()).release_cached();
    }
  }
}

const Section train_section(30, "train", &bench_train);

}  // namespace
}  // namespace llm::bench_cuda
