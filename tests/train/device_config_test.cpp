// The recipe's device, precision and kernel choices: values, strict errors naming the key, the round
// trip through to_yaml, and a clear error for device: cuda where no GPU is visible.
#include <gtest/gtest.h>

#include <sstream>

#include "engine/core/allocator.h"
#include "engine/train/config.h"
#include "engine/train/trainer.h"
#include "tests/common/testing.h"

namespace llm::train {
namespace {
using testing::error_of;

TEST(DeviceConfig, DefaultsParseAndRoundTrip) {
  const TrainConfig d = parse_train_config("data: {train: x}", "x.yaml");
  EXPECT_EQ(d.device, "cpu");
  EXPECT_EQ(d.precision, "auto");
  EXPECT_FALSE(d.use_bf16());  // auto: fp32 on the CPU
  EXPECT_EQ(d.matmul, "auto");
  EXPECT_EQ(d.peak_tflops, 0.f);
  EXPECT_EQ(d.attention, "auto");
  const TrainConfig c = parse_train_config("data: {train: x}\ntrain: {device: cuda}\nkernels: {matmul: cublas, attention: simple}", "x.yaml",
                                           {"train.peak_tflops=500"});
  EXPECT_EQ(c.device, "cuda");
  EXPECT_TRUE(c.use_bf16());  // auto: bf16 on a GPU
  EXPECT_EQ(c.matmul, "cublas");
  EXPECT_FLOAT_EQ(c.peak_tflops, 500.f);
  const TrainConfig back = parse_train_config(to_yaml(c), "back.yaml");
  EXPECT_EQ(back.device, "cuda");
  EXPECT_EQ(back.precision, "auto");
  EXPECT_EQ(back.matmul, "cublas");
  EXPECT_EQ(back.attention, "simple");
  EXPECT_FLOAT_EQ(back.peak_tflops, 500.f);
  EXPECT_FALSE(parse_train_config("data: {train: x}\ntrain: {device: cuda, precision: fp32}", "x.yaml").use_bf16());
}

TEST(DeviceConfig, BadValuesNameTheKey) {
  auto parse = [](const std::string& yaml) { return error_of([&] { parse_train_config("data: {train: x}\n" + yaml, "x.yaml"); }); };
  EXPECT_EQ(parse("train: {device: gpu}"), "x.yaml: train.device: expected cpu or cuda, got \"gpu\"");
  EXPECT_EQ(parse("train: {precision: fp16}"), "x.yaml: train.precision: expected auto, fp32 or bf16, got \"fp16\"");
  EXPECT_EQ(parse("train: {precision: bf16}"),
            "x.yaml: train.precision: bf16 needs train.device: cuda (the CPU computes in fp32)");
  EXPECT_EQ(parse("train: {peak_tflops: -1}"), "x.yaml: train.peak_tflops: must be 0 (the default) or positive, got -1");
  EXPECT_EQ(parse("kernels: {matmul: blas}"), "x.yaml: kernels.matmul: expected auto, native, cublas or simple, got \"blas\"");
  EXPECT_EQ(parse("kernels: {attention: flash}"),
            "x.yaml: kernels.attention: expected auto, simple or tensor_core, got \"flash\"");
  EXPECT_EQ(parse("kernels: {norms: fast}"), "x.yaml: kernels.norms: unknown key");
  EXPECT_EQ(parse("train: {device: cuda}\ndist: {backend: mpi}"),
            "x.yaml: dist.backend: mpi averages CPU buffers; train.device: cuda needs nccl (or auto)");
  EXPECT_EQ(parse("dist: {backend: nccl}"),
            "x.yaml: dist.backend: nccl averages GPU buffers; it needs train.device: cuda (or dist.backend: auto)");
}

TEST(DeviceConfig, CudaWithoutAGpuIsOneClearError) {
  if (cuda_device_count() > 0) GTEST_SKIP() << "a GPU is visible: the error cannot happen here";
  const TrainConfig c = parse_train_config(
      "model: {arch: llama, vocab_size: 61, max_seq_len: 16, dim: 32, n_layers: 1, n_heads: 4, n_kv_heads: 2, hidden_dim: 40}\n"
      "data: {train: /nonexistent}\ntrain: {device: cuda, seq_len: 16}",
      "x.yaml");
  std::ostringstream log;
  EXPECT_EQ(error_of([&] { Trainer t(c, log); }),
            "x.yaml: train.device: cuda, but no CUDA device is visible (or this build has no CUDA backend)");
}

}  // namespace
}  // namespace llm::train
