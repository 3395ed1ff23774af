// Token shards on disk.
//
// HDF5 shard (DIR/train_000000.h5 ...): dataset "tokens" (1-D, contiguous, uint16 when the
// vocabulary has at most 65,536 ids, else uint32); dataset "doc_offsets" (int64: the index in
// "tokens" where each document that starts in this shard begins; a document cut by the shard size
// continues in the next shard); root attributes format = "llm-token-shard", version, num_tokens,
// num_documents, vocab_size, eot_id, tokenizer_identity.
//
// llm.c / nanoGPT .bin shard: 256 int32 header (magic 20240520, version 1, token count) followed by
// uint16 tokens; llm.c's LLaMA-3 variant (magic 20240801, version 7) holds uint32 tokens. Read only.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace llm::data {

struct ShardInfo {
  std::string path;
  std::string format;              // "hdf5" or "llmc-bin"
  std::string dtype;               // "uint16" or "uint32"
  int64_t num_tokens = 0;
  int64_t vocab_size = -1;         // -1 when the file does not say (.bin)
  int32_t eot_id = -1;
  std::string tokenizer_identity;  // empty when the file does not say (.bin)
  std::vector<int64_t> doc_offsets;
};

// A read-only shard; tokens are read by range so a shard never has to fit in memory.
class TokenShard {
 public:
  virtual ~TokenShard() = default;
  // Detects the format from the file's first bytes (HDF5 signature or llm.c magic).
  static std::unique_ptr<TokenShard> open(const std::string& path);
  const ShardInfo& info() const { return info_; }
  int64_t size() const { return info_.num_tokens; }
  // Tokens [offset, offset + count) as int32.
  virtual void read(int64_t offset, int64_t count, int32_t* out) const = 0;
  std::vector<int32_t> read_all() const;

 protected:
  ShardInfo info_;
};

struct ShardHeader {
  std::string tokenizer_identity;
  int64_t vocab_size = 0;
  int32_t eot_id = -1;
};

// Writes prefix_000000.h5, prefix_000001.h5 ... into dir, each at most max_tokens tokens, each
// written atomically. Documents are appended whole (the caller includes any separator token).
class ShardWriter {
 public:
  ShardWriter(std::string dir, std::string prefix, ShardHeader header, int64_t max_tokens = 100'000'000);
  void add_document(const std::vector<int32_t>& tokens);
  void finish();  // writes the last partial shard; no file at all when nothing was added
  const std::vector<std::string>& files() const { return files_; }  // names relative to dir
  int64_t num_tokens() const { return total_tokens_; }
  int64_t num_documents() const { return total_docs_; }
  bool uses_uint16() const { return header_.vocab_size <= 65536; }

 private:
  void flush();
  std::string dir_, prefix_;
  ShardHeader header_;
  int64_t max_tokens_;
  std::vector<uint32_t> buffer_;
  std::vector<int64_t> doc_offsets_;
  std::vector<std::string> files_;
  int64_t total_tokens_ = 0, total_docs_ = 0;
};

// Writes an llm.c .bin shard (uint16 tokens; every id must be < 65,536). For tests and export.
void write_llmc_bin(const std::string& path, const std::vector<int32_t>& tokens);

}  // namespace llm::data
