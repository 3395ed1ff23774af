// KV-cache decoding on CUDA computes what the full forward on CUDA computes: small models with random
// weights (LLaMA with GQA and head dim 64, the tensor-core attention in the full forward; GPT-2 with
// head dim 32, the simple one; a sliding window), weights and activations in f32 and in bf16, rows of
// different lengths prefilled in one padded batch, then decoded one token per step. The two paths
// round differently (the full forward's attention reads bf16 q, k, v; the cached one reads the cache's
// dtype; different summation orders), so logits agree to 2e-2 of their largest magnitude. Measured on
// the CPU with these models: rounding the weights to bf16 moves the last logits by 0.25% (LLaMA) and
// 0.15% (GPT-2); leaving out one cached token (what a wrong slot, position or mask does) by 20% and 56%.
#include <algorithm>
#include <string>
#include <vector>

#include "engine/models/transformer.h"
#include "tests/cuda/compare.h"
#include "tests/cuda/cuda_testing.h"

namespace llm::models {
namespace {

ModelConfig tiny(Arch arch, int64_t window) {
  ModelConfig c;
  c.arch = arch;
  c.vocab_size = 97;
  c.max_seq_len = 40;
  c.dim = 128;
  c.n_layers = 2;
  c.n_heads = arch == Arch::GPT2 ? 4 : 2;
  c.n_kv_heads = arch == Arch::GPT2 ? 4 : 1;
  c.hidden_dim = 256;
  c.tie_embeddings = arch == Arch::GPT2;
  c.sliding_window = window;
  return c;
}

void expect_cache_matches_full_forward(Arch arch, int64_t window, DType dtype) {
  auto model = make_model(tiny(arch, window), 5);
  model->to(Device::cuda(0));
  model->to(dtype);
  model->set_activation_dtype(dtype);
  NoGradGuard no_grad;
  const int64_t V = model->config().vocab_size;
  std::vector<std::vector<int32_t>> seqs = {testing::random_ints(7, 1, 0, int32_t(V)),
                                            testing::random_ints(13, 2, 0, int32_t(V)),
                                            testing::random_ints(1, 3, 0, int32_t(V))};
  KVCache cache = model->make_cache(3, 30);
  ASSERT_EQ(cache.k[0].dtype(), dtype);
  ASSERT_TRUE(cache.k[0].device().is_cuda());
  const int64_t T = 13;
  std::vector<int32_t> ids(3 * T, 0), n_new;
  for (int b = 0; b < 3; ++b) {
    std::copy(seqs[b].begin(), seqs[b].end(), ids.begin() + b * T);
    n_new.push_back(static_cast<int32_t>(seqs[b].size()));
  }
  Tensor logits = model->forward_cached(Tensor::from_vector(ids, Shape{3, T}), n_new, cache);
  const std::string what = std::string(model->config().arch_name()) + " " + dtype_name(dtype) + " window " +
                           std::to_string(window);
  for (int step = 0; step < 8; ++step) {
    ASSERT_TRUE(logits.device().is_cuda()) << what;
    const std::vector<float> got = logits.to_vector<float>();
    std::vector<int32_t> next(3), ones(3, 1);
    for (int b = 0; b < 3; ++b) {
      const int64_t len = static_cast<int64_t>(seqs[b].size());
      const std::vector<float> full =
          model->forward(Tensor::from_vector(seqs[b], Shape{1, len}).to(Device::cuda(0))).to_vector<float>();
      const std::vector<float> row(got.begin() + b * V, got.begin() + (b + 1) * V);
      EXPECT_TRUE(testing::close_to(what + ", row " + std::to_string(b) + " (" + std::to_string(len) +
                                        " tokens), step " + std::to_string(step) + ": logit index",
                                    row, std::vector<float>(full.end() - V, full.end()), 2e-2));
      EXPECT_EQ(cache.length[b], static_cast<int32_t>(len)) << what;
      next[b] = static_cast<int32_t>((step * 7 + b * 11) % V);
      seqs[b].push_back(next[b]);
    }
    logits = model->forward_cached(Tensor::from_vector(next, Shape{3, 1}), ones, cache);
  }
}

TEST(CudaKVCache, LlamaMatchesFullForward) {
  LLM_SKIP_WITHOUT_GPU();
  expect_cache_matches_full_forward(Arch::Llama, 0, DType::F32);
  expect_cache_matches_full_forward(Arch::Llama, 0, DType::BF16);
}

TEST(CudaKVCache, LlamaSlidingWindowMatchesFullForward) {
  LLM_SKIP_WITHOUT_GPU();
  expect_cache_matches_full_forward(Arch::Llama, 5, DType::BF16);
}

TEST(CudaKVCache, Gpt2MatchesFullForward) {
  LLM_SKIP_WITHOUT_GPU();
  expect_cache_matches_full_forward(Arch::GPT2, 0, DType::F32);
  expect_cache_matches_full_forward(Arch::GPT2, 0, DType::BF16);
}

}  // namespace
}  // namespace llm::models
