// Supervised fine-tuning data: JSONL (or a JSON array) of prompt/completion pairs, OpenAI-style
// {"messages": [...]} or ShareGPT-style {"conversations": [...]}, formatted with the model's chat
// template, with the loss only on what the model should learn to write (completions, assistant
// turns), cut into rows of seq_len tokens either packed (several examples per row, attention kept
// inside each through document ids, positions restarting) or padded (one example per row).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/loader.h"
#include "data/tokenizer.h"
#include "engine/generate/chat.h"

namespace llm::train {

// The records of a .jsonl file (one JSON object per line; blank lines skipped) or of a .json file
// holding one array of objects. Errors name the file and line.
struct Record {
  nlohmann::json fields;
  std::string where;  // "file:line", for messages
};
std::vector<Record> read_records(const std::string& path);

struct SftFormat {
  std::string prompt_key = "prompt";          // prompt/completion records (GSM8K: question)
  std::string completion_key = "completion";  // (GSM8K: answer)
  bool chat_template = true;  // false: plain text, prompt then completion then the end-of-text token
  std::string system_prompt;  // prepended as a system message when non-empty (chat template only)
};

// A record as a conversation: {prompt_key, completion_key} → user + assistant, {"messages": [{role,
// content}]}, or {"conversations": [{from: human|gpt|system, value}]}. Errors name record.where.
std::vector<generate::Message> to_conversation(const Record& record, const SftFormat& format);

// A record as the conversation a reply should follow (for sampling completions): its messages up to
// the last user turn, or the system prompt and the prompt_key field as the user's turn.
std::vector<generate::Message> to_prompt(const Record& record, const SftFormat& format);

// Token ids of a conversation and which of them are trained on (assistant turns with their
// end-of-turn markers).
struct TokenizedExample {
  std::vector<int32_t> ids;
  std::vector<uint8_t> trained;  // per id: 1 when the model learns to produce it
};
// Through the chat template (ChatTemplate::encode_with_mask); errors are prefixed with `where`.
TokenizedExample tokenize_chat(const generate::ChatTemplate& chat, const data::Tokenizer& tokenizer,
                               const std::vector<generate::Message>& messages, const std::string& where);
// Plain text: BOS (when the tokenizer has one), each message's content, then the end-of-text token.
TokenizedExample tokenize_plain(const data::Tokenizer& tokenizer, const std::vector<generate::Message>& messages);

struct SftOptions {
  int64_t B = 8, T = 256;
  bool packing = true;
  uint64_t seed = 1337;
  int rank = 0, world_size = 1;
};

// What happened to the examples on their way into rows.
struct SftStats {
  int64_t examples = 0;    // read
  int64_t truncated = 0;   // longer than T + 1 tokens, cut
  int64_t dropped = 0;     // nothing left to train on after the cut
  int64_t rows = 0;        // rows of T tokens
  int64_t trained_tokens = 0;  // target positions with a loss
  std::string summary() const;
};

// A seeded permutation of 0..n-1 per epoch, read as one endless stream: at(g) is element g % n of
// epoch g / n's order. Data sets use it to visit records in a new order every epoch, resumably.
class EpochOrder {
 public:
  EpochOrder(int64_t n, uint64_t seed) : n_(n), seed_(seed) {}
  int64_t at(int64_t g);

 private:
  int64_t n_;
  uint64_t seed_;
  int64_t epoch_ = -1;
  std::vector<int64_t> order_;
};

// Rows of T input tokens with their targets (-100 where there is no loss). Rows are made once from the
// examples (in a seeded shuffled order); every epoch serves them in a new seeded order. A global batch
// is world_size * B consecutive rows of that stream, rank r taking rows r*B .. r*B + B - 1, so world
// size 2 with B equals world size 1 with 2B. Deterministic from the seed; the position is one number.
class SftDataset {
 public:
  SftDataset(const std::vector<TokenizedExample>& examples, const SftOptions& options, const std::string& source);

  data::Batch next();
  int64_t batches() const { return batches_; }  // served so far (the resumable state)
  void set_batches(int64_t n) { batches_ = n; }
  const SftStats& stats() const { return stats_; }
  int64_t rows() const { return static_cast<int64_t>(rows_.size()); }

 private:
  struct Row {
    std::vector<int32_t> inputs, targets, doc, positions;
  };
  SftOptions opt_;
  std::vector<Row> rows_;
  SftStats stats_;
  int64_t batches_ = 0;
  EpochOrder order_{1, 0};
};

// Tokenizes every record (chat template or plain) for SftDataset; `where` of a failing record in errors.
std::vector<TokenizedExample> tokenize_records(const std::vector<Record>& records, const SftFormat& format,
                                               const data::Tokenizer& tokenizer, const generate::ChatTemplate& chat);

}  // namespace llm::train
