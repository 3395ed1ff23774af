// The C++ SDK through its public header only (this test links libllm.so, nothing internal): loading,
// tokenizing, generation equal to llm-generate's golden text, streaming and stopping, chat, scoring,
// the task helpers, training from a config object, and errors as llm::Error.
#include <gtest/gtest.h>
#include <llm/llm.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unistd.h>

namespace {

const std::string kSource = LLM_SOURCE_DIR;
const std::string kModel = kSource + "/tests/fixtures/stories260K/stories260K.bin";
const std::string kTokenizer = kSource + "/data/assets/stories260K/tok512.model";

llm::Model& model() {
  static llm::Model m = [] {
    llm::LoadOptions o;
    o.tokenizer = kTokenizer;
    return llm::Model::from_pretrained(kModel, o);
  }();
  return m;
}

llm::GenerateOptions greedy(int64_t n) {
  llm::GenerateOptions o;
  o.temperature = 0;
  o.max_tokens = n;
  return o;
}

TEST(Sdk, InfoAndTokenizerRoundTrip) {
  const llm::ModelInfo i = model().info();
  EXPECT_EQ(i.arch, "llama");
  EXPECT_EQ(i.vocab_size, 512);
  EXPECT_EQ(i.n_layers, 5);
  EXPECT_EQ(i.dim, 64);
  EXPECT_GT(i.parameters, 200000);
  EXPECT_FALSE(i.has_chat_template);
  // A q8 model is the same model: the same count, though it frees the fp32 weights it quantized.
  llm::LoadOptions q8;
  q8.tokenizer = kTokenizer;
  q8.quantize_q8 = true;
  EXPECT_EQ(llm::Model::from_pretrained(kModel, q8).info().parameters, i.parameters);
  const std::vector<int32_t> ids = model().tokenize("Once upon a time", true);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids[0], 1);  // BOS
  EXPECT_EQ(model().detokenize(std::vector<int32_t>(ids.begin() + 1, ids.end())), "Once upon a time");
}

TEST(Sdk, GreedyGenerationIsLlama2csText) {
  // The same golden continuation as the llm_generate_stories260k tool test (greedy from BOS).
  const llm::Completion c = model().generate("", greedy(40));
  EXPECT_EQ(c.text.rfind("Once upon a time, there was a little girl named Lily. She loved to play outside in the park.", 0), 0u) << c.text;
  EXPECT_EQ(c.tokens.size(), 40u);
  EXPECT_EQ(c.finish_reason, "length");
  EXPECT_EQ(c.prompt_tokens, 1);
}

TEST(Sdk, StreamingAddsUpAndCanStop) {
  std::string streamed;
  const llm::Completion full = model().generate("The little dog", greedy(30), [&](const std::string& t) {
    streamed += t;
    return true;
  });
  EXPECT_EQ(streamed, full.text);
  int calls = 0;
  const llm::Completion cut = model().generate("The little dog", greedy(30), [&](const std::string&) { return ++calls < 5; });
  EXPECT_EQ(cut.finish_reason, "cancelled");
  EXPECT_LT(cut.tokens.size(), full.tokens.size());
  EXPECT_EQ(full.text.rfind(cut.text, 0), 0u);  // a prefix of the full text

  llm::GenerateOptions stop = greedy(100);
  stop.stop = {"."};
  const llm::Completion s = model().generate("The little dog", stop);
  EXPECT_EQ(s.finish_reason, "stop");
  EXPECT_EQ(s.text.find('.'), std::string::npos);
}

TEST(Sdk, ChatScoreAndTaskHelpersRun) {
  llm::GenerateOptions o = greedy(16);
  o.seed = 2;
  const llm::Completion c = model().chat({{"system", "Be brief."}, {"user", "Tell me a story."}}, o);
  EXPECT_GT(c.prompt_tokens, 10);
  EXPECT_FALSE(c.finish_reason.empty());
  EXPECT_EQ(c.text, model().chat({{"system", "Be brief."}, {"user", "Tell me a story."}}, o).text);  // deterministic

  const std::string story = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.";
  const llm::Score likely = model().score(story);
  EXPECT_EQ(likely.tokens, static_cast<int64_t>(model().tokenize(story).size()));
  EXPECT_LT(likely.log_likelihood, 0);
  EXPECT_NEAR(likely.perplexity, std::exp(-likely.log_likelihood / likely.tokens), 1e-9 * likely.perplexity);
  // The model's own kind of text is far likelier than a scramble of the same words.
  const llm::Score unlikely = model().score("park the in outside play to loved She Lily named girl little a was there time a upon Once");
  EXPECT_LT(likely.perplexity * 3, unlikely.perplexity);

  // Without a chat template the helpers are plain continuations of a task prompt.
  EXPECT_EQ(model().summarize(story, greedy(12)), model().generate(story + "\n\nTL;DR:", greedy(12)).text);
  EXPECT_EQ(model().complete_code("int main() {", greedy(8)), model().generate("int main() {", greedy(8)).text);
  EXPECT_FALSE(model().translate("The dog is happy.", "French", greedy(8)).empty());
}

TEST(Sdk, ErrorsAreLlmErrors) {
  try {
    llm::Model::from_pretrained("/nonexistent/model");
    FAIL() << "no error";
  } catch (const llm::Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/model"), std::string::npos) << e.what();
  }
  llm::GenerateOptions bad;
  bad.top_p = 0;
  EXPECT_THROW(model().generate("x", bad), llm::Error);
  EXPECT_THROW(model().chat({{"robot", "x"}}), llm::Error);
  EXPECT_THROW(model().score(""), llm::Error);
  EXPECT_THROW(llm::TrainConfig::from_yaml("optim: {lr: fast}"), llm::Error);
}

TEST(Sdk, TrainsFromAConfigObjectAndLoadsTheResult) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("llm_sdk_train_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  // A prepared dataset: llm-data's output for the byte tokenizer, made by the tool under test's build.
  const std::string prepare = std::string(LLM_DATA_TOOL) + " prepare --tokenizer byte --input " + kSource +
                              "/data/assets/tinyshakespeare/input.txt --out " + (dir / "data").string() + " > /dev/null 2>&1";
  ASSERT_EQ(std::system(prepare.c_str()), 0);
  llm::TrainConfig config = llm::TrainConfig::from_file(kSource + "/configs/tiny.yaml");
  config.set("data.train", (dir / "data").string()).set("checkpoint.dir", (dir / "run").string()).set("train.max_steps", "6");
  EXPECT_THROW(config.set("optim.lr", "fast"), llm::Error);
  EXPECT_NE(config.to_yaml().find("max_steps: 6"), std::string::npos) << config.to_yaml();
  std::ostringstream log;
  llm::TrainOptions o;
  o.log = &log;
  const llm::TrainResult r = llm::pretrain(config, o);
  EXPECT_EQ(r.steps, 6);
  EXPECT_TRUE(std::isfinite(r.final_loss));
  EXPECT_LT(r.final_loss, 5.6);  // below the uniform ln(257)
  ASSERT_TRUE(fs::exists(r.checkpoint)) << log.str();
  llm::Model trained = llm::Model::from_pretrained(r.checkpoint);
  EXPECT_EQ(trained.info().vocab_size, 257);
  EXPECT_EQ(trained.generate("ROMEO:", greedy(5)).tokens.size(), 5u);
  EXPECT_THROW(llm::finetune(config, o), llm::Error);  // a pretraining recipe

  // Fine-tuning the result on prompt/completion pairs, as llm-finetune does.
  {
    std::ofstream jsonl(dir / "pairs.jsonl");
    for (int i = 0; i < 20; ++i) jsonl << "{\"prompt\": \"Q" << i << ":\", \"completion\": \" A" << i << "\"}\n";
  }
  llm::TrainConfig sft = llm::TrainConfig::from_yaml(
      "model: {init_from: " + r.checkpoint + "}\n"
      "data: {train: " + (dir / "pairs.jsonl").string() + "}\n"
      "finetune: {method: sft, chat_template: false}\n"
      "train: {batch_size: 2, seq_len: 16, max_steps: 3, eval_interval: 0}\n"
      "checkpoint: {dir: " + (dir / "sft").string() + "}\n");
  EXPECT_THROW(llm::pretrain(sft, o), llm::Error);
  const llm::TrainResult f = llm::finetune(sft, o);
  EXPECT_EQ(f.steps, 3);
  EXPECT_TRUE(std::isfinite(f.final_loss));
  EXPECT_TRUE(fs::exists(f.checkpoint)) << log.str();
  fs::remove_all(dir);
}

}  // namespace
