#include "engine/core/tensor.h"

#include <cmath>
#include <cstring>

#include "engine/ops/ops.h"
#include "tests/common/testing.h"

namespace llm {
namespace {

using testing::random_floats;

Tensor arange_f32(const Shape& shape) {
  std::vector<float> v(shape.numel());
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i);
  return Tensor::from_vector(v, shape);
}

TEST(Tensor, CreationShapesAndAlignment) {
  Tensor t = Tensor::zeros(Shape{2, 3, 4});
  EXPECT_EQ(t.dim(), 3);
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.size(-1), 4);
  EXPECT_EQ(t.strides(), (Shape{12, 4, 1}));
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw_data()) % kCpuAlignment, 0u);
  for (float v : t.to_vector<float>()) EXPECT_EQ(v, 0.f);
  EXPECT_EQ(Tensor::full(Shape{5}, 2.5).to_vector<float>(), std::vector<float>(5, 2.5f));
  EXPECT_EQ(Tensor::scalar(3.f).item(), 3.f);
  Tensor five = Tensor::zeros(Shape{1, 2, 1, 3, 2});
  EXPECT_EQ(five.dim(), 5);
  EXPECT_THROW(Tensor::zeros(Shape{1, 1, 1, 1, 1, 1}), Error);
}

TEST(Tensor, AllDtypesRoundTrip) {
  const std::vector<float> v{0.f, 1.f, -2.f, 3.5f, 1000.f};
  Tensor f = Tensor::from_vector(v, Shape{5});
  EXPECT_EQ(f.to(DType::BF16).to(DType::F32).to_vector<float>(), v);  // all exactly representable
  EXPECT_EQ(f.to(DType::F16).to(DType::F32).to_vector<float>(), v);
  EXPECT_EQ(f.to(DType::I32).to_vector<int32_t>(), (std::vector<int32_t>{0, 1, -2, 4, 1000}));  // rounds
  EXPECT_EQ(f.to(DType::I64).to_vector<int64_t>(), (std::vector<int64_t>{0, 1, -2, 4, 1000}));
  Tensor ids = Tensor::from_vector(std::vector<uint16_t>{0, 50256, 65535}, Shape{3});
  EXPECT_EQ(ids.dtype(), DType::U16);
  EXPECT_EQ(ids.to(DType::I32).to_vector<int32_t>(), (std::vector<int32_t>{0, 50256, 65535}));
  EXPECT_EQ(ids.to(DType::U32).to(DType::I64).to_vector<int64_t>(), (std::vector<int64_t>{0, 50256, 65535}));
  EXPECT_EQ(dtype_size(DType::BF16), 2u);
  EXPECT_THROW(f.data<int32_t>(), Error);
}

TEST(Tensor, ViewsShareStorage) {
  Tensor t = arange_f32(Shape{2, 3, 4});
  Tensor v = t.view(Shape{6, -1});
  EXPECT_EQ(v.shape(), (Shape{6, 4}));
  EXPECT_EQ(v.storage(), t.storage());
  Tensor tr = t.transpose(0, 2);  // [4, 3, 2]
  EXPECT_EQ(tr.shape(), (Shape{4, 3, 2}));
  EXPECT_FALSE(tr.is_contiguous());
  EXPECT_EQ(tr.storage(), t.storage());
  // tr[i][j][k] == t[k][j][i]
  const std::vector<float> trv = tr.to_vector<float>();
  const std::vector<float> tv = t.to_vector<float>();
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 2; ++k) EXPECT_EQ(trv[(i * 3 + j) * 2 + k], tv[(k * 3 + j) * 4 + i]);
  Tensor c = tr.contiguous();
  EXPECT_TRUE(c.is_contiguous());
  EXPECT_NE(c.storage(), t.storage());
  EXPECT_EQ(c.to_vector<float>(), trv);
  EXPECT_THROW(tr.view(Shape{24}), Error);  // not contiguous: view refuses, reshape copies
  EXPECT_EQ(tr.reshape(Shape{24}).to_vector<float>(), trv);
}

TEST(Tensor, SliceSelectSqueezePermute) {
  Tensor t = arange_f32(Shape{4, 5});
  Tensor s = t.slice(1, 1, 4);  // columns 1..3
  EXPECT_EQ(s.shape(), (Shape{4, 3}));
  EXPECT_EQ(s.to_vector<float>(), (std::vector<float>{1, 2, 3, 6, 7, 8, 11, 12, 13, 16, 17, 18}));
  EXPECT_EQ(t.select(0, -1).to_vector<float>(), (std::vector<float>{15, 16, 17, 18, 19}));
  EXPECT_EQ(t.unsqueeze(1).shape(), (Shape{4, 1, 5}));
  EXPECT_EQ(t.unsqueeze(-1).shape(), (Shape{4, 5, 1}));
  EXPECT_EQ(t.unsqueeze(1).squeeze(1).shape(), (Shape{4, 5}));
  EXPECT_THROW(t.squeeze(0), Error);
  EXPECT_THROW(t.slice(0, 2, 7), Error);
  Tensor p = arange_f32(Shape{2, 3, 4}).permute({2, 0, 1});
  EXPECT_EQ(p.shape(), (Shape{4, 2, 3}));
  EXPECT_EQ(p.contiguous().to_vector<float>()[1], 4.f);  // p[0][0][1] = t[0][1][0]
  Tensor cat = ops::cat({arange_f32(Shape{2, 2}), arange_f32(Shape{2, 3})}, 1);
  EXPECT_EQ(cat.to_vector<float>(), (std::vector<float>{0, 1, 0, 1, 2, 2, 3, 3, 4, 5}));
}

TEST(Tensor, InPlaceWritesThroughViews) {
  Tensor t = Tensor::zeros(Shape{3, 4});
  t.slice(1, 1, 3).fill_(7.0);
  EXPECT_EQ(t.to_vector<float>(), (std::vector<float>{0, 7, 7, 0, 0, 7, 7, 0, 0, 7, 7, 0}));
  t.transpose(0, 1).select(0, 0).copy_(Tensor::full(Shape{3}, 1.0));
  EXPECT_EQ(t.to_vector<float>()[0], 1.f);
  EXPECT_EQ(t.to_vector<float>()[4], 1.f);
  const uint64_t before = t.storage()->version();
  t.add_(Tensor::ones(Shape{3, 4}), 2.f).mul_(0.5f);
  EXPECT_EQ(t.to_vector<float>()[1], 4.5f);
  EXPECT_GT(t.storage()->version(), before);
  Tensor i = Tensor::zeros(Shape{3}, DType::I64);
  i.fill_(9007199254740993.0);  // beyond float precision: must stay exact through the int path
  EXPECT_EQ(i.to_vector<int64_t>()[2], 9007199254740992LL);  // the double literal itself rounds to 2^53
}

TEST(Tensor, Generator) {
  Generator a(42), b(42), c(43);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(a.next_u64(), b.next_u64());
  EXPECT_NE(a.next_u64(), c.next_u64());
  Generator g(1);
  Tensor n = Tensor::randn(Shape{20000}, g);
  const std::vector<float> v = n.to_vector<float>();
  double mean = 0, var = 0;
  for (float x : v) mean += x;
  mean /= v.size();
  for (float x : v) var += (x - mean) * (x - mean);
  var /= v.size();
  EXPECT_NEAR(mean, 0.0, 0.03);
  EXPECT_NEAR(var, 1.0, 0.05);
  // Saving and restoring the state replays the same stream, including a pending Box-Muller value.
  g.normal();
  const std::vector<uint64_t> st = g.state();
  const float x1 = g.normal(), x2 = g.normal();
  g.set_state(st);
  EXPECT_EQ(g.normal(), x1);
  EXPECT_EQ(g.normal(), x2);
  Tensor u = Tensor::rand(Shape{1000}, g, 2.f, 3.f);
  for (float x : u.to_vector<float>()) EXPECT_TRUE(x >= 2.f && x < 3.f);
}

TEST(Tensor, FromBlobKeepsOwnerAlive) {
  auto owner = std::make_shared<std::vector<float>>(std::vector<float>{1, 2, 3, 4});
  std::weak_ptr<std::vector<float>> watch = owner;
  {
    Tensor t = Tensor::from_blob(owner->data(), Shape{2, 2}, DType::F32, Device::cpu(), owner);
    owner.reset();
    EXPECT_FALSE(watch.expired());
    EXPECT_EQ(t.to_vector<float>(), (std::vector<float>{1, 2, 3, 4}));
  }
  EXPECT_TRUE(watch.expired());
}

TEST(Tensor, ClearErrors) {
  Tensor undefined;
  EXPECT_THROW(undefined.shape(), Error);
  try {
    ops::add(Tensor::zeros(Shape{2, 3}), Tensor::zeros(Shape{4}));
    FAIL() << "expected a shape error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("add: shapes [2, 3] and [4]"), std::string::npos) << e.what();
  }
  try {
    ops::matmul(Tensor::zeros(Shape{2, 3}), Tensor::zeros(Shape{2, 3}));
    FAIL() << "expected a shape error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("matmul: inner dimensions differ"), std::string::npos) << e.what();
  }
  try {
    ops::gelu(Tensor::zeros(Shape{2}, DType::I32));
    FAIL() << "expected a dtype error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("must be f32, got i32[2]"), std::string::npos) << e.what();
  }
  if (cuda_device_count() == 0) {
    EXPECT_THROW(Tensor::zeros(Shape{2}, DType::F32, Device::cuda(0)), Error);
  }
  EXPECT_THROW(ops::embedding(Tensor::from_vector(std::vector<int32_t>{5}, Shape{1}), Tensor::zeros(Shape{5, 2})), Error);
  EXPECT_THROW(ops::cross_entropy(Tensor::zeros(Shape{2, 5}), Tensor::from_vector(std::vector<int32_t>{1, 5}, Shape{2})),
               Error);
}

TEST(Tensor, CudaTensorsNeedAGpu) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device on this machine: CPU<->GPU copies not exercised";
  Tensor h = Tensor::from_vector(random_floats(1000, 3), Shape{10, 100});
  Tensor d = h.to(Device::cuda(0));
  EXPECT_TRUE(d.device().is_cuda());
  EXPECT_EQ(d.to(Device::cpu()).to_vector<float>(), h.to_vector<float>());
  EXPECT_TRUE(ops::gelu(d).device().is_cuda());  // ops run where their inputs are
}

}  // namespace
}  // namespace llm
