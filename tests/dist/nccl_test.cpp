// The NCCL communicator on GPU buffers, and data-parallel training on the GPU through it, in
// whatever world this process is in (scripts/gpu_check.sh runs it under mpirun -np 1). Skips, saying
// why, without NCCL in the build or without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <sstream>

#include "engine/core/allocator.h"
#include "engine/dist/communicator.h"
#include "engine/dist/data_parallel.h"
#include "engine/models/transformer.h"
#include "engine/ops/ops.h"
#include "optim/zero.h"
#include "tests/common/testing.h"

namespace llm::dist {
namespace {

#ifdef LLM_HAVE_NCCL
Communicator& nccl() {
  static std::unique_ptr<Communicator> comm = make_communicator("nccl", 120);
  return *comm;
}

Device gpu(const Communicator& c) { return Device::cuda(c.local_rank() % cuda_device_count()); }

float value(int r, int64_t i) { return static_cast<float>((r + 1) * 0.5 + (i % 89) * 0.25); }
#endif

TEST(Nccl, CollectivesOnGpuBuffers) {
#ifndef LLM_HAVE_NCCL
  GTEST_SKIP() << "built without NCCL (needs CUDA, NCCL and MPI)";
#else
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  Communicator& c = nccl();
  EXPECT_EQ(c.backend(), "nccl");
  const int W = c.world_size(), R = c.rank();
  for (int64_t n : {1, 17, 65537}) {
    std::vector<float> host(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) host[i] = value(R, i);
    Tensor sum = Tensor::from_vector(host, {n}).to(gpu(c)), avg = sum.clone();
    c.all_reduce(sum, ReduceOp::Sum);
    c.all_reduce(avg, ReduceOp::Average);
    const std::vector<float> s = sum.to_vector<float>(), a = avg.to_vector<float>();
    for (int64_t i = 0; i < n; ++i) {
      double expect = 0;
      for (int r = 0; r < W; ++r) expect += value(r, i);
      ASSERT_FLOAT_EQ(s[i], expect) << i;
      ASSERT_FLOAT_EQ(a[i], expect / W) << i;
    }
  }
  const int64_t n = 33;
  std::vector<float> host(static_cast<size_t>(n * W));
  for (int64_t i = 0; i < n * W; ++i) host[i] = value(R, i);
  Tensor send = Tensor::from_vector(host, {n * W}).to(gpu(c)), mine = Tensor::full({n}, NAN).to(gpu(c));
  c.reduce_scatter(send.raw_data(), mine.raw_data(), n, Elem::F32, ReduceOp::Sum);
  const std::vector<float> got = mine.to_vector<float>();
  for (int64_t i = 0; i < n; ++i) {
    double expect = 0;
    for (int r = 0; r < W; ++r) expect += value(r, R * n + i);
    ASSERT_FLOAT_EQ(got[i], expect) << i;
  }
  Tensor all = Tensor::full({n * W}, NAN).to(gpu(c));
  c.all_gather(mine.raw_data(), all.raw_data(), n, Elem::F32);
  const std::vector<float> gathered = all.to_vector<float>();
  for (int64_t i = 0; i < n; ++i) ASSERT_FLOAT_EQ(gathered[R * n + i], got[i]);
  Tensor b = (R == 0 ? Tensor::from_vector(std::vector<float>{4.f, 5.f}, {2}) : Tensor::full({2}, NAN)).to(gpu(c));
  c.broadcast(b, 0);
  EXPECT_EQ(b.to_vector<float>(), (std::vector<float>{4.f, 5.f}));
  // Host buffers go over MPI on the same communicator.
  EXPECT_EQ(c.all_reduce_value<int64_t>(1, ReduceOp::Sum), W);
  c.barrier();
#endif
}

#ifdef LLM_HAVE_NCCL
// Training on the GPU as the trainer does it (engine/train/trainer.cpp, training_step), three ways
// from the same initial weights on the same micro-batches: plain AdamW, DataParallel (the gradients
// of the last micro-batch's backward packed into device buckets and all-reduced while backward runs)
// and ZeRO-1 (reduce-scatter, AdamW on the shard, all-gather). Every rank trains on the same batches,
// so the average over ranks is the local gradient and all three must take the same steps, within
// 1e-6. At world 1 they should match bit for bit: an average of one is exact, every kernel here is
// deterministic, and ZeRO's shard is then every parameter whole, its norm summed over the same
// pieces in the same order as grad_norm's. The test prints the largest difference it saw.
struct GpuRun {
  std::unique_ptr<models::CausalLM> model;
  std::vector<double> losses, norms;
};

models::ModelConfig small_llama() {
  models::ModelConfig c;
  c.arch = models::Arch::Llama;
  c.vocab_size = 131;
  c.max_seq_len = 32;
  c.dim = 128;
  c.n_layers = 2;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.hidden_dim = 200;
  c.tie_embeddings = false;
  return c;
}

constexpr float kLr = 3e-3f, kClip = 0.5f;  // a clip the gradient norm exceeds: the norm is used
constexpr int kSteps = 4;

// Forward and backward over the micro-batches (each loss scaled by 1/count, gradients accumulated);
// `before_last_backward` runs just before the backward that completes the gradients.
double accumulate(models::CausalLM& model, const std::vector<std::pair<Tensor, Tensor>>& micro,
                  const std::function<void()>& before_last_backward) {
  double loss_sum = 0;
  for (size_t i = 0; i < micro.size(); ++i) {
    const Tensor loss = ops::cross_entropy(model.forward(micro[i].first), micro[i].second);
    loss_sum += loss.item();
    if (i + 1 == micro.size()) before_last_backward();
    ops::scale(loss, 1.f / static_cast<float>(micro.size())).backward();
  }
  return loss_sum / static_cast<double>(micro.size());
}

// "" when got equals want within tol (max_rel_error), else where and how they differ.
std::string difference(const std::vector<float>& got, const std::vector<float>& want, double tol) {
  const double err = testing::max_rel_error(got, want);
  if (err <= tol) return "";
  std::ostringstream out;
  out << "max relative error " << err << " (tolerance " << tol << ")";
  for (size_t i = 0; i < want.size() && i < got.size(); ++i)
    if (got[i] != want[i]) {
      out << "; first difference at [" << i << "]: got " << got[i] << ", want " << want[i];
      break;
    }
  return out.str();
}

void expect_gpu_training_equivalence() {
  // The hand-written GEMM for every run (kernels.matmul: auto could settle on another kernel per shape).
  ops::set_matmul_backend(ops::MatmulBackend::kNative);
  Communicator& c = nccl();
  const Device device = gpu(c);
  const models::ModelConfig config = small_llama();
  const int64_t B = 2, T = 31;
  std::vector<std::pair<Tensor, Tensor>> micro;  // two micro-batches per step: accumulation composes
  for (uint64_t seed : {11, 12}) {
    const std::vector<int32_t> tok = testing::random_ints(static_cast<size_t>(B * (T + 1)), seed, 0, 131);
    std::vector<int32_t> in, out;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t) {
        in.push_back(tok[size_t(b * (T + 1) + t)]);
        out.push_back(tok[size_t(b * (T + 1) + t + 1)]);
      }
    micro.emplace_back(Tensor::from_vector(in, Shape{B, T}).to(device), Tensor::from_vector(out, Shape{B, T}).to(device));
  }
  optim::AdamWConfig oc;
  oc.weight_decay = 0.1f;
  auto make = [&] {
    GpuRun r;
    r.model = models::make_model(config, 1234);
    r.model->to(device);
    r.model->set_activation_dtype(DType::BF16);
    return r;
  };

  GpuRun plain = make(), dp_run = make(), zero_run = make();
  optim::AdamW plain_opt(plain.model->named_parameters(), oc), dp_opt(dp_run.model->named_parameters(), oc);
  DataParallel dp(c, dp_run.model->named_parameters(), 0.25);  // about 64k floats a bucket: several buckets
  ASSERT_GE(dp.num_buckets(), 2) << "the model should span several 0.25 MB buckets";
  optim::ZeroAdamW zero(zero_run.model->named_parameters(), oc, c);
  for (int step = 0; step < kSteps; ++step) {
    plain_opt.zero_grad();
    plain.losses.push_back(accumulate(*plain.model, micro, [] {}));
    plain.norms.push_back(optim::grad_norm(plain.model->parameters()));
    plain_opt.step(kLr, optim::clip_scale(plain.norms.back(), kClip));

    dp_opt.zero_grad();
    dp_run.losses.push_back(accumulate(*dp_run.model, micro, [&] { dp.sync_next_backward(); }));
    dp.finish();
    dp_run.norms.push_back(optim::grad_norm(dp_run.model->parameters()));
    dp_opt.step(kLr, optim::clip_scale(dp_run.norms.back(), kClip));

    zero.zero_grad();
    zero_run.losses.push_back(accumulate(*zero_run.model, micro, [] {}));
    zero_run.norms.push_back(zero.sync_gradients());
    zero.step(kLr, optim::clip_scale(zero_run.norms.back(), kClip));
  }
  ASSERT_GT(plain.norms.front(), kClip) << "the clip should be active";
  const double tol = 1e-6;
  const auto want = plain.model->named_parameters();
  for (const auto* run : {&dp_run, &zero_run}) {
    double worst = 0;  // printed: whether the match was bit for bit shows in the one GPU run
    for (size_t k = 0; k < want.size(); ++k)
      worst = std::max(worst, testing::max_rel_error(run->model->named_parameters()[k].second.to_vector<float>(),
                                                     want[k].second.to_vector<float>()));
    std::printf("%s: largest relative parameter difference from plain training after %d steps: %.3g\n",
                run == &dp_run ? "DataParallel" : "ZeRO-1", kSteps, worst);
    const std::string what = std::string(run == &dp_run ? "DataParallel" : "ZeRO-1") + " on " + device.str() + ", world " +
                             std::to_string(c.world_size());
    std::string steps;
    for (int s = 0; s < kSteps; ++s) {
      char line[160];
      std::snprintf(line, sizeof(line), "\n  step %d: loss %.9g (plain %.9g), norm %.9g (plain %.9g)", s + 1,
                    run->losses[size_t(s)], plain.losses[size_t(s)], run->norms[size_t(s)], plain.norms[size_t(s)]);
      steps += line;
    }
    for (int s = 0; s < kSteps; ++s) {
      EXPECT_LE(std::fabs(run->losses[size_t(s)] - plain.losses[size_t(s)]), tol * plain.losses[size_t(s)])
          << what << ": loss differs first at step " << s + 1 << steps;
      EXPECT_LE(std::fabs(run->norms[size_t(s)] - plain.norms[size_t(s)]), tol * plain.norms[size_t(s)])
          << what << ": gradient norm differs first at step " << s + 1 << steps;
    }
    const auto got = run->model->named_parameters();
    for (size_t k = 0; k < want.size(); ++k) {
      const std::string diff = difference(got[k].second.to_vector<float>(), want[k].second.to_vector<float>(), tol);
      EXPECT_EQ(diff, "") << what << ": parameter " << want[k].first << " after " << kSteps << " steps" << steps;
    }
  }
  // ZeRO's checkpoint state comes to the host, in AdamW's layout: the plain run's moments.
  const optim::AdamW::State z = zero.state(), a = plain_opt.state();
  ASSERT_EQ(z.m.size(), a.m.size());
  EXPECT_EQ(z.step, kSteps);
  for (size_t k = 0; k < a.m.size(); ++k) {
    EXPECT_TRUE(z.m[k].second.device().is_cpu()) << z.m[k].first;
    EXPECT_EQ(difference(z.m[k].second.to_vector<float>(), a.m[k].second.to_vector<float>(), tol), "")
        << "ZeRO-1 first moment of " << a.m[k].first;
    EXPECT_EQ(difference(z.v[k].second.to_vector<float>(), a.v[k].second.to_vector<float>(), tol), "")
        << "ZeRO-1 second moment of " << a.v[k].first;
  }
  // And set_state puts this rank's shard back on the device: the state round-trips.
  optim::ZeroAdamW restored(make().model->named_parameters(), oc, c);
  restored.set_state(z);
  const optim::AdamW::State back = restored.state();
  for (size_t k = 0; k < z.m.size(); ++k)
    EXPECT_EQ(back.v[k].second.to_vector<float>(), z.v[k].second.to_vector<float>()) << "restored " << z.v[k].first;
}
#endif

TEST(NcclTraining, DataParallelAndZeroOnGpuMatchPlainTraining) {
#ifndef LLM_HAVE_NCCL
  GTEST_SKIP() << "built without NCCL (needs CUDA, NCCL and MPI)";
#else
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  expect_gpu_training_equivalence();
#endif
}

}  // namespace
}  // namespace llm::dist
