// The recipe's dist section: values, strict errors naming the key, and the round trip through to_yaml.
#include <gtest/gtest.h>

#include "engine/train/config.h"
#include "tests/common/testing.h"

namespace llm::train {
namespace {
using testing::error_of;

TEST(DistConfig, DefaultsParseAndRoundTrip) {
  const TrainConfig d = parse_train_config("data: {train: x}", "x.yaml");
  EXPECT_EQ(d.dist_backend, "auto");
  EXPECT_EQ(d.zero, 0);
  EXPECT_FLOAT_EQ(d.bucket_mb, 25.f);
  EXPECT_FLOAT_EQ(d.timeout_s, 300.f);
  const TrainConfig c = parse_train_config("data: {train: x}\ndist: {backend: mpi, zero: 1, bucket_mb: 4.5, timeout_s: 30}",
                                           "x.yaml", {"dist.timeout_s=45"});
  EXPECT_EQ(c.dist_backend, "mpi");
  EXPECT_EQ(c.zero, 1);
  EXPECT_FLOAT_EQ(c.bucket_mb, 4.5f);
  EXPECT_FLOAT_EQ(c.timeout_s, 45.f);
  const std::string yaml = to_yaml(c);
  EXPECT_NE(yaml.find("dist:\n  backend: mpi\n  zero: 1\n  bucket_mb: 4.5\n  timeout_s: 45\n"), std::string::npos) << yaml;
  const TrainConfig back = parse_train_config(yaml, "back.yaml");
  EXPECT_EQ(back.dist_backend, "mpi");
  EXPECT_EQ(back.zero, 1);
  EXPECT_FLOAT_EQ(back.bucket_mb, 4.5f);
  EXPECT_FLOAT_EQ(back.timeout_s, 45.f);
}

TEST(DistConfig, BadValuesNameTheKey) {
  auto parse = [](const std::string& dist) { return error_of([&] { parse_train_config("data: {train: x}\ndist: " + dist, "x.yaml"); }); };
  EXPECT_EQ(parse("{backend: tcp}"), "x.yaml: dist.backend: expected auto, single, mpi or nccl, got \"tcp\"");
  EXPECT_EQ(parse("{zero: 2}"), "x.yaml: dist.zero: expected 0 or 1, got 2");
  EXPECT_EQ(parse("{zero: yes}"), "x.yaml: dist.zero: expected an integer, got \"yes\"");
  EXPECT_EQ(parse("{bucket_mb: 0}"), "x.yaml: dist.bucket_mb: must be positive, got 0");
  EXPECT_EQ(parse("{timeout_s: -1}"), "x.yaml: dist.timeout_s: must be positive, got -1");
  EXPECT_EQ(parse("{timeout_s: 1e18}"), "x.yaml: dist.timeout_s: at most 1e9 seconds, got 1e+18");
  EXPECT_EQ(parse("{ranks: 4}"), "x.yaml: dist.ranks: unknown key");
}

}  // namespace
}  // namespace llm::train
