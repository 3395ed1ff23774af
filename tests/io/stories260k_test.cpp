// The real trained stories260K (Karpathy's TinyStories 260K, llama2.c) loaded from its llama2.c .bin
// and from its Hugging Face copy must reproduce the golden logits (float64 reference) and the golden
// 200-token greedy continuation from BOS exactly, and the tok512 tokenizer must decode it to the
// golden text.
#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "data/tokenizer.h"
#include "engine/train/pretrained.h"
#include "tests/common/testing.h"

namespace llm::testing {
namespace {

using json = nlohmann::json;

std::string fixture(const std::string& name) { return std::string(LLM_SOURCE_DIR) + "/tests/fixtures/stories260K/" + name; }
json load_json(const std::string& name) { return json::parse(data::read_file(fixture(name))); }

// Next-token argmax of the last position (first index wins ties, as numpy's argmax).
int32_t argmax_last(const Tensor& logits) {
  const int64_t T = logits.size(1), V = logits.size(2);
  const std::vector<float> v = logits.select(0, 0).select(0, T - 1).contiguous().to_vector<float>();
  return static_cast<int32_t>(std::max_element(v.begin(), v.begin() + V) - v.begin());
}

class Stories260K : public ::testing::TestWithParam<std::string> {};

TEST_P(Stories260K, TeacherForcedLogitsMatchTheReference) {
  const json ref = load_json("expected_logits_16.json");
  const auto ids = ref["input_ids"].get<std::vector<int32_t>>();
  const auto want = ref["logits"].get<std::vector<std::vector<double>>>();
  ASSERT_EQ(ids.size(), 16u);
  auto model = train::load_model(fixture(GetParam()));
  NoGradGuard no_grad;
  const int64_t T = static_cast<int64_t>(ids.size());
  const std::vector<float> got = model->forward(Tensor::from_vector(ids, Shape{1, T})).to_vector<float>();
  ASSERT_EQ(got.size(), 16u * 512u);
  double max_ref = 0, max_err = 0;
  for (size_t t = 0; t < want.size(); ++t)
    for (size_t v = 0; v < 512; ++v) {
      max_ref = std::max(max_ref, std::fabs(want[t][v]));
      max_err = std::max(max_err, std::fabs(got[t * 512 + v] - want[t][v]));
    }
  EXPECT_GT(max_ref, 1.0);
  EXPECT_LT(max_err / max_ref, 1e-4) << "max abs error " << max_err << " (largest |logit| " << max_ref << ")";
}

TEST_P(Stories260K, GreedyDecodingFromBosMatchesTheGoldenIdsAndText) {
  const json ref = load_json("expected_greedy.json");
  const auto want = ref["generated_ids"].get<std::vector<int32_t>>();
  ASSERT_EQ(want.size(), 200u);
  auto model = train::load_model(fixture(GetParam()));
  NoGradGuard no_grad;
  // Plain greedy decoding: the full forward over the growing sequence, argmax of the last position.
  std::vector<int32_t> seq = {1};  // BOS
  std::vector<int32_t> generated;
  for (int step = 0; step < 200; ++step) {
    const int64_t T = static_cast<int64_t>(seq.size());
    const int32_t next = argmax_last(model->forward(Tensor::from_vector(seq, Shape{1, T})));
    generated.push_back(next);
    seq.push_back(next);
  }
  EXPECT_EQ(generated, want);

  const auto tok = data::load_tokenizer(std::string(LLM_SOURCE_DIR) + "/data/assets/stories260K/tok512.model");
  EXPECT_EQ(tok->decode(generated), ref["text"].get<std::string>());
}

INSTANTIATE_TEST_SUITE_P(Formats, Stories260K, ::testing::Values("stories260K.bin", "."),
                         [](const ::testing::TestParamInfo<std::string>& p) {
                           return p.param == "." ? std::string("HuggingFaceDirectory") : std::string("Llama2cBin");
                         });

TEST(Stories260KLoad, BothFormatsGiveIdenticalWeightsAndConfig) {
  const io::LoadedModel bin = train::load_pretrained(fixture("stories260K.bin"));
  const io::LoadedModel hf = train::load_pretrained(fixture(""));
  EXPECT_EQ(bin.config.dim, 64);
  EXPECT_EQ(bin.config.n_kv_heads, 4);
  EXPECT_TRUE(bin.config.tie_embeddings);
  EXPECT_EQ(hf.config.hidden_dim, 172);
  ASSERT_EQ(bin.weights.size(), hf.weights.size());
  for (const auto& [name, t] : bin.weights) {
    ASSERT_TRUE(hf.weights.count(name)) << name;
    EXPECT_EQ(t.to_vector<float>(), hf.weights.at(name).to_vector<float>()) << name;
  }
}

}  // namespace
}  // namespace llm::testing
