#include "data/prepare.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data/loader.h"
#include "data/shards.h"
#include "engine/core/error.h"
#include "tests/data/data_test_util.h"

namespace llm::testing {
namespace {

void write_text(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

std::vector<int32_t> tokens_of(const std::string& dir, const std::string& split) {
  const auto meta = nlohmann::json::parse(data::read_file(dir + "/meta.json"));
  std::vector<int32_t> all;
  for (const auto& name : meta["splits"][split]["shards"]) {
    const auto t = data::TokenShard::open(dir + "/" + name.get<std::string>())->read_all();
    all.insert(all.end(), t.begin(), t.end());
  }
  return all;
}

TEST(Prepare, TextFilesAreDocumentsSeparatedByEot) {
  TempDir dir("prep_txt");
  write_text(dir / "a.txt", "ab");
  write_text(dir / "b.txt", "cde");
  data::PrepareOptions o;
  o.tokenizer = "byte";
  o.inputs = {dir / "a.txt", dir / "b.txt"};
  o.out_dir = dir / "out";
  o.val_fraction = 0;
  std::ostringstream progress;
  const auto r = data::prepare_dataset(o, &progress);
  EXPECT_EQ(tokens_of(o.out_dir, "train"), (std::vector<int32_t>{256, 'a', 'b', 256, 'c', 'd', 'e'}));
  EXPECT_TRUE(tokens_of(o.out_dir, "val").empty());
  EXPECT_EQ(r.train_documents, 2);
  EXPECT_NE(progress.str().find("tok/s"), std::string::npos);
  EXPECT_EQ(progress.str().back(), '\n');
  const auto meta = nlohmann::json::parse(data::read_file(o.out_dir + "/meta.json"));
  EXPECT_EQ(meta["tokenizer_identity"], "byte:vocab=257");
  EXPECT_EQ(meta["dtype"], "uint16");
  EXPECT_EQ(meta["splits"]["train"]["tokens"], 7);
  auto shard = data::TokenShard::open(o.out_dir + "/train_000000.h5");
  EXPECT_EQ(shard->info().doc_offsets, (std::vector<int64_t>{0, 3}));
}

TEST(Prepare, JsonlDocumentsSplitEvenlyIntoVal) {
  TempDir dir("prep_jsonl");
  std::string lines;
  for (int i = 0; i < 10; ++i) lines += "{\"text\": \"d" + std::to_string(i) + "\", \"id\": " + std::to_string(i) + "}\n";
  write_text(dir / "in.jsonl", lines + "\n");  // a blank line is skipped
  data::PrepareOptions o;
  o.tokenizer = "byte";
  o.inputs = {dir / "in.jsonl"};
  o.out_dir = dir / "out";
  o.val_fraction = 0.1;
  const auto r = data::prepare_dataset(o, nullptr);
  EXPECT_EQ(r.train_documents, 9);
  EXPECT_EQ(r.val_documents, 1);
  EXPECT_EQ(tokens_of(o.out_dir, "val"), (std::vector<int32_t>{256, 'd', '9'}));  // the 10th document
  EXPECT_EQ(tokens_of(o.out_dir, "train").size(), 27u);
}

TEST(Prepare, TinyShakespeareWithGpt2SplitsByTokens) {
  TempDir dir("prep_ts");
  data::PrepareOptions o;
  o.tokenizer = asset("gpt2");
  o.inputs = {asset("tinyshakespeare/input.txt")};
  o.out_dir = dir / "out";
  o.shard_tokens = 200000;  // forces two train shards
  const auto r = data::prepare_dataset(o, nullptr);
  // 338,025 tokens: the last floor(10%) = 33,802 go to val; each part starts with <|endoftext|>.
  EXPECT_EQ(r.train_tokens, 1 + 338025 - 33802);
  EXPECT_EQ(r.val_tokens, 1 + 33802);
  const auto train = tokens_of(o.out_dir, "train");
  ASSERT_EQ(train.size(), static_cast<size_t>(r.train_tokens));
  EXPECT_EQ(train[0], 50256);
  EXPECT_EQ(train[1], 5962);  // "First"
  EXPECT_TRUE(std::filesystem::exists(o.out_dir + "/train_000001.h5"));
  std::ostringstream out;
  data::inspect_dataset(o.out_dir, out, 8);
  EXPECT_NE(out.str().find("train: 2 shard(s), 304224 tokens"), std::string::npos) << out.str();
  EXPECT_NE(out.str().find("First Citizen"), std::string::npos) << out.str();
  // A second run with one shard removes the stale second shard.
  o.shard_tokens = 100'000'000;
  data::prepare_dataset(o, nullptr);
  EXPECT_FALSE(std::filesystem::exists(o.out_dir + "/train_000001.h5"));
}

TEST(Prepare, BadInputNamesFileAndLine) {
  TempDir dir("prep_bad");
  write_text(dir / "in.jsonl", "{\"text\": \"ok\"}\n{\"body\": \"no text\"}\n");
  data::PrepareOptions o;
  o.tokenizer = "byte";
  o.inputs = {dir / "in.jsonl"};
  o.out_dir = dir / "out";
  try {
    data::prepare_dataset(o, nullptr);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("in.jsonl:2"), std::string::npos) << e.what();
  }
  write_text(dir / "in.jsonl", "{\"text\": \"ok\"}\n{not json\n");
  EXPECT_THROW(data::prepare_dataset(o, nullptr), Error);
  o.inputs = {dir / "missing.txt"};
  EXPECT_THROW(data::prepare_dataset(o, nullptr), Error);
  EXPECT_THROW(data::inspect_dataset(dir / "nowhere", std::cout), Error);
}

// Inputs with no text are an error naming them, not a data set of lone separators; an empty
// document among others is skipped.
TEST(Prepare, InputsWithoutTextAreAnError) {
  TempDir dir("prep_empty");
  write_text(dir / "empty.txt", "");
  write_text(dir / "blank.jsonl", "\n{\"text\": \"\"}\n");
  data::PrepareOptions o;
  o.tokenizer = "byte";
  o.inputs = {dir / "empty.txt", dir / "blank.jsonl"};
  o.out_dir = dir / "out";
  o.val_fraction = 0;
  try {
    data::prepare_dataset(o, nullptr);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "prepare: the input files hold no text: " + (dir / "empty.txt") + ", " +
                                         (dir / "blank.jsonl"));
  }
  EXPECT_FALSE(std::filesystem::exists(o.out_dir + "/meta.json"));
  write_text(dir / "a.txt", "ab");
  o.inputs = {dir / "empty.txt", dir / "a.txt", dir / "blank.jsonl"};
  const auto r = data::prepare_dataset(o, nullptr);
  EXPECT_EQ(tokens_of(o.out_dir, "train"), (std::vector<int32_t>{256, 'a', 'b'}));
  EXPECT_EQ(r.train_documents, 1);
}

// A run that fails after replacing shards of an earlier run in the same directory removes the earlier
// meta.json, which no longer describes them (it was left in place: a data set whose meta.json lists
// other shards than it holds).
TEST(Prepare, FailedRunDoesNotLeaveAStaleMetaJson) {
  TempDir dir("prep_stale");
  write_text(dir / "a.txt", std::string(300, 'a'));
  data::PrepareOptions o;
  o.tokenizer = "byte";
  o.inputs = {dir / "a.txt"};
  o.out_dir = dir / "out";
  o.val_fraction = 0;
  o.shard_tokens = 100;
  data::prepare_dataset(o, nullptr);
  ASSERT_TRUE(std::filesystem::exists(o.out_dir + "/meta.json"));
  write_text(dir / "b.jsonl", "{\"text\": \"" + std::string(250, 'b') + "\"}\n{not json\n");
  o.inputs = {dir / "b.jsonl"};
  EXPECT_THROW(data::prepare_dataset(o, nullptr), Error);  // after writing two new 100-token shards
  EXPECT_FALSE(std::filesystem::exists(o.out_dir + "/meta.json"));
  // A failure before any shard is written leaves the earlier data set alone.
  o.inputs = {dir / "a.txt"};
  data::prepare_dataset(o, nullptr);
  write_text(dir / "c.jsonl", "{not json\n");
  o.inputs = {dir / "c.jsonl"};
  EXPECT_THROW(data::prepare_dataset(o, nullptr), Error);
  EXPECT_TRUE(std::filesystem::exists(o.out_dir + "/meta.json"));
}

// A damaged meta.json: one llm::Error naming the file and key, from inspect and from the DataLoader
// alike (inspect used to end with a bare nlohmann exception, or read past a missing "shards" key).
TEST(Prepare, CorruptMetaJsonNamesFileAndKey) {
  TempDir dir("prep_meta");
  write_text(dir / "a.txt", std::string(200, 'x'));
  data::PrepareOptions o;
  o.tokenizer = "byte";
  o.inputs = {dir / "a.txt"};
  o.out_dir = dir / "out";
  data::prepare_dataset(o, nullptr);
  const std::string meta = o.out_dir + "/meta.json";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"[]", "expected a JSON object"},
      {R"({"format": 5})", "format is not \"llm-data\""},
      {R"({"format": "llm-data"})", "splits: expected an object"},
      {R"({"format": "llm-data", "splits": {"train": {}}})", "splits.train.shards: expected a list of shard file names"},
      {R"({"format": "llm-data", "splits": {"train": {"shards": [5], "tokens": 1}}})",
       "splits.train.shards: expected shard file names, got 5"},
      {R"({"format": "llm-data", "splits": {"train": {"shards": [], "tokens": "many"}}})",
       "splits.train.tokens: expected an integer, got \"many\""},
      {R"({"format": "llm-data", "tokenizer": 5, "splits": {}})", "tokenizer: expected a string, got 5"},
  };
  for (const auto& [text, message] : cases) {
    write_text(meta, text);
    for (int reader = 0; reader < 2; ++reader) {
      try {
        if (reader == 0) {
          std::ostringstream out;
          data::inspect_dataset(o.out_dir, out);
        } else {
          data::LoaderOptions lo;
          lo.B = 1;
          lo.T = 4;
          data::DataLoader loader(o.out_dir, "train", lo);
        }
        ADD_FAILURE() << (reader ? "DataLoader" : "inspect") << " accepted " << text;
      } catch (const Error& e) {
        EXPECT_EQ(std::string(e.what()).rfind(meta + ": ", 0), 0u) << e.what();
        EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
      }
    }
  }
}

TEST(Prepare, IdTextFormat) {
  EXPECT_EQ(data::format_ids({1, 22, 333}), "1 22 333");
  EXPECT_EQ(data::parse_ids(" 1 22\n333 \n", "t"), (std::vector<int32_t>{1, 22, 333}));
  EXPECT_THROW(data::parse_ids("1 -2", "t"), Error);
  EXPECT_THROW(data::parse_ids("1 2x", "t"), Error);
}

}  // namespace
}  // namespace llm::testing
