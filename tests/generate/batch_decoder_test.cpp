// Continuous batching on the real stories260K model: sequences that join a running batch mid-flight,
// leave it at different times and reuse freed slots give exactly what generate() gives each alone.
#include "engine/generate/batch_decoder.h"

#include <map>

#include "engine/train/pretrained.h"
#include "tests/common/testing.h"

namespace llm::generate {
namespace {

struct Fixture {
  std::unique_ptr<models::CausalLM> model =
      train::load_model(std::string(LLM_SOURCE_DIR) + "/tests/fixtures/stories260K/stories260K.bin");
  std::unique_ptr<data::Tokenizer> tok =
      data::load_tokenizer(std::string(LLM_SOURCE_DIR) + "/data/assets/stories260K/tok512.model");
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

struct Outcome {
  Generation result;
  std::string streamed;
  int done_calls = 0;
};

const std::vector<std::string> kPrompts = {"Once upon a time", "The little dog", "", "Lily and Ben went to the park. They saw",
                                           "One day", "Tom had a red ball. He", "The sun"};

GenerateOptions options_for(size_t i) {
  GenerateOptions o;
  o.max_new_tokens = 8 + static_cast<int64_t>(i) * 7;  // different lengths, so sequences leave at different steps
  o.sampling.temperature = i % 2 ? 0.f : 0.9f;         // greedy and sampled sequences side by side
  o.sampling.seed = 100 + i;
  if (i == 3) o.stop = {"."};
  return o;
}

// Feeds the prompts into a decoder of `slots` slots: two at first (when there is room), then one more
// every `join_every` steps whenever a slot is free, and runs until all finished.
std::map<size_t, Outcome> run_continuous(int64_t slots, int64_t prefill_chunk, int join_every) {
  Fixture& f = fixture();
  BatchDecoder dec(*f.model, *f.tok, slots, prefill_chunk);
  std::map<size_t, Outcome> out;
  size_t next = 0;
  auto join = [&] {
    const size_t i = next++;
    BatchDecoder::Callbacks cb;
    cb.on_text = [&out, i](const std::string& t) { out[i].streamed += t; };
    cb.on_done = [&out, i](Generation&& g) {
      out[i].result = std::move(g);
      ++out[i].done_calls;
    };
    dec.add(encode_prompt(*f.tok, kPrompts[i]), options_for(i), cb);
  };
  join();
  if (dec.has_free_slot()) join();
  for (int step = 1; dec.active() > 0 || next < kPrompts.size(); ++step) {
    if (next < kPrompts.size() && dec.has_free_slot() && step % join_every == 0) join();
    dec.step();
  }
  return out;
}

void expect_same_as_generate_alone(const std::map<size_t, Outcome>& got) {
  Fixture& f = fixture();
  ASSERT_EQ(got.size(), kPrompts.size());
  for (size_t i = 0; i < kPrompts.size(); ++i) {
    const Generation want = generate(*f.model, *f.tok, {encode_prompt(*f.tok, kPrompts[i])}, options_for(i))[0];
    const Outcome& o = got.at(i);
    EXPECT_EQ(o.done_calls, 1) << i;
    EXPECT_EQ(o.result.tokens, want.tokens) << "prompt " << i;
    EXPECT_EQ(o.result.text, want.text) << "prompt " << i;
    EXPECT_EQ(o.result.finish_reason, want.finish_reason) << "prompt " << i;
    EXPECT_EQ(o.streamed, want.text) << "prompt " << i;
  }
}

TEST(BatchDecoder, JoiningMidFlightGivesWhatGenerateGivesAlone) {
  const auto got = run_continuous(/*slots=*/4, /*prefill_chunk=*/256, /*join_every=*/3);
  expect_same_as_generate_alone(got);
  EXPECT_EQ(got.at(3).result.finish_reason, "stop");  // the stop string ended one of them
}

TEST(BatchDecoder, ChunkedPrefillAndOneSlotGiveTheSameResults) {
  expect_same_as_generate_alone(run_continuous(/*slots=*/3, /*prefill_chunk=*/2, /*join_every=*/1));
  expect_same_as_generate_alone(run_continuous(/*slots=*/1, /*prefill_chunk=*/256, /*join_every=*/1));
}

TEST(BatchDecoder, CancelFreesTheSlotAndOthersContinue) {
  Fixture& f = fixture();
  BatchDecoder dec(*f.model, *f.tok, 2);
  GenerateOptions o;
  o.sampling.temperature = 0;
  o.max_new_tokens = 20;
  o.stop_at_eos = false;
  std::vector<Generation> done(3);
  auto add = [&](size_t i, const std::string& p) {
    BatchDecoder::Callbacks cb;
    cb.on_done = [&done, i](Generation&& g) { done[i] = std::move(g); };
    return dec.add(encode_prompt(*f.tok, p), o, cb);
  };
  const uint64_t first = add(0, "Once upon a time");
  add(1, "The little dog");
  EXPECT_FALSE(dec.has_free_slot());
  EXPECT_NE(testing::error_of([&] { add(2, "x"); }).find("slots are busy"), std::string::npos);
  for (int i = 0; i < 5; ++i) dec.step();
  dec.cancel(first);  // row 0 is freed: row 1 moves into it with its cache
  EXPECT_EQ(done[0].finish_reason, "cancelled");
  EXPECT_EQ(done[0].tokens.size(), 5u);
  add(2, "One day");
  while (dec.active() > 0) dec.step();
  for (size_t i : {size_t(1), size_t(2)}) {
    const auto want = generate(*f.model, *f.tok, {encode_prompt(*f.tok, i == 1 ? "The little dog" : "One day")}, o)[0];
    EXPECT_EQ(done[i].tokens, want.tokens) << i;
    EXPECT_EQ(done[i].finish_reason, "length");
  }
}

TEST(BatchDecoder, BadInputChangesNothing) {
  Fixture& f = fixture();
  BatchDecoder dec(*f.model, *f.tok, 1);
  GenerateOptions o;
  EXPECT_NE(testing::error_of([&] { dec.add({}, o, {}); }).find("no tokens"), std::string::npos);
  EXPECT_NE(testing::error_of([&] { dec.add({1, 9999}, o, {}); }).find("outside the vocabulary"), std::string::npos);
  o.sampling.top_p = 0;
  EXPECT_NE(testing::error_of([&] { dec.add({1}, o, {}); }).find("top_p"), std::string::npos);
  EXPECT_EQ(dec.active(), 0);
  EXPECT_THROW(BatchDecoder(*f.model, *f.tok, 0), Error);
  BatchDecoder small(*f.model, *f.tok, 1, 256, /*capacity=*/4);
  EXPECT_NE(testing::error_of([&] { small.add({1, 2, 3, 4, 5}, GenerateOptions{}, {}); }).find("a slot holds 4"), std::string::npos);
}

TEST(BatchDecoder, AFullSlotEndsWithLengthAsGenerateDoes) {
  Fixture& f = fixture();
  GenerateOptions o;
  o.sampling.temperature = 0;
  o.stop_at_eos = false;
  o.max_new_tokens = 50;
  const std::vector<int32_t> prompt = encode_prompt(*f.tok, "Once upon a time");
  BatchDecoder dec(*f.model, *f.tok, 1, 256, /*capacity=*/prompt.size() + 7);  // room for 7 tokens fed back
  Generation got;
  BatchDecoder::Callbacks cb;
  cb.on_done = [&](Generation&& g) { got = std::move(g); };
  dec.add(prompt, o, cb);
  while (dec.active() > 0) dec.step();
  EXPECT_EQ(got.finish_reason, "length");
  EXPECT_EQ(got.tokens.size(), 8u);  // the last one is predicted from a full slot
  const std::vector<int32_t> longer = generate(*f.model, *f.tok, {prompt}, o)[0].tokens;
  EXPECT_EQ(got.tokens, std::vector<int32_t>(longer.begin(), longer.begin() + 8));
}

}  // namespace
}  // namespace llm::generate
