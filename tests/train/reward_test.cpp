// Rewards: the final-number rule, regex and length terms, their weights, and the external program
// with every way it can fail.
#include "engine/train/reward.h"

#include "tests/common/testing.h"

namespace llm::train {
namespace {

using testing::error_of;

TEST(Reward, FinalNumberFollowsGsm8kConventions) {
  EXPECT_EQ(final_number("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72"), 72.0);
  EXPECT_EQ(final_number("so 3 boxes of 12 make 36"), 36.0);
  EXPECT_EQ(final_number("it costs 1,234.50 dollars."), 1234.5);
  EXPECT_EQ(final_number("owes -7"), -7.0);
  EXPECT_EQ(final_number("#### 5 then 6"), 5.0);  // the number right after the marker
  EXPECT_FALSE(final_number("no digits here").has_value());
}

TEST(Reward, BuiltInsAreWeightedAndSummed) {
  RewardConfig c;
  c.exact_number = 2.0f;
  c.regex = "^The answer";
  c.regex_weight = 0.5f;
  c.length_max = 4;
  c.length_weight = 1.0f;
  const Reward r(c);
  const nlohmann::json ex = {{"question", "q"}, {"answer", "work...\n#### 42"}};
  const std::vector<Completion> batch = {
      {&ex, "q", "The answer is 42", 4},       // 2 + 0.5
      {&ex, "q", "I think 41", 4},             // 0
      {&ex, "q", "The answer: #### 42.", 6},   // 2 + 0.5 - 2/4
  };
  const std::vector<double> s = r.score(batch);
  EXPECT_DOUBLE_EQ(s[0], 2.5);
  EXPECT_DOUBLE_EQ(s[1], 0.0);
  EXPECT_DOUBLE_EQ(s[2], 2.0);
  EXPECT_EQ(r.describe(), "2*exact_number(answer) + 0.5*regex(^The answer) + 1*length(<=4)");
}

TEST(Reward, ConfigurationErrors) {
  EXPECT_NE(error_of([] { Reward r{RewardConfig{}}; }).find("reward: none is enabled"), std::string::npos);
  RewardConfig bad;
  bad.regex = "([unclosed";
  EXPECT_NE(error_of([&] { Reward r(bad); }).find("reward.regex: invalid pattern \"([unclosed\""), std::string::npos);
  RewardConfig exact;
  exact.exact_number = 1;
  const nlohmann::json no_answer = {{"question", "q"}};
  EXPECT_NE(error_of([&] { Reward(exact).score({{&no_answer, "q", "1", 1}}); }).find("no \"answer\" field"),
            std::string::npos);
  // Checked up front, the error names the record's file and line.
  EXPECT_EQ(error_of([&] { Reward(exact).check_example(no_answer, "rl.jsonl:3"); }).rfind("rl.jsonl:3: no \"answer\"", 0),
            0u);
  const nlohmann::json wordy = {{"answer", "none"}};
  EXPECT_EQ(error_of([&] { Reward(exact).check_example(wordy, "rl.jsonl:4"); })
                .rfind("rl.jsonl:4: \"answer\" holds no number for reward.exact_number: \"none\"", 0),
            0u);
  RewardConfig regex_only;
  regex_only.regex = "x";
  EXPECT_NO_THROW(Reward(regex_only).check_example(no_answer, "rl.jsonl:3"));  // needs no answer
}

TEST(Reward, ExternalProgramScoresJsonLines) {
  RewardConfig c;
  // Reward 1 when the completion repeats the example's "word" field: proves the fields arrive.
  c.program = "while read -r line; do case \"$line\" in *'\"completion\":\"hello\"'*'\"word\":\"hello\"'*) echo 1;; *) echo 0;; esac; done";
  c.program_weight = 3.0f;
  const Reward r(c);
  const nlohmann::json ex = {{"word", "hello"}};
  const std::vector<double> s = r.score({{&ex, "p", "hello", 1}, {&ex, "p", "bye", 1}});
  EXPECT_EQ(s, (std::vector<double>{3.0, 0.0}));
  // Sampled text can stop inside a UTF-8 sequence; the program still gets valid JSON lines.
  EXPECT_EQ(r.score({{&ex, "p", "caf\xc3", 1}}), (std::vector<double>{0.0}));
}

TEST(Reward, ExternalProgramFailuresAreReportedWithStderr) {
  const nlohmann::json ex = {{"answer", "1"}};
  const std::vector<Completion> two = {{&ex, "p", "a", 1}, {&ex, "p", "b", 1}};
  auto failure = [&](const std::string& program, float timeout = 10) {
    RewardConfig c;
    c.program = program;
    c.program_timeout_s = timeout;
    return error_of([&] { Reward(c).score(two); });
  };
  const std::string crash = failure("echo 'boom: bad input' >&2; exit 3");
  EXPECT_NE(crash.find("exited with status 3"), std::string::npos) << crash;
  EXPECT_NE(crash.find("boom: bad input"), std::string::npos) << crash;
  EXPECT_EQ(crash.back(), 't') << "the program's trailing newline is dropped, so no blank line follows the error";
  const std::string killed = failure("kill -SEGV $$");
  EXPECT_NE(killed.find("killed by signal 11"), std::string::npos) << killed;
  const std::string hang = failure("cat >/dev/null; echo 'thinking' >&2; sleep 30", 0.5f);
  EXPECT_NE(hang.find("no answer within 0.5 s, killed; its stderr: thinking"), std::string::npos) << hang;
  const std::string garbage = failure("cat >/dev/null; echo 1; echo banana");
  EXPECT_NE(garbage.find("line 2 is \"banana\", expected a number"), std::string::npos) << garbage;
  const std::string short_ = failure("cat >/dev/null; echo 1");
  EXPECT_NE(short_.find("printed 1 numbers for 2 completions"), std::string::npos) << short_;
  // A program that never reads its input still gets a clean answer (no SIGPIPE).
  RewardConfig c;
  c.program = "echo 0.5; echo 0.25";
  EXPECT_EQ(Reward(c).score(two), (std::vector<double>{0.5, 0.25}));
}

}  // namespace
}  // namespace llm::train
