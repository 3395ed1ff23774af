#include "engine/generate/generate.h"

#include <cmath>
#include <map>

#include "kernels/cpu/parallel.h"
#include "tests/common/testing.h"

namespace llm::generate {
namespace {

using models::Arch;
using models::CausalLM;
using models::ModelConfig;

// Bytes as tokens 0..255 with a configurable end-of-text id: enough to drive generate().
class ByteTokenizer : public data::Tokenizer {
 public:
  explicit ByteTokenizer(int32_t eot) : eot_(eot) {}
  std::vector<int32_t> encode(std::string_view text) const override {
    return std::vector<int32_t>(text.begin(), text.end());
  }
  std::string token_text(int32_t id) const override { return std::string(1, static_cast<char>(id)); }
  int64_t vocab_size() const override { return 257; }
  int32_t eot_id() const override { return eot_; }
  int32_t bos_id() const override { return -1; }
  int32_t special_id(std::string_view) const override { return -1; }
  std::string identity() const override { return "test-bytes"; }

 private:
  int32_t eot_;
};

std::unique_ptr<CausalLM> tiny_model(Arch arch, uint64_t seed = 5) {
  ModelConfig c;
  c.arch = arch;
  c.vocab_size = 257;
  c.max_seq_len = 64;
  c.dim = 32;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = arch == Arch::GPT2 ? 4 : 2;
  c.hidden_dim = arch == Arch::GPT2 ? 128 : 48;
  c.tie_embeddings = arch == Arch::GPT2;
  auto m = models::make_model(c, seed);
  // Larger weights than GPT-2's init, so samples depend strongly on the context.
  NoGradGuard no_grad;
  for (auto& [name, p] : m->named_parameters())
    if (p.dim() >= 2) p.mul_(20.f);
  return m;
}

SamplingOptions greedy() {
  SamplingOptions s;
  s.temperature = 0;
  return s;
}

// The reference: re-run the full forward over the growing sequence, take the argmax.
std::vector<int32_t> naive_greedy(CausalLM& m, std::vector<int32_t> seq, int n) {
  NoGradGuard no_grad;
  std::vector<int32_t> out;
  const int64_t V = m.config().vocab_size;
  for (int i = 0; i < n; ++i) {
    const auto logits = m.forward(Tensor::from_vector(seq, Shape{1, int64_t(seq.size())})).to_vector<float>();
    const auto last = logits.end() - V;
    const int32_t tok = static_cast<int32_t>(std::max_element(last, logits.end()) - last);
    out.push_back(tok);
    seq.push_back(tok);
  }
  return out;
}

TEST(Sampler, GreedyAndFiltersThatLeaveOneToken) {
  const std::vector<float> logits{0.1f, 2.0f, -1.f, 1.9f, 0.f};
  SamplingOptions o;
  o.temperature = 0;
  EXPECT_EQ(Sampler(o).sample(logits.data(), 5, {}), 1);
  o.repeat_penalty = 2.f;  // token 1 was just seen: 2.0 / 2 = 1.0 < 1.9
  EXPECT_EQ(Sampler(o).sample(logits.data(), 5, {1}), 3);
  SamplingOptions hot;
  hot.temperature = 5.f;
  hot.top_k = 1;
  hot.top_p = 1.f;
  hot.min_p = 0.f;
  for (int i = 0; i < 20; ++i) EXPECT_EQ(Sampler(hot, i).sample(logits.data(), 5, {}), 1);
  hot.top_k = 0;
  hot.top_p = 1e-6f;
  for (int i = 0; i < 20; ++i) EXPECT_EQ(Sampler(hot, i).sample(logits.data(), 5, {}), 1);
  hot.top_p = 1.f;
  hot.min_p = 0.99f;  // only tokens within 1% of the top probability survive
  for (int i = 0; i < 20; ++i) EXPECT_EQ(Sampler(hot, i).sample(logits.data(), 5, {}), 1);
  SamplingOptions bad;
  bad.min_p = 2.f;
  EXPECT_THROW(Sampler{bad}, Error);
}

// The CLI's and the server's limits are one rule: a negative temperature or a top_p past 1 is an
// error (llm-generate --temp -1 and --top-p 2 used to run).
TEST(Sampler, NegativeTemperatureAndTopPPastOneAreRefused) {
  SamplingOptions o;
  o.temperature = -1.f;
  EXPECT_EQ(testing::error_of([&] { o.validate(); }), "sampling: temperature must be 0 (greedy) or positive, got -1");
  o.temperature = 0.f;
  o.top_p = 2.f;
  EXPECT_EQ(testing::error_of([&] { o.validate(); }), "sampling: top_p must be in (0, 1], got 2");
  o.top_p = 1.f;
  EXPECT_NO_THROW(o.validate());
}

TEST(Sampler, FrequenciesFollowTheTemperedSoftmax) {
  const std::vector<float> logits{1.f, 0.f, -1.f, 0.5f};
  SamplingOptions o;
  o.temperature = 0.7f;
  o.top_k = 0;
  o.top_p = 1.f;
  o.min_p = 0.f;
  o.seed = 42;
  Sampler s(o);
  std::vector<int> counts(4, 0);
  const int n = 40000;
  for (int i = 0; i < n; ++i) counts[s.sample(logits.data(), 4, {})]++;
  double z = 0;
  for (float l : logits) z += std::exp(l / 0.7);
  for (int t = 0; t < 4; ++t) {
    const double p = std::exp(logits[t] / 0.7) / z;
    EXPECT_NEAR(counts[t] / double(n), p, 5 * std::sqrt(p * (1 - p) / n)) << "token " << t;
  }
  // top-k 2 keeps only the two most likely, in proportion.
  o.top_k = 2;
  Sampler k2(o);
  std::vector<int> c2(4, 0);
  for (int i = 0; i < 20000; ++i) c2[k2.sample(logits.data(), 4, {})]++;
  EXPECT_EQ(c2[1] + c2[2], 0);
  EXPECT_NEAR(c2[0] / 20000.0, 1 / (1 + std::exp(-0.5 / 0.7)), 0.02);
}

TEST(Generate, BatchedGreedyEqualsOneByOneAndTheNaiveLoop) {
  for (Arch arch : {Arch::Llama, Arch::GPT2}) {
    auto model = tiny_model(arch);
    const ByteTokenizer tok(-1);
    GenerateOptions o;
    o.max_new_tokens = 12;
    o.sampling = greedy();
    const std::vector<std::vector<int32_t>> prompts{tok.encode("Hello"), tok.encode("A much longer prompt"), tok.encode("x")};
    GenerateStats stats;
    const auto batched = generate(*model, tok, prompts, o, nullptr, &stats);
    EXPECT_EQ(stats.generated_tokens, 36);
    EXPECT_EQ(stats.prompt_tokens, 5 + 20 + 1);
    for (size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_EQ(batched[i].finish_reason, "length");
      EXPECT_EQ(batched[i].tokens, naive_greedy(*model, prompts[i], 12)) << model->config().arch_name() << " prompt " << i;
      EXPECT_EQ(generate(*model, tok, {prompts[i]}, o)[0].tokens, batched[i].tokens);
    }
  }
}

TEST(Generate, SameSeedSameTextWhateverTheThreadCount) {
  auto model = tiny_model(Arch::Llama);
  const ByteTokenizer tok(-1);
  GenerateOptions o;
  o.max_new_tokens = 24;
  o.sampling.seed = 7;
  o.sampling.temperature = 1.2f;
  const std::vector<std::vector<int32_t>> prompts{tok.encode("One"), tok.encode("Two prompts")};
  cpu::set_num_threads(1);
  const auto one = generate(*model, tok, prompts, o);
  cpu::set_num_threads(2);
  const auto two = generate(*model, tok, prompts, o);
  cpu::set_num_threads(0);
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(one[i].tokens, two[i].tokens);
  o.sampling.seed = 8;
  EXPECT_NE(generate(*model, tok, prompts, o)[0].tokens, one[0].tokens);
}

TEST(Generate, StopStringsCutTheTextAndStreamingMatches) {
  auto model = tiny_model(Arch::Llama);
  const ByteTokenizer tok(-1);
  GenerateOptions o;
  o.max_new_tokens = 30;
  o.sampling = greedy();
  const auto prompt = tok.encode("Stop me");
  const std::string full = generate(*model, tok, {prompt}, o)[0].text;
  ASSERT_EQ(full.size(), 30u);
  o.stop = {full.substr(10, 3), "never-appears"};
  std::string streamed;
  const Generation g = generate(*model, tok, {prompt}, o, [&](size_t, const std::string& t) { streamed += t; })[0];
  EXPECT_EQ(g.finish_reason, "stop");
  EXPECT_EQ(g.text, full.substr(0, full.find(o.stop[0])));
  EXPECT_EQ(streamed, g.text);  // nothing of the stop string leaked out while streaming
}

TEST(Generate, EndOfTextFinishesASequence) {
  auto model = tiny_model(Arch::Llama);
  {
    NoGradGuard no_grad;
    model->parameter("model.norm.weight").fill_(0.0);  // all logits 0: greedy picks id 0
  }
  const ByteTokenizer tok(/*eot=*/0);
  GenerateOptions o;
  o.sampling = greedy();
  const Generation g = generate(*model, tok, {tok.encode("hi")}, o)[0];
  EXPECT_EQ(g.finish_reason, "eos");
  EXPECT_TRUE(g.tokens.empty());
  o.stop_at_eos = false;
  o.max_new_tokens = 3;
  EXPECT_EQ(generate(*model, tok, {tok.encode("hi")}, o)[0].tokens, (std::vector<int32_t>{0, 0, 0}));
}

TEST(Generate, BadInput) {
  auto model = tiny_model(Arch::Llama);
  const ByteTokenizer tok(-1);
  GenerateOptions o;
  EXPECT_THROW(generate(*model, tok, {{}}, o), Error);
  EXPECT_THROW(generate(*model, tok, {{300}}, o), Error);
  EXPECT_THROW(generate(*model, tok, {std::vector<int32_t>(64, 1)}, o), Error);  // no room in the context
  o.max_new_tokens = 100;  // more than the context allows: stops at the context with "length"
  const Generation g = generate(*model, tok, {tok.encode("ab")}, o)[0];
  EXPECT_EQ(g.finish_reason, "length");
  EXPECT_EQ(g.tokens.size(), 63u);  // 2 + 62 fed back fill the 64 positions; the last is predicted from them
}

}  // namespace
}  // namespace llm::generate
