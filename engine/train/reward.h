// Rewards for RL-style updates: a weighted sum of built-in scores (exact match of the final number,
// a regular expression, a length penalty) and an external program that scores completions it reads
// as JSON lines on stdin, one number per line on stdout.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace llm::train {

struct RewardConfig {
  // exact_number: 1 when the completion's final number equals the example's answer (its number after
  // GSM8K's "#### ", or the last number in it), else 0.
  float exact_number = 0;  // weight; 0 turns it off
  std::string answer_key = "answer";
  // regex: 1 when the pattern (ECMAScript syntax) matches somewhere in the completion, else 0.
  std::string regex;
  float regex_weight = 1;
  // length penalty: -(tokens beyond length_max) / length_max, so 0 within the budget.
  int64_t length_max = 0;  // 0 turns it off
  float length_weight = 1;
  // program: run through /bin/sh once per scoring batch.
  std::string program;
  float program_weight = 1;
  float program_timeout_s = 60;
};

struct Completion {
  const nlohmann::json* example;  // the prompt's record (its fields go to the program, answer_key to exact_number)
  std::string prompt, completion;
  int64_t completion_tokens = 0;
};

// The number a text ends on: after the last "####" when there is one, else the last number in it
// (commas between digit groups allowed). nullopt when there is none.
std::optional<double> final_number(const std::string& text);

class Reward {
 public:
  explicit Reward(RewardConfig config);  // throws when no reward is enabled, or a regex is invalid
  // One reward per completion. Throws llm::Error (with the program's stderr) when the program fails,
  // times out, or prints something other than one number per completion.
  std::vector<double> score(const std::vector<Completion>& batch) const;
  // Throws, naming `where` ("file:line"), when a prompt record lacks what the reward needs (for
  // exact_number, a number under answer_key): run over the prompts before training starts.
  void check_example(const nlohmann::json& example, const std::string& where) const;
  std::string describe() const;  // e.g. "1*exact_number + 0.1*length(<=64)"

 private:
  double expected_number(const nlohmann::json& example, const std::string& where) const;
  RewardConfig config_;
};

// Runs `command` with /bin/sh -c, writes `input` to its stdin, and returns its stdout; throws (naming
// the command, with its stderr) when it exits non-zero, is killed, or runs past timeout_s.
std::string run_program(const std::string& command, const std::string& input, double timeout_s);

}  // namespace llm::train
