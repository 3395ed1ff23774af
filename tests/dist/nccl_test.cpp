// The NCCL communicator on GPU buffers, in whatever world this process is in (scripts/gpu_check.sh
// runs it under mpirun -np 1). Skips, saying why, without NCCL in the build or without a GPU.
#include <gtest/gtest.h>

#include <cmath>

#include "engine/core/allocator.h"
#include "engine/dist/communicator.h"

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

}  // namespace
}  // namespace llm::dist
