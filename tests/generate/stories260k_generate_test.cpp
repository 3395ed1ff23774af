// The real trained stories260K model through the KV-cache generator: 200 greedy tokens from BOS must
// be llama2.c's, token for token, alone and inside a batch with another prompt.
#include <fstream>
#include <set>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/generate/generate.h"
#include "engine/train/pretrained.h"
#include "tests/common/testing.h"

namespace llm::generate {
namespace {

TEST(Stories260KGenerate, GreedyFromBosMatchesLlama2c) {
  const std::string dir = std::string(LLM_SOURCE_DIR) + "/tests/fixtures/stories260K";
  std::ifstream in(dir + "/expected_greedy.json");
  ASSERT_TRUE(in.good());
  std::stringstream ss;
  ss << in.rdbuf();
  const nlohmann::json golden = nlohmann::json::parse(ss.str());
  const auto want = golden["generated_ids"].get<std::vector<int32_t>>();

  auto model = train::load_model(dir + "/stories260K.bin");
  const auto tok = data::load_tokenizer(std::string(LLM_SOURCE_DIR) + "/data/assets/stories260K/tok512.model");
  GenerateOptions o;
  o.max_new_tokens = 200;
  o.sampling.temperature = 0;
  o.stop_at_eos = false;
  const std::vector<int32_t> bos{tok->bos_id()};
  ASSERT_EQ(bos[0], 1);
  const auto alone = generate(*model, *tok, {bos}, o);
  EXPECT_EQ(alone[0].tokens, want);
  EXPECT_EQ(alone[0].text, golden["text"].get<std::string>());
  // Batched with a longer prompt: the first row is unchanged.
  const auto batched = generate(*model, *tok, {bos, encode_prompt(*tok, "The little dog")}, o);
  EXPECT_EQ(batched[0].tokens, want);
  EXPECT_EQ(batched[1].tokens.size(), 200u);
}

TEST(Stories260KGenerate, Q8WeightsStayCloseToFp32) {
  const std::string dir = std::string(LLM_SOURCE_DIR) + "/tests/fixtures/stories260K";
  auto fp32 = train::load_model(dir + "/stories260K.bin");
  auto q8 = train::load_model(dir + "/stories260K.bin");
  q8->quantize_q8();
  NoGradGuard no_grad;
  std::vector<int32_t> ids{1};
  for (int i = 0; i < 40; ++i) ids.push_back((i * 37 + 5) % 512);
  const Tensor input = Tensor::from_vector(ids, Shape{1, int64_t(ids.size())});
  const std::vector<float> a = fp32->forward(input).to_vector<float>(), b = q8->forward(input).to_vector<float>();
  EXPECT_LE(testing::max_rel_error(b, a), 0.05);
  EXPECT_GT(testing::max_rel_error(b, a), 0.0) << "the quantized path was not used";
  int agree = 0;
  for (size_t t = 0; t < ids.size(); ++t) {
    auto row_a = a.begin() + t * 512, row_b = b.begin() + t * 512;
    agree += std::max_element(row_a, row_a + 512) - row_a == std::max_element(row_b, row_b + 512) - row_b;
  }
  EXPECT_GE(agree, int(ids.size()) * 9 / 10);
}

// A model loaded for generation with Q8 weights keeps only the int8 copies of the layers it quantized
// (their fp32 weights are freed: a quarter of the memory) and computes what a quantized model that
// kept them computes; from a HF directory it is built one weight at a time. down_proj's input width
// (172) is no multiple of 32: it stays fp32.
TEST(Stories260KGenerate, Q8InferenceModelFreesTheFp32WeightsItReplaced) {
  const std::string bin = std::string(LLM_SOURCE_DIR) + "/tests/fixtures/stories260K/stories260K.bin";
  auto kept = train::load_model(bin);
  kept->quantize_q8();
  const train::InferenceModel m = train::load_inference_model(
      bin, std::string(LLM_SOURCE_DIR) + "/data/assets/stories260K/tok512.model", /*quantize_q8=*/true, "");
  std::set<std::string> names;
  for (const auto& [name, t] : m.model->named_parameters()) names.insert(name);
  EXPECT_FALSE(names.count("model.layers.0.self_attn.q_proj.weight"));
  EXPECT_FALSE(names.count("model.layers.4.mlp.up_proj.weight"));
  EXPECT_TRUE(names.count("model.layers.0.mlp.down_proj.weight"));
  EXPECT_TRUE(names.count("model.embed_tokens.weight"));
  NoGradGuard no_grad;
  const Tensor input = Tensor::from_vector(std::vector<int32_t>{1, 403, 89, 7, 260}, Shape{1, 5});
  const std::vector<float> want = kept->forward(input).to_vector<float>();
  EXPECT_EQ(m.model->forward(input).to_vector<float>(), want);
  // From a HF directory (the same weights) each weight is quantized as it is read: the same model.
  const train::InferenceModel streamed = train::load_inference_model(
      std::string(LLM_SOURCE_DIR) + "/tests/fixtures/stories260K",
      std::string(LLM_SOURCE_DIR) + "/data/assets/stories260K/tok512.model", /*quantize_q8=*/true, "");
  EXPECT_EQ(streamed.model->named_parameters().size(), m.model->named_parameters().size());
  EXPECT_EQ(streamed.model->forward(input).to_vector<float>(), want);
}

}  // namespace
}  // namespace llm::generate
