#include "engine/core/profile.h"

#include <chrono>
#include <map>
#include <thread>

#include "engine/ops/ops.h"
#include "tests/common/gradcheck.h"
#include "tests/common/testing.h"

namespace llm {
namespace {

using testing::error_of;
using testing::param;

std::map<std::string, profile::Row> by_name(const std::vector<profile::Row>& rows) {
  std::map<std::string, profile::Row> m;
  for (const profile::Row& r : rows) m[r.name] = r;
  return m;
}

TEST(Profile, ChargesEachForwardOpAndBackwardNodeOnce) {
  Tensor x = param(Shape{3, 4}, 1), w = param(Shape{3, 4}, 2), b = param(Shape{4}, 3);
  profile::start(Device::cpu());
  Tensor y = x * w + b;
  Tensor loss = ops::mean(y * y);
  loss.backward();
  profile::mark("after backward");
  const auto rows = by_name(profile::stop());
  EXPECT_FALSE(profile::running());
  ASSERT_EQ(rows.count("Mul fwd"), 1u);
  EXPECT_EQ(rows.at("Mul fwd").calls, 2);  // x * w and y * y
  EXPECT_EQ(rows.at("Mul bwd").calls, 2);
  EXPECT_EQ(rows.at("Add fwd").calls, 1);
  EXPECT_EQ(rows.at("Add bwd").calls, 1);
  EXPECT_EQ(rows.at("AccumulateGrad bwd").calls, 3);  // x, w and b
  EXPECT_EQ(rows.at("after backward").calls, 1);
  EXPECT_EQ(rows.count(""), 0u);  // the origin is not a row
}

TEST(Profile, TimeRunsFromThePreviousMarkAndRowsComeMostFirst) {
  profile::start(Device::cpu());
  profile::mark("short");
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  profile::mark("slept");
  profile::mark("short");
  const auto rows = profile::stop();
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].name, "slept");
  EXPECT_GE(rows[0].seconds, 0.029);
  EXPECT_EQ(rows[1].calls, 2);
  EXPECT_LT(rows[1].seconds, rows[0].seconds);
  const std::string table = profile::format(rows, 1);
  EXPECT_NE(table.find("slept"), std::string::npos);
  EXPECT_NE(table.find("total"), std::string::npos);
}

TEST(Profile, NothingIsMarkedOutsideAProfileAndStopNeedsOne) {
  profile::mark("ignored");  // no profile: a no-op
  Tensor x = param(Shape{4}, 5);
  ops::sum(x * x).backward();
  EXPECT_FALSE(profile::running());
  EXPECT_NE(error_of([] { profile::stop(); }).find("no profile is running"), std::string::npos);
  profile::start(Device::cpu());
  profile::mark("kept");
  const auto rows = profile::stop();
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].name, "kept");
}

}  // namespace
}  // namespace llm
