#include "data/shards.h"

#include <filesystem>
#include <fstream>

#include "engine/core/error.h"
#include "engine/io/hdf5_file.h"
#include "tests/data/data_test_util.h"

namespace llm::testing {
namespace {

using data::ShardWriter;
using data::TokenShard;

TEST(Shards, WriteReadRoundTripAcrossShardFiles) {
  TempDir dir("shards");
  ShardWriter w(dir.str(), "train", {"test-tok", 50257, 50256}, /*max_tokens=*/10);
  const std::vector<int32_t> d1 = {50256, 1, 2, 3, 4, 5, 6};
  const std::vector<int32_t> d2 = {50256, 7, 8, 9, 10, 11, 12, 13};
  w.add_document(d1);
  w.add_document(d2);
  w.finish();
  ASSERT_EQ(w.files(), (std::vector<std::string>{"train_000000.h5", "train_000001.h5"}));
  EXPECT_EQ(w.num_tokens(), 15);
  EXPECT_EQ(w.num_documents(), 2);
  auto s0 = TokenShard::open(dir / "train_000000.h5");
  auto s1 = TokenShard::open(dir / "train_000001.h5");
  EXPECT_EQ(s0->read_all(), (std::vector<int32_t>{50256, 1, 2, 3, 4, 5, 6, 50256, 7, 8}));
  EXPECT_EQ(s1->read_all(), (std::vector<int32_t>{9, 10, 11, 12, 13}));
  EXPECT_EQ(s0->info().doc_offsets, (std::vector<int64_t>{0, 7}));
  EXPECT_TRUE(s1->info().doc_offsets.empty());  // the second document started in shard 0
  EXPECT_EQ(s0->info().dtype, "uint16");
  EXPECT_EQ(s0->info().tokenizer_identity, "test-tok");
  EXPECT_EQ(s0->info().vocab_size, 50257);
  EXPECT_EQ(s0->info().eot_id, 50256);
  std::vector<int32_t> part(3);
  s0->read(6, 3, part.data());
  EXPECT_EQ(part, (std::vector<int32_t>{6, 50256, 7}));
  EXPECT_THROW(s0->read(8, 3, part.data()), Error);
}

TEST(Shards, Uint32WhenTheVocabularyDoesNotFitUint16) {
  TempDir dir("shards32");
  for (int64_t vocab : {65536LL, 65537LL, 128256LL}) {
    const std::string prefix = "v" + std::to_string(vocab);
    ShardWriter w(dir.str(), prefix, {"t", vocab, 0});
    w.add_document({0, static_cast<int32_t>(vocab - 1), 1});
    w.finish();
    io::H5File f(dir / (prefix + "_000000.h5"), io::H5File::Mode::Read);
    EXPECT_EQ(f.dtype("tokens"), vocab <= 65536 ? io::H5Type::U16 : io::H5Type::U32) << vocab;
    EXPECT_EQ(TokenShard::open(dir / (prefix + "_000000.h5"))->read_all(),
              (std::vector<int32_t>{0, static_cast<int32_t>(vocab - 1), 1}));
  }
  ShardWriter w(dir.str(), "bad", {"t", 100, 0});
  EXPECT_THROW(w.add_document({100}), Error);
}

TEST(Shards, ReadsLlmcBinShards) {
  TempDir dir("bin");
  const auto tokens = random_ints(1000, 5, 0, 50257);
  data::write_llmc_bin(dir / "x_val_000000.bin", tokens);
  EXPECT_EQ(std::filesystem::file_size(dir / "x_val_000000.bin"), 1024u + 2000u);
  auto s = TokenShard::open(dir / "x_val_000000.bin");
  EXPECT_EQ(s->info().format, "llmc-bin");
  EXPECT_EQ(s->size(), 1000);
  EXPECT_EQ(s->read_all(), tokens);
  std::vector<int32_t> part(4);
  s->read(996, 4, part.data());
  EXPECT_EQ(part, std::vector<int32_t>(tokens.end() - 4, tokens.end()));
}

std::string error_of(const std::string& path) {
  try {
    TokenShard::open(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Shards, CorruptedOrTruncatedShardsGiveClearErrors) {
  TempDir dir("corrupt");
  data::write_llmc_bin(dir / "a.bin", random_ints(100, 1, 0, 1000));
  std::filesystem::resize_file(dir / "a.bin", 1024 + 150);
  std::string e = error_of(dir / "a.bin");
  EXPECT_NE(e.find("a.bin"), std::string::npos) << e;
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;

  std::ofstream(dir / "b.bin") << std::string(2000, 'x');
  e = error_of(dir / "b.bin");
  EXPECT_NE(e.find("not an llm.c token shard"), std::string::npos) << e;

  std::ofstream(dir / "c.bin") << "short";
  EXPECT_NE(error_of(dir / "c.bin").find("shorter than its 1024-byte header"), std::string::npos);

  ShardWriter w(dir.str(), "train", {"t", 1000, 0});
  w.add_document(random_ints(20000, 2, 0, 1000));
  w.finish();
  const std::string h5 = dir / "train_000000.h5";
  std::filesystem::resize_file(h5, std::filesystem::file_size(h5) / 2);
  e = error_of(h5);
  if (e.empty()) {  // HDF5 may open a cut file; reading the tokens must then fail clearly
    try {
      TokenShard::open(h5)->read_all();
    } catch (const Error& err) {
      e = err.what();
    }
  }
  EXPECT_NE(e.find("train_000000.h5"), std::string::npos) << e;

  EXPECT_NE(error_of(dir / "nothing.h5").find("no such shard file"), std::string::npos);
}

}  // namespace
}  // namespace llm::testing
