// The real trained stories260K model through the KV-cache generator: 200 greedy tokens from BOS must
// be llama2.c's, token for token, alone and inside a batch with another prompt.
#include <fstream>
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

}  // namespace
}  // namespace llm::generate
