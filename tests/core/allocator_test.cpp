#include "engine/core/allocator.h"

#include "engine/core/tensor.h"
#include "engine/ops/ops.h"
#include "tests/common/gradcheck.h"
#include "tests/common/testing.h"

namespace llm {
namespace {

TEST(Allocator, SizeClasses) {
  EXPECT_EQ(CachingAllocator::round_size(1), 64u);
  EXPECT_EQ(CachingAllocator::round_size(64), 64u);
  EXPECT_EQ(CachingAllocator::round_size(65), 128u);
  EXPECT_EQ(CachingAllocator::round_size(4096), 4096u);
  EXPECT_EQ(CachingAllocator::round_size(4097), 4608u);  // steps of 4096/8 above 4 KiB
  for (size_t n : {5000u, 100000u, 3000000u, 123456789u}) {
    const size_t r = CachingAllocator::round_size(n);
    EXPECT_GE(r, n);
    EXPECT_LE(r, n + n / 8 + 64);  // at most 12.5% waste
    EXPECT_EQ(r % 64, 0u);
  }
}

TEST(Allocator, FreedBlocksAreReused) {
  CachingAllocator& a = allocator_for(Device::cpu());
  void* p = a.allocate(1000);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % kCpuAlignment, 0u);
  a.deallocate(p, 1000);
  const AllocatorStats before = a.stats();
  void* q = a.allocate(990);  // same size class
  EXPECT_EQ(q, p);
  const AllocatorStats after = a.stats();
  EXPECT_EQ(after.system_allocs, before.system_allocs);
  EXPECT_EQ(after.cache_hits, before.cache_hits + 1);
  a.deallocate(q, 990);
}

TEST(Allocator, TrainingStepAllocatesFromTheSystemOnlyOnce) {
  // A small MLP step (forward, backward, gradient reset) repeated: after the first step every
  // allocation must come from the cache.
  Tensor w1 = testing::param(Shape{16, 8}, 1), w2 = testing::param(Shape{4, 16}, 2);
  Tensor x = Tensor::from_vector(testing::random_floats(5 * 8, 3), Shape{5, 8});
  Tensor t = Tensor::from_vector(std::vector<int32_t>{0, 1, 2, 3, 1}, Shape{5});
  auto step = [&] {
    w1.zero_grad();
    w2.zero_grad();
    ops::cross_entropy(ops::linear(ops::gelu(ops::linear(x, w1)), w2), t).backward();
  };
  step();
  step();
  const uint64_t before = allocator_for(Device::cpu()).stats().system_allocs;
  for (int i = 0; i < 3; ++i) step();
  EXPECT_EQ(allocator_for(Device::cpu()).stats().system_allocs, before);
}

TEST(Allocator, ReleaseCached) {
  CachingAllocator& a = allocator_for(Device::cpu());
  a.deallocate(a.allocate(1 << 20), 1 << 20);
  EXPECT_GT(a.stats().bytes_cached, 0u);
  a.release_cached();
  EXPECT_EQ(a.stats().bytes_cached, 0u);
}

}  // namespace
}  // namespace llm
