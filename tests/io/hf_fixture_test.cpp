// The tiny GPT-2, LLaMA and Qwen3 as Hugging Face directories (tests/fixtures/hf, written by
// scripts/make_fixtures.py with HF's real conventions: GPT-2 "transformer." names and Conv1D [in, out]
// weights, tied; LLaMA untied with lm_head.weight; Qwen3 with q/k norms, tied) load through
// load_pretrained and give PyTorch's float64 logits for the fixture batch.
#include <cmath>
#include <nlohmann/json.hpp>

#include "data/tokenizer.h"
#include "engine/io/safetensors.h"
#include "engine/train/pretrained.h"
#include "tests/common/testing.h"

namespace llm::testing {
namespace {

using json = nlohmann::json;

std::string hf_dir(const std::string& name) { return std::string(LLM_SOURCE_DIR) + "/tests/fixtures/hf/" + name; }

class HfFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(HfFixture, LogitsMatchPyTorch) {
  const std::string dir = hf_dir(GetParam());
  const json ref = json::parse(data::read_file(dir + "/expected_logits.json"));
  const auto ids = ref["input_ids"].get<std::vector<std::vector<int32_t>>>();
  const auto shape = ref["logits"]["shape"].get<std::vector<int64_t>>();
  const auto want = ref["logits"]["data"].get<std::vector<double>>();
  ASSERT_EQ(shape.size(), 3u);
  ASSERT_EQ(ids.size(), static_cast<size_t>(shape[0]));
  const int64_t B = shape[0], T = shape[1], V = shape[2];

  const io::LoadedModel loaded = train::load_pretrained(dir);
  EXPECT_EQ(loaded.config.vocab_size, V);
  EXPECT_EQ(loaded.tokenizer, "") << "the fixture carries no tokenizer";
  auto model = train::make_loaded_model(loaded);
  std::vector<int32_t> flat;
  for (const auto& row : ids) flat.insert(flat.end(), row.begin(), row.end());
  NoGradGuard no_grad;
  const Tensor logits = model->forward(Tensor::from_vector(flat, Shape{B, T}));
  ASSERT_EQ(logits.shape(), (Shape{B, T, V}));
  const std::vector<float> got = logits.contiguous().to_vector<float>();
  double max_ref = 0, max_err = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    max_ref = std::max(max_ref, std::fabs(want[i]));
    max_err = std::max(max_err, std::fabs(got[i] - want[i]));
  }
  EXPECT_NEAR(max_ref, ref["max_abs_logit"].get<double>(), 1e-12);
  EXPECT_GT(max_ref, 0.1);
  EXPECT_LT(max_err / max_ref, 1e-4) << "max abs error " << max_err << " (largest |logit| " << max_ref << ")";
}

INSTANTIATE_TEST_SUITE_P(Models, HfFixture, ::testing::Values("gpt2_tiny", "llama_tiny", "qwen3_tiny"));

TEST(HfFixtureLayout, FollowsHuggingFacesConventions) {
  const io::SafetensorsFile gpt2(hf_dir("gpt2_tiny") + "/model.safetensors");
  EXPECT_TRUE(gpt2.contains("transformer.wte.weight"));
  EXPECT_FALSE(gpt2.contains("lm_head.weight")) << "GPT-2 is tied";
  EXPECT_EQ(gpt2.entry("transformer.h.0.mlp.c_fc.weight").shape, (std::vector<int64_t>{48, 192})) << "Conv1D [in, out]";
  EXPECT_EQ(gpt2.entry("transformer.h.1.attn.c_attn.weight").shape, (std::vector<int64_t>{48, 144}));
  EXPECT_EQ(gpt2.metadata().at("format"), "pt");
  const io::SafetensorsFile llama(hf_dir("llama_tiny") + "/model.safetensors");
  EXPECT_EQ(llama.entry("lm_head.weight").shape, (std::vector<int64_t>{97, 48}));
  EXPECT_EQ(llama.entry("model.layers.0.self_attn.k_proj.weight").shape, (std::vector<int64_t>{24, 48})) << "GQA: 2 kv heads";
  const io::LoadedModel l = train::load_pretrained(hf_dir("llama_tiny"));
  EXPECT_FALSE(l.config.tie_embeddings);
  EXPECT_EQ(l.config.n_kv_heads, 2);
  // Qwen3: q/k norms per head, a head_dim (12) that is not hidden_size / heads (8), tied.
  const io::SafetensorsFile qwen3(hf_dir("qwen3_tiny") + "/model.safetensors");
  EXPECT_EQ(qwen3.entry("model.layers.0.self_attn.q_proj.weight").shape, (std::vector<int64_t>{48, 32}));
  EXPECT_EQ(qwen3.entry("model.layers.1.self_attn.k_norm.weight").shape, (std::vector<int64_t>{12}));
  const io::LoadedModel q = train::load_pretrained(hf_dir("qwen3_tiny"));
  EXPECT_TRUE(q.config.qk_norm);
  EXPECT_EQ(q.config.head_dim(), 12);
  EXPECT_TRUE(q.config.tie_embeddings);
  EXPECT_EQ(q.config.num_parameters(), 23024) << "as PyTorch counts them";
}

}  // namespace
}  // namespace llm::testing
