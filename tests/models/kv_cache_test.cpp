// Generation with a KV cache must compute exactly what the full forward computes: prompts of
// different lengths prefilled in one padded batch, then decoded one token per step.
#include <functional>

#include "engine/models/transformer.h"
#include "kernels/cpu/attention.h"
#include "tests/common/testing.h"

namespace llm::models {
namespace {

ModelConfig tiny(Arch arch) {
  ModelConfig c;
  c.arch = arch;
  c.vocab_size = 53;
  c.max_seq_len = 32;
  c.dim = 24;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = arch == Arch::GPT2 ? 4 : 2;
  c.hidden_dim = arch == Arch::GPT2 ? 96 : 40;
  c.tie_embeddings = arch == Arch::GPT2;
  c.attention_bias = false;
  return c;
}

// Logits of the last token of `seq`, from the plain full forward.
std::vector<float> full_last_logits(CausalLM& m, const std::vector<int32_t>& seq) {
  const int64_t T = static_cast<int64_t>(seq.size()), V = m.config().vocab_size;
  const std::vector<float> all = m.forward(Tensor::from_vector(seq, Shape{1, T})).to_vector<float>();
  return std::vector<float>(all.end() - V, all.end());
}

void check_cache_matches_full_forward(Arch arch, int64_t sliding_window = 0,
                                      const std::function<void(ModelConfig&)>& variant = {}) {
  ModelConfig config = tiny(arch);
  config.sliding_window = sliding_window;
  if (variant) variant(config);
  auto model = make_model(config, 3);
  NoGradGuard no_grad;
  const int64_t V = model->config().vocab_size;
  std::vector<std::vector<int32_t>> seqs = {testing::random_ints(5, 1, 0, V), testing::random_ints(9, 2, 0, V),
                                            testing::random_ints(1, 3, 0, V)};
  KVCache cache(model->config(), 3, 20);
  // Prefill: one padded batch.
  const int64_t T = 9;
  std::vector<int32_t> ids(3 * T, 0), n_new;
  for (int b = 0; b < 3; ++b) {
    std::copy(seqs[b].begin(), seqs[b].end(), ids.begin() + b * T);
    n_new.push_back(static_cast<int32_t>(seqs[b].size()));
  }
  Tensor logits = model->forward_cached(Tensor::from_vector(ids, Shape{3, T}), n_new, cache);
  for (int step = 0; step < 5; ++step) {
    const std::vector<float> got = logits.to_vector<float>();
    std::vector<int32_t> next(3), ones(3, 1);
    for (int b = 0; b < 3; ++b) {
      const std::vector<float> row(got.begin() + b * V, got.begin() + (b + 1) * V);
      EXPECT_LE(testing::max_rel_error(row, full_last_logits(*model, seqs[b])), 1e-5)
          << model->config().arch_name() << " row " << b << " step " << step;
      EXPECT_EQ(cache.length[b], static_cast<int32_t>(seqs[b].size()));
      next[b] = static_cast<int32_t>((step * 7 + b * 11) % V);
      seqs[b].push_back(next[b]);
    }
    logits = model->forward_cached(Tensor::from_vector(next, Shape{3, 1}), ones, cache);
  }
  // A row that sits out a step (n_new 0) keeps its cache untouched.
  const int32_t before = cache.length[1];
  model->forward_cached(Tensor::from_vector(std::vector<int32_t>{1, 2, 3}, Shape{3, 1}), {1, 0, 1}, cache);
  EXPECT_EQ(cache.length[1], before);
}

TEST(KVCache, LlamaMatchesFullForward) { check_cache_matches_full_forward(Arch::Llama); }
TEST(KVCache, Gpt2MatchesFullForward) { check_cache_matches_full_forward(Arch::GPT2); }
// Sequences grow to 14 tokens, past a window of 4: prefill and decode must both apply it.
TEST(KVCache, SlidingWindowMatchesFullForward) { check_cache_matches_full_forward(Arch::Llama, 4); }
// Qwen3's q/k norms and a head_dim of its own (10 with dim 24 and 4 heads), and Llama 3's RoPE scaling.
TEST(KVCache, Qwen3AndLlama3MatchFullForward) {
  check_cache_matches_full_forward(Arch::Llama, 0, [](ModelConfig& c) {
    c.qk_norm = true;
    c.explicit_head_dim = 10;
  });
  check_cache_matches_full_forward(Arch::Llama, 0, [](ModelConfig& c) {
    c.rope_scaling = {RopeScalingType::kLlama3, 8.f, 1.f, 4.f, 16.f};
  });
}

TEST(KVCache, SlidingWindowChangesLongSequencesOnly) {
  ModelConfig windowed = tiny(Arch::Llama);
  windowed.sliding_window = 4;
  auto plain = make_model(tiny(Arch::Llama), 3), mistral = make_model(windowed, 3);
  NoGradGuard no_grad;
  const std::vector<int32_t> seq = testing::random_ints(10, 4, 0, 53);
  const std::vector<float> a = plain->forward(Tensor::from_vector(seq, Shape{1, 10})).to_vector<float>();
  const std::vector<float> b = mistral->forward(Tensor::from_vector(seq, Shape{1, 10})).to_vector<float>();
  const size_t V = 53;
  // The first 4 positions see the same keys either way; later ones lose the oldest keys.
  EXPECT_EQ(std::vector<float>(a.begin(), a.begin() + 4 * V), std::vector<float>(b.begin(), b.begin() + 4 * V));
  EXPECT_GT(testing::max_rel_error(std::vector<float>(b.begin() + 9 * V, b.end()), std::vector<float>(a.begin() + 9 * V, a.end())),
            1e-3);
}

TEST(KVCache, CapacityAndContextErrors) {
  auto model = make_model(tiny(Arch::Llama), 3);
  NoGradGuard no_grad;
  KVCache cache(model->config(), 1, 4);
  EXPECT_THROW(model->forward_cached(Tensor::zeros(Shape{1, 5}, DType::I32), {5}, cache), Error);  // capacity
  KVCache big(model->config(), 1, 64);
  EXPECT_THROW(model->forward_cached(Tensor::zeros(Shape{1, 33}, DType::I32), {33}, big), Error);  // context 32
}

TEST(AttentionCachedKernel, EqualsCausalAttentionOnAFullCache) {
  // With nothing cached before and the cache holding exactly this sequence's keys and values,
  // attending from the cache is ordinary causal attention.
  const int64_t B = 2, T = 13, Hq = 4, Hkv = 2, D = 17;
  const auto q = testing::random_floats(B * T * Hq * D, 1), k = testing::random_floats(B * T * Hkv * D, 2),
             v = testing::random_floats(B * T * Hkv * D, 3);
  std::vector<float> want(q.size()), lse(B * Hq * T), got = testing::poisoned(q.size());
  cpu::attention_forward({B, T, Hq, Hkv, D}, q.data(), k.data(), v.data(), nullptr, 0.3f, want.data(), lse.data());
  const std::vector<int32_t> past(B, 0);
  cpu::attention_cached_forward(B, T, T, Hq, Hkv, D, q.data(), k.data(), v.data(), past.data(), 0.3f, got.data());
  EXPECT_LE(testing::max_rel_error(got, want), 1e-5);
  // The same with a sliding window of 5.
  cpu::attention_forward({B, T, Hq, Hkv, D, 5}, q.data(), k.data(), v.data(), nullptr, 0.3f, want.data(), lse.data());
  got = testing::poisoned(q.size());
  cpu::attention_cached_forward(B, T, T, Hq, Hkv, D, q.data(), k.data(), v.data(), past.data(), 0.3f, got.data(), 5);
  EXPECT_LE(testing::max_rel_error(got, want), 1e-5);
}

}  // namespace
}  // namespace llm::models
