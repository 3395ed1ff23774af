// Collectives, DataParallel and ZeRO-1 on whatever world this process is in: world 1 (the single
// backend) when run directly, world 2 over MPI under the ctest entry dist_communicator_mpi
// (mpirun -np 2). Every expected value is computed from the rank formula, for any world size.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "engine/dist/communicator.h"
#include "engine/dist/data_parallel.h"
#include "engine/ops/ops.h"
#include "optim/zero.h"
#include "tests/common/testing.h"

namespace llm::dist {
namespace {

Communicator& world() {
  static std::unique_ptr<Communicator> comm = make_communicator("auto", 60);
  return *comm;
}

// Rank r's contribution to element i: distinct per rank and element, exact in float.
float value(int r, int64_t i) { return static_cast<float>((r + 1) * 0.5 + (i % 97) * 0.25); }

TEST(Communicator, ReportsTheLaunch) {
  Communicator& c = world();
  const LaunchInfo launch = detect_launch();
  EXPECT_EQ(c.world_size(), launch.world_size);
  EXPECT_EQ(c.rank(), launch.rank);
  EXPECT_GE(c.local_rank(), 0);
  EXPECT_EQ(c.backend(), launch.launched ? "mpi" : "single");
  std::printf("rank %d of %d over %s\n", c.rank(), c.world_size(), c.backend().c_str());
}

TEST(Communicator, AllReduceSumAndAverageOnAwkwardSizes) {
  Communicator& c = world();
  const int W = c.world_size();
  for (int64_t n : {1, 3, 17, 257, 65537}) {
    std::vector<float> sum(static_cast<size_t>(n)), avg(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) sum[i] = avg[i] = value(c.rank(), i);
    c.all_reduce(sum.data(), n, Elem::F32, ReduceOp::Sum);
    c.all_reduce(avg.data(), n, Elem::F32, ReduceOp::Average);
    for (int64_t i = 0; i < n; ++i) {
      double expect = 0;
      for (int r = 0; r < W; ++r) expect += value(r, i);
      ASSERT_FLOAT_EQ(sum[i], expect) << "n=" << n << " i=" << i;
      ASSERT_FLOAT_EQ(avg[i], expect / W) << "n=" << n << " i=" << i;
    }
  }
  const int64_t ints = c.all_reduce_value<int64_t>(int64_t{1} << 40 | c.rank(), ReduceOp::Sum);
  EXPECT_EQ(ints, W * (int64_t{1} << 40) + W * (W - 1) / 2);
  EXPECT_EQ(c.all_reduce_value<int32_t>(c.rank() + 1, ReduceOp::Sum), W * (W + 1) / 2);
  EXPECT_DOUBLE_EQ(c.all_reduce_value<double>(0.1 * (c.rank() + 1), ReduceOp::Average), 0.1 * (W + 1) / 2);
}

TEST(Communicator, AsyncAllReducesCompleteInOrder) {
  Communicator& c = world();
  std::vector<float> a(1000, static_cast<float>(c.rank())), b(33, 1.f);
  auto ra = c.all_reduce_async(a.data(), 1000, Elem::F32, ReduceOp::Sum);
  auto rb = c.all_reduce_async(b.data(), 33, Elem::F32, ReduceOp::Average);
  rb->wait();
  ra->wait();
  const int W = c.world_size();
  for (float x : a) ASSERT_FLOAT_EQ(x, W * (W - 1) / 2.f);
  for (float x : b) ASSERT_FLOAT_EQ(x, 1.f);
}

TEST(Communicator, ReduceScatterAllGatherBroadcastBarrier) {
  Communicator& c = world();
  const int W = c.world_size(), R = c.rank();
  const int64_t n = 37;  // per rank
  std::vector<float> send(static_cast<size_t>(n * W)), mine(static_cast<size_t>(n), NAN);
  for (int64_t i = 0; i < n * W; ++i) send[i] = value(R, i);
  c.reduce_scatter(send.data(), mine.data(), n, Elem::F32, ReduceOp::Average);
  for (int64_t i = 0; i < n; ++i) {
    double expect = 0;
    for (int r = 0; r < W; ++r) expect += value(r, R * n + i);
    ASSERT_FLOAT_EQ(mine[i], expect / W) << i;
  }
  std::vector<int32_t> piece(static_cast<size_t>(n)), all(static_cast<size_t>(n * W), -1);
  for (int64_t i = 0; i < n; ++i) piece[i] = static_cast<int32_t>(1000 * R + i);
  c.all_gather(piece.data(), all.data(), n, Elem::I32);
  for (int r = 0; r < W; ++r)
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(all[r * n + i], 1000 * r + i);

  const int root = W - 1;
  Tensor t = R == root ? Tensor::from_vector(std::vector<float>{1.5f, -2.f, 3.25f}, {3}) : Tensor::full({3}, NAN);
  c.broadcast(t, root);
  EXPECT_EQ(t.to_vector<float>(), (std::vector<float>{1.5f, -2.f, 3.25f}));
  std::string text = R == 0 ? "from rank 0" : "";
  c.broadcast_vector(text, 0);
  EXPECT_EQ(text, "from rank 0");
  c.barrier();
}

// Parameters whose gradient on rank r is (r + 1) * x: the average is (W + 1) / 2 * x.
struct Params {
  std::vector<std::pair<std::string, Tensor>> named;
  explicit Params(uint64_t seed) {
    Generator gen(seed);
    for (const auto& [name, shape] : std::vector<std::pair<std::string, Shape>>{
             {"a", {7, 5}}, {"b", {5}}, {"c", {300, 40}}, {"unused", {3}}, {"d", {17, 3}}})
      named.emplace_back(name, Tensor::randn(shape, gen).set_requires_grad(true));
  }
};

Tensor rank_loss(const Params& p, int rank, int skip) {
  // sum over used parameters of (rank + 1) * <w, w> / 2  =>  grad = (rank + 1) * w; `skip` unused.
  Tensor total;
  for (size_t k = 0; k < p.named.size(); ++k) {
    if (static_cast<int>(k) == skip) continue;
    const Tensor& w = p.named[k].second;
    Tensor term = ops::scale(ops::sum(ops::mul(w, w)), 0.5f * static_cast<float>(rank + 1));
    total = total.defined() ? ops::add(total, term) : term;
  }
  return total;
}

TEST(DataParallel, AveragesGradientsInBucketsDuringBackward) {
  Communicator& c = world();
  const int W = c.world_size();
  for (double bucket_mb : {1e-4, 0.01, 25.0}) {  // many buckets, a few, one
    Params p(7);
    DataParallel dp(c, p.named, bucket_mb);
    if (W > 1) {
      EXPECT_GE(dp.num_buckets(), bucket_mb < 1 ? 2 : 1);
    }
    for (int step = 0; step < 2; ++step) {
      for (auto& [n, w] : p.named) w.zero_grad();
      // Two micro-batches: only the second backward syncs (its hooks see the accumulated gradient).
      rank_loss(p, c.rank(), 3).backward();
      dp.sync_next_backward();
      rank_loss(p, c.rank(), 3).backward();
      dp.finish();
      const float factor = 2.f * (W + 1) / 2.f;
      for (size_t k = 0; k < p.named.size(); ++k) {
        const Tensor& w = p.named[k].second;
        const std::vector<float> wv = w.to_vector<float>();
        if (k == 3 && c.backend() == "single") {
          EXPECT_FALSE(w.grad().defined());  // one process leaves gradients alone
          continue;
        }
        const std::vector<float> g = w.grad().to_vector<float>();
        for (size_t i = 0; i < wv.size(); ++i)
          ASSERT_NEAR(g[i], k == 3 ? 0.f : factor * wv[i], 1e-5f * (1 + std::fabs(factor * wv[i])))
              << p.named[k].first << "[" << i << "] bucket_mb " << bucket_mb;
      }
    }
  }
}

TEST(DataParallel, MisuseIsAClearError) {
  Communicator& c = world();
  Params p(3);
  DataParallel dp(c, p.named, 25);
  if (c.backend() == "single") GTEST_SKIP() << "one process: DataParallel does nothing, so there is nothing to misuse";
  EXPECT_NE(testing::error_of([&] { dp.finish(); }).find("without sync_next_backward"), std::string::npos);
}

TEST(ZeroAdamW, MatchesAdamWOnAveragedGradientsAndGathersItsState) {
  Communicator& c = world();
  const int W = c.world_size();
  Params plain(11), sharded(11);
  optim::AdamWConfig cfg;
  cfg.weight_decay = 0.1f;
  optim::AdamW adamw(plain.named, cfg);
  optim::ZeroAdamW zero(sharded.named, cfg, c);
  int64_t total = 0;
  for (auto& [n, w] : plain.named) total += w.numel();
  EXPECT_EQ(zero.shard_size(), (total + W - 1) / W);
  for (int step = 0; step < 3; ++step) {
    for (Params* p : {&plain, &sharded}) {
      for (auto& [n, w] : p->named) w.zero_grad();
      rank_loss(*p, c.rank(), 3).backward();
    }
    // The reference: every gradient averaged by hand, the norm of the average, plain AdamW.
    double sq = 0;
    for (auto& [n, w] : plain.named) {
      Tensor g = w.grad();
      if (!g.defined()) continue;
      c.all_reduce(g, ReduceOp::Average);
      for (float x : g.to_vector<float>()) sq += static_cast<double>(x) * x;
    }
    const double norm = zero.sync_gradients();
    EXPECT_NEAR(norm, std::sqrt(sq), 1e-6 * std::sqrt(sq));
    const float scale = optim::clip_scale(norm, 5.0);
    adamw.step(1e-2f, scale);
    zero.step(1e-2f, scale);
    for (size_t k = 0; k < plain.named.size(); ++k) {
      if (k == 3) continue;  // AdamW skips a parameter without gradient; ZeRO counts it as zero
      EXPECT_LT(testing::max_rel_error(sharded.named[k].second.to_vector<float>(), plain.named[k].second.to_vector<float>()),
                1e-6)
          << plain.named[k].first << " step " << step;
    }
  }
  const optim::AdamW::State a = adamw.state(), z = zero.state();
  EXPECT_EQ(z.step, 3);
  for (size_t k = 0; k < a.m.size(); ++k) {
    if (k == 3) continue;
    EXPECT_LT(testing::max_rel_error(z.m[k].second.to_vector<float>(), a.m[k].second.to_vector<float>()), 1e-6) << a.m[k].first;
    EXPECT_LT(testing::max_rel_error(z.v[k].second.to_vector<float>(), a.v[k].second.to_vector<float>()), 1e-6) << a.v[k].first;
  }
  // set_state keeps this rank's shard: a fresh ZeroAdamW given the full state gives it back.
  Params again(11);
  optim::ZeroAdamW restored(again.named, cfg, c);
  restored.set_state(z);
  const optim::AdamW::State back = restored.state();
  for (size_t k = 0; k < z.m.size(); ++k) EXPECT_EQ(back.m[k].second.to_vector<float>(), z.m[k].second.to_vector<float>());
}

TEST(MakeCommunicator, NamesWhatIsWrong) {
  EXPECT_EQ(testing::error_of([] { make_communicator("carrier-pigeon"); }),
            "unknown communicator backend 'carrier-pigeon' (expected auto, single, mpi or nccl)");
  EXPECT_NE(testing::error_of([] { make_communicator("auto", 0); }).find("dist.timeout_s: must be positive"),
            std::string::npos);
  EXPECT_EQ(testing::error_of([] { make_communicator("auto", 1e18); }), "dist.timeout_s: at most 1e9 seconds, got 1e+18");
#ifndef LLM_HAVE_NCCL
  EXPECT_NE(testing::error_of([] { make_communicator("nccl"); }).find("the nccl communicator is not built in"),
            std::string::npos);
#endif
}

}  // namespace
}  // namespace llm::dist
