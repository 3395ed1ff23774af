#include "data/loader.h"

#include "data/prepare.h"
#include "engine/core/error.h"
#include "tests/data/data_test_util.h"

namespace llm::testing {
namespace {

using data::DataLoader;
using data::LoaderOptions;

// Token i of a ramp shard is (start + i) % 60000, so every batch says where it came from.
std::vector<int32_t> ramp(int64_t n, int32_t start = 0) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = static_cast<int32_t>((start + i) % 60000);
  return v;
}

LoaderOptions opts(int64_t B, int64_t T, LoaderOptions::Mode mode, int rank = 0, int world = 1, uint64_t seed = 1) {
  LoaderOptions o;
  o.B = B;
  o.T = T;
  o.mode = mode;
  o.rank = rank;
  o.world_size = world;
  o.seed = seed;
  return o;
}

struct Plain {
  std::vector<int32_t> in, tg;
  bool operator==(const Plain& o) const { return in == o.in && tg == o.tg; }
};
Plain next(DataLoader& dl) {
  Plain p;
  dl.next(p.in, p.tg);
  return p;
}

TEST(DataLoader, SequentialIsExactlyLlmc) {
  TempDir dir("seq");
  data::write_llmc_bin(dir / "s_000000.bin", ramp(100));
  DataLoader dl(dir / "s_*.bin", "train", opts(2, 8, LoaderOptions::Mode::Sequential));
  // llm.c: the batch at cursor c is tokens[c, c + B*T + 1); the cursor moves by B*T and goes back to
  // 0 when the next batch would pass the end: cursors 0, 16, ..., 80, then 96 + 17 > 100 -> 0.
  for (int round = 0; round < 2; ++round) {
    for (int64_t c = 0; c <= 80; c += 16) {
      const data::Batch b = dl.next();
      ASSERT_EQ(b.inputs.dtype(), DType::I32);
      ASSERT_EQ(b.inputs.shape(), (Shape{2, 8}));
      EXPECT_EQ(b.inputs.to_vector<int32_t>(), ramp(16, static_cast<int32_t>(c))) << "cursor " << c;
      EXPECT_EQ(b.targets.to_vector<int32_t>(), ramp(16, static_cast<int32_t>(c + 1))) << "cursor " << c;
    }
  }
}

TEST(DataLoader, SequentialRanksInterleaveTheSingleRankStream) {
  TempDir dir("seqrank");
  data::write_llmc_bin(dir / "s_000000.bin", ramp(1000));
  DataLoader one(dir / "s_*.bin", "", opts(2, 8, LoaderOptions::Mode::Sequential));
  DataLoader r0(dir / "s_*.bin", "", opts(2, 8, LoaderOptions::Mode::Sequential, 0, 2));
  DataLoader r1(dir / "s_*.bin", "", opts(2, 8, LoaderOptions::Mode::Sequential, 1, 2));
  for (int step = 0; step < 20; ++step) {  // 20 global batches of 32 tokens: before any wrap
    const Plain a = next(one), b = next(one);
    EXPECT_EQ(next(r0), a) << step;
    EXPECT_EQ(next(r1), b) << step;
  }
  EXPECT_EQ(r0.state().position, r1.state().position);  // checkpoints are rank-independent
}

TEST(DataLoader, SequentialWalksShardsInOrderAndWraps) {
  TempDir dir("multi");
  data::write_llmc_bin(dir / "d_000000.bin", ramp(40, 0));
  data::write_llmc_bin(dir / "d_000001.bin", ramp(30, 1000));
  DataLoader dl(dir / "d_*.bin", "", opts(1, 10, LoaderOptions::Mode::Sequential));
  const std::vector<int32_t> starts = {0, 10, 20, 1000, 1010, 0, 10};  // 20+10+1 <= 40, 30+11 > 40
  for (int32_t s : starts) EXPECT_EQ(next(dl).in, ramp(10, s)) << s;
}

TEST(DataLoader, RandomIsDeterministicFromTheSeedAndContiguous) {
  TempDir dir("rand");
  data::write_llmc_bin(dir / "r_000000.bin", ramp(5000));
  data::write_llmc_bin(dir / "r_000001.bin", ramp(300, 20000));
  DataLoader a(dir / "r_*.bin", "", opts(4, 16, LoaderOptions::Mode::Random, 0, 1, 42));
  DataLoader b(dir / "r_*.bin", "", opts(4, 16, LoaderOptions::Mode::Random, 0, 1, 42));
  DataLoader c(dir / "r_*.bin", "", opts(4, 16, LoaderOptions::Mode::Random, 0, 1, 43));
  bool differs = false, saw_second_shard = false;
  for (int step = 0; step < 50; ++step) {
    const Plain pa = next(a);
    EXPECT_EQ(pa, next(b));
    differs = differs || !(pa == next(c));
    for (int64_t row = 0; row < 4; ++row) {
      const int32_t first = pa.in[static_cast<size_t>(row * 16)];
      saw_second_shard = saw_second_shard || first >= 20000;
      EXPECT_EQ(std::vector<int32_t>(pa.in.begin() + row * 16, pa.in.begin() + row * 16 + 16), ramp(16, first));
      EXPECT_EQ(std::vector<int32_t>(pa.tg.begin() + row * 16, pa.tg.begin() + row * 16 + 16), ramp(16, first + 1));
      EXPECT_TRUE(first + 16 < 5000 || (first >= 20000 && first + 16 < 20300)) << "window crosses a shard end";
    }
  }
  EXPECT_TRUE(differs);
  EXPECT_TRUE(saw_second_shard);
}

TEST(DataLoader, RandomWorldSize2ReproducesWorldSize1With2B) {
  TempDir dir("randrank");
  data::write_llmc_bin(dir / "r.bin", ramp(3000));
  DataLoader one(dir / "r.bin", "", opts(6, 8, LoaderOptions::Mode::Random, 0, 1, 9));
  DataLoader r0(dir / "r.bin", "", opts(3, 8, LoaderOptions::Mode::Random, 0, 2, 9));
  DataLoader r1(dir / "r.bin", "", opts(3, 8, LoaderOptions::Mode::Random, 1, 2, 9));
  for (int step = 0; step < 10; ++step) {
    const Plain all = next(one), p0 = next(r0), p1 = next(r1);
    std::vector<int32_t> joined = p0.in;
    joined.insert(joined.end(), p1.in.begin(), p1.in.end());
    EXPECT_EQ(joined, all.in) << step;
    joined = p0.tg;
    joined.insert(joined.end(), p1.tg.begin(), p1.tg.end());
    EXPECT_EQ(joined, all.tg) << step;
  }
}

TEST(DataLoader, StateSaveRestoreContinuesIdentically) {
  TempDir dir("state");
  data::write_llmc_bin(dir / "a_0.bin", ramp(700));
  data::write_llmc_bin(dir / "a_1.bin", ramp(500, 30000));
  for (auto mode : {LoaderOptions::Mode::Sequential, LoaderOptions::Mode::Random}) {
    DataLoader dl(dir / "a_*.bin", "", opts(2, 16, mode, 0, 1, 5));
    for (int i = 0; i < 13; ++i) next(dl);
    const data::LoaderState saved = dl.state();
    EXPECT_EQ(saved.batches, 13);
    std::vector<Plain> want;
    for (int i = 0; i < 40; ++i) want.push_back(next(dl));
    DataLoader resumed(dir / "a_*.bin", "", opts(2, 16, mode, 0, 1, 5));
    resumed.set_state(saved);
    for (int i = 0; i < 40; ++i) EXPECT_EQ(next(resumed), want[static_cast<size_t>(i)]) << i;
    dl.reset();
    DataLoader fresh(dir / "a_*.bin", "", opts(2, 16, mode, 0, 1, 5));
    EXPECT_EQ(next(dl), next(fresh));
  }
  DataLoader dl(dir / "a_*.bin", "", opts(2, 16, LoaderOptions::Mode::Sequential));
  data::LoaderState bad;
  bad.shard = 7;
  EXPECT_THROW(dl.set_state(bad), Error);
}

// With vocab_size set (the trainer passes the model's), a token past it is an error naming the shard
// and position; it used to surface as "step N: embedding: id ... outside the vocabulary" with no file.
TEST(DataLoader, TokensPastTheVocabularyNameTheShard) {
  TempDir dir("vocab");
  data::write_llmc_bin(dir / "s_000000.bin", ramp(100));
  LoaderOptions o = opts(2, 8, LoaderOptions::Mode::Sequential);
  o.vocab_size = 50;
  DataLoader dl(dir / "s_*.bin", "train", o);
  for (int i = 0; i < 3; ++i) EXPECT_NO_THROW(dl.next());  // tokens 0 .. 48
  EXPECT_EQ(error_of([&] { dl.next(); }),
            dir / "s_000000.bin" + ": token 50 at position 50 is outside the model's vocabulary [0, 50)");
}

TEST(DataLoader, ReadsAPreparedDirectoryBySplit) {
  TempDir dir("prep");
  std::FILE* f = std::fopen((dir / "in.txt").c_str(), "w");
  std::fputs(std::string(2000, 'x').c_str(), f);
  std::fclose(f);
  data::PrepareOptions po;
  po.tokenizer = "byte";
  po.inputs = {dir / "in.txt"};
  po.out_dir = dir / "out";
  po.val_fraction = 0.25;
  data::prepare_dataset(po, nullptr);
  DataLoader train(dir / "out", "train", opts(2, 8, LoaderOptions::Mode::Sequential));
  DataLoader val(dir / "out", "val", opts(2, 8, LoaderOptions::Mode::Sequential));
  EXPECT_EQ(train.num_tokens(), 1 + 1500);
  EXPECT_EQ(val.num_tokens(), 1 + 500);
  EXPECT_EQ(train.tokenizer_identity(), "byte:vocab=257");
  const Plain p = next(train);
  EXPECT_EQ(p.in[0], 256);  // the end-of-text token opens each document
  EXPECT_EQ(p.in[1], 'x');
  EXPECT_THROW(DataLoader(dir / "out", "test", opts(2, 8, LoaderOptions::Mode::Sequential)), Error);
  EXPECT_THROW(DataLoader(dir / "out", "val", opts(2, 300, LoaderOptions::Mode::Sequential)), Error);
  EXPECT_THROW(DataLoader(dir / "nothing_*.bin", "", opts(2, 8, LoaderOptions::Mode::Sequential)), Error);
  EXPECT_THROW(data::parse_loader_mode("shuffled"), Error);
}

}  // namespace
}  // namespace llm::testing
