// The data pipeline behind `llm-data`: prepare (text/JSONL -> token shards), inspect, and the id
// text format of encode/decode.
//
// Documents: a .jsonl file holds one document per non-empty line (a JSON object with a string
// field "text"); any other file is one document. Every document is preceded by the tokenizer's
// eot_id() (llm.c's convention), so there is an end-of-text token between any two documents.
//
// Train/val split with val_fraction f: with N documents and floor(N*f) >= 1, document i goes to val
// when floor((i+1)*f) > floor(i*f) (evenly spread, exactly floor(N*f) of them). With fewer documents
// (e.g. one text file, as tinyshakespeare) every document is split by tokens instead: the last
// floor(len*f) tokens go to val (nanoGPT's shakespeare split). f = 0 writes no val split.
//
// Layout of DIR: train_000000.h5 ..., val_000000.h5 ... (see shards.h) and meta.json with the
// tokenizer spec and identity, vocab size, eot id, token dtype and per-split shards/tokens/documents.
#pragma once
#include <cstdint>
#include <map>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

namespace llm::data {

struct PrepareOptions {
  std::string tokenizer;            // spec for load_tokenizer()
  std::vector<std::string> inputs;  // .txt (or any text) and .jsonl files
  std::string out_dir;
  double val_fraction = 0.1;
  int64_t shard_tokens = 100'000'000;  // at most this many tokens per shard file
};

struct PrepareResult {
  int64_t train_tokens = 0, val_tokens = 0;
  int64_t train_documents = 0, val_documents = 0;
  double seconds = 0;
  double tokens_per_second = 0;
};

// Tokenizes and writes DIR. `progress` (may be null) gets a progress bar with tokens/s, redrawn in
// place with '\r' and finished with a newline.
PrepareResult prepare_dataset(const PrepareOptions& options, std::ostream* progress);

// DIR/meta.json, read and checked (format "llm-data"; each split an object with a list of shard file
// names and a token count; optional fields of the right types): the one reader of the file, for
// inspect, the DataLoader and the trainer. Any problem is an llm::Error naming the file and key.
struct DatasetSplit {
  std::vector<std::string> shards;  // file names inside DIR
  int64_t tokens = 0;
};
struct DatasetMeta {
  std::string path;  // DIR/meta.json
  std::string tokenizer, tokenizer_identity, dtype;
  int64_t vocab_size = 0;
  int64_t eot_id = -1;
  std::map<std::string, DatasetSplit> splits;
};
DatasetMeta read_dataset_meta(const std::string& dir);

// Prints splits, shard counts, token and document counts and a decoded sample of sample_tokens.
void inspect_dataset(const std::string& dir, std::ostream& out, int64_t sample_tokens = 64);

// "1 2 3" <-> ids. parse_ids throws llm::Error naming `origin` and the bad word.
std::string format_ids(const std::vector<int32_t>& ids);
std::vector<int32_t> parse_ids(std::string_view text, const std::string& origin);

}  // namespace llm::data
