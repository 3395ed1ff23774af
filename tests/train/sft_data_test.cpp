// Fine-tuning data: JSONL formats and their errors, loss masks under a chat template, packing with
// document boundaries, truncation accounting, rank slicing.
#include "engine/train/sft_data.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "tests/common/testing.h"

namespace llm::train {
namespace {

namespace fs = std::filesystem;
using testing::error_of;

std::string write_temp(const std::string& name, const std::string& text) {
  const fs::path dir = fs::temp_directory_path() / ("llm_sft_test_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string path = (dir / name).string();
  std::ofstream(path) << text;
  return path;
}

TEST(SftData, ReadsTheThreeFormats) {
  const std::string path = write_temp("formats.jsonl",
                                      "{\"prompt\": \"2+2=\", \"completion\": \"4\"}\n"
                                      "\n"
                                      "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, "
                                      "{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Hello\"}]}\n"
                                      "{\"conversations\": [{\"from\": \"human\", \"value\": \"Who?\"}, {\"from\": \"gpt\", \"value\": \"Me.\"}]}\n");
  const std::vector<Record> records = read_records(path);
  ASSERT_EQ(records.size(), 3u);
  EXPECT_EQ(records[2].where, path + ":4");
  const SftFormat f;
  const auto a = to_conversation(records[0], f), b = to_conversation(records[1], f), c = to_conversation(records[2], f);
  ASSERT_EQ(a.size(), 2u);
  EXPECT_EQ(a[0].role, "user");
  EXPECT_EQ(a[1].content, "4");
  ASSERT_EQ(b.size(), 3u);
  EXPECT_EQ(b[0].role, "system");
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(c[0].role, "user");
  EXPECT_EQ(c[1].role, "assistant");
  EXPECT_EQ(c[1].content, "Me.");
  // Prompts for sampling stop before the reply.
  const auto p = to_prompt(records[1], f);
  ASSERT_EQ(p.size(), 2u);
  EXPECT_EQ(p.back().content, "Hi");
  // A JSON array file (ShareGPT dumps) reads the same.
  const std::string array = write_temp("array.json", " [{\"prompt\": \"a\", \"completion\": \"b\"}]");
  EXPECT_EQ(read_records(array).size(), 1u);
}

TEST(SftData, ErrorsNameTheFileAndLine) {
  const std::string bad = write_temp("bad.jsonl", "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"a\",\n");
  EXPECT_EQ(error_of([&] { read_records(bad); }), bad + ":2: not valid JSON");
  const std::string list = write_temp("list.jsonl", "[1, 2]\n");
  EXPECT_EQ(error_of([&] { read_records(list); }), list + ": item 0: expected an object");
  const std::vector<Record> r = read_records(write_temp("shapes.jsonl",
                                                        "{\"text\": \"x\"}\n"
                                                        "{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}\n"
                                                        "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}\n"
                                                        "{\"prompt\": \"a\", \"completion\": [1]}\n"));
  const SftFormat f;
  EXPECT_NE(error_of([&] { to_conversation(r[0], f); }).find(":1: expected \"prompt\" and \"completion\""), std::string::npos);
  EXPECT_NE(error_of([&] { to_conversation(r[1], f); }).find(":2: messages[0]: unknown role \"robot\""), std::string::npos);
  EXPECT_NE(error_of([&] { to_conversation(r[2], f); }).find(":3: no assistant message to train on"), std::string::npos);
  EXPECT_NE(error_of([&] { to_conversation(r[3], f); }).find(":4: \"completion\": expected a string"), std::string::npos);
  EXPECT_EQ(error_of([] { read_records("/nonexistent/x.jsonl"); }), "/nonexistent/x.jsonl: cannot open file");
  // A directory opened as an empty stream: "no records", as if the file were empty.
  const std::string dir = fs::path(write_temp("x", "")).parent_path() / "dir.jsonl";
  fs::create_directories(dir);
  EXPECT_EQ(error_of([&] { read_records(dir); }), dir + ": a directory, not a file");
}

TEST(SftData, ChatTemplateMasksExactlyTheAssistantTurns) {
  const auto tok = data::make_byte_tokenizer();
  const generate::ChatTemplate chat;  // ChatML
  const std::vector<generate::Message> conv = {
      {"system", "S"}, {"user", "U1"}, {"assistant", "A1"}, {"user", "U2"}, {"assistant", "A2"}};
  const TokenizedExample ex = tokenize_chat(chat, *tok, conv, "test");
  ASSERT_EQ(ex.ids.size(), ex.trained.size());
  EXPECT_EQ(tok->decode(ex.ids), "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU1<|im_end|>\n"
                                 "<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nU2<|im_end|>\n"
                                 "<|im_start|>assistant\nA2<|im_end|>\n");
  // The trained tokens, in order, are the two replies with their end-of-turn markers.
  std::string trained;
  for (size_t i = 0; i < ex.ids.size(); ++i)
    if (ex.trained[i]) trained += tok->token_text(ex.ids[i]);
  EXPECT_EQ(trained, "A1<|im_end|>\nA2<|im_end|>\n");
}

TEST(SftData, PlainTextTrainsTheCompletionAndTheEnd) {
  const auto tok = data::make_byte_tokenizer();
  const TokenizedExample ex = tokenize_plain(*tok, {{"user", "ab="}, {"assistant", "ba"}});
  EXPECT_EQ(ex.ids, (std::vector<int32_t>{'a', 'b', '=', 'b', 'a', 256}));
  EXPECT_EQ(ex.trained, (std::vector<uint8_t>{0, 0, 0, 1, 1, 1}));
}

TokenizedExample example(int length, int32_t first, int trained_from) {
  TokenizedExample ex;
  for (int i = 0; i < length; ++i) {
    ex.ids.push_back(first + i);
    ex.trained.push_back(i >= trained_from);
  }
  return ex;
}

TEST(SftData, PackingKeepsExamplesApartAndCountsTruncation) {
  // Lengths 5, 4, 12 (too long for T = 8: cut) and 6 whose trained part is cut off entirely.
  const std::vector<TokenizedExample> ex = {example(5, 10, 2), example(4, 20, 1), example(12, 30, 3), example(12, 50, 10)};
  SftOptions o;
  o.B = 1;
  o.T = 8;
  o.seed = 3;
  SftDataset packed(ex, o, "test");
  EXPECT_EQ(packed.stats().examples, 4);
  EXPECT_EQ(packed.stats().truncated, 2);
  EXPECT_EQ(packed.stats().dropped, 1);
  EXPECT_EQ(packed.stats().trained_tokens, 3 + 3 + 6);  // trained targets (ids 1..) of the kept examples
  // Every row: inputs with targets = next token inside one example, -100 elsewhere; doc ids and
  // positions restart at each example.
  int64_t seen_trained = 0;
  for (int64_t r = 0; r < packed.rows(); ++r) {
    const data::Batch b = packed.next();
    const auto in = b.inputs.to_vector<int32_t>(), tg = b.targets.to_vector<int32_t>();
    const auto doc = b.doc.to_vector<int32_t>(), pos = b.positions.to_vector<int32_t>();
    ASSERT_EQ(in.size(), 8u);
    for (size_t j = 0; j < 8; ++j) {
      if (j > 0) {
        EXPECT_EQ(pos[j], doc[j] == doc[j - 1] ? pos[j - 1] + 1 : 0);
      }
      if (tg[j] != -100) {
        EXPECT_EQ(tg[j], in[j] + 1);  // the examples count upwards
        ++seen_trained;
      }
    }
  }
  EXPECT_EQ(seen_trained, packed.stats().trained_tokens);
  // Padding mode: one example per row.
  o.packing = false;
  SftDataset padded(ex, o, "test");
  EXPECT_EQ(padded.rows(), 3);
  EXPECT_FALSE(padded.next().doc.defined());
}

TEST(SftData, NothingToTrainOnIsAnError) {
  SftOptions o;
  o.T = 4;
  EXPECT_NE(error_of([&] { SftDataset({example(10, 0, 8)}, o, "x.jsonl"); })
                .find("x.jsonl: no example has anything left to train on after truncation to seq_len 4"),
            std::string::npos);
  EXPECT_EQ(error_of([&] { SftDataset({}, o, "x.jsonl"); }), "x.jsonl: no examples");
}

TEST(SftData, TwoRanksSplitWhatOneRankReads) {
  std::vector<TokenizedExample> ex;
  for (int i = 0; i < 13; ++i) ex.push_back(example(3 + i % 4, 100 * i, 1));
  SftOptions one;
  one.B = 4;
  one.T = 8;
  one.packing = false;
  SftOptions r0 = one, r1 = one;
  r0.B = r1.B = 2;
  r0.world_size = r1.world_size = 2;
  r1.rank = 1;
  SftDataset a(ex, one, "t"), b0(ex, r0, "t"), b1(ex, r1, "t");
  for (int step = 0; step < 6; ++step) {  // crosses epochs (13 rows, 4 per step)
    const auto whole = a.next().inputs.to_vector<int32_t>();
    auto half = b0.next().inputs.to_vector<int32_t>();
    const auto other = b1.next().inputs.to_vector<int32_t>();
    half.insert(half.end(), other.begin(), other.end());
    EXPECT_EQ(whole, half) << "step " << step;
  }
  // Resuming at a batch count continues the same stream.
  SftDataset c(ex, one, "t");
  c.set_batches(5);
  SftDataset d(ex, one, "t");
  for (int i = 0; i < 5; ++i) d.next();
  EXPECT_EQ(c.next().inputs.to_vector<int32_t>(), d.next().inputs.to_vector<int32_t>());
}

}  // namespace
}  // namespace llm::train
