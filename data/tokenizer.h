// Tokenizers: GPT-2 byte-level BPE (encoder.json + vocab.bpe, or a Hugging Face tokenizer.json),
// SentencePiece models (LLaMA family), and a byte-level tokenizer for tiny experiments.
//
// encode() treats its input as plain text: special-token strings such as "<|endoftext|>" inside the
// text are encoded as ordinary characters, never as the special id (so untrusted data cannot inject
// control tokens). Callers insert special ids themselves (special_id() finds them by name); the data
// pipeline puts eot_id() before every document. encode() never adds BOS. encode_with_special() is
// for trusted text that spells its control tokens out, such as a rendered chat template.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace llm::data {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  // Concatenated bytes of the tokens; ids outside the vocabulary throw llm::Error.
  virtual std::string decode(const std::vector<int32_t>& ids) const;
  // The bytes one token stands for (a special token gives its name, e.g. "<|endoftext|>").
  virtual std::string token_text(int32_t id) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual int32_t eot_id() const = 0;   // end of text / EOS, put between documents; -1 if none
  virtual int32_t bos_id() const = 0;   // -1 if none
  // The id of a special/added token by its text (e.g. "<|endoftext|>", "</s>"), or -1.
  virtual int32_t special_id(std::string_view name) const = 0;
  // The text of every special/added token (control tokens, chat markers); by default BOS and EOT.
  virtual std::vector<std::string> special_tokens() const;
  // encode(), except that special-token text anywhere in `text` becomes that token's single id (the
  // longest match at a position wins), as Hugging Face tokenizers treat added tokens; the text
  // between is encoded as plain text piece by piece.
  std::vector<int32_t> encode_with_special(std::string_view text) const;
  // Tells two tokenizers apart: kind, vocabulary size and a hash of the files it was built from.
  virtual std::string identity() const = 0;
};

// spec: "byte"; a directory holding tokenizer.json, encoder.json + vocab.bpe, or tokenizer.model
// (tried in that order); or the path of one of those files (vocab.bpe is looked up next to
// encoder.json). Throws llm::Error naming the path on any problem.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec);

// The individual kinds, for callers that know what they have.
std::unique_ptr<Tokenizer> make_byte_tokenizer();
std::unique_ptr<Tokenizer> load_gpt2_bpe(const std::string& encoder_json, const std::string& vocab_bpe);
std::unique_ptr<Tokenizer> load_hf_tokenizer_json(const std::string& path);
std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& model_path);

// 64-bit FNV-1a of a file's bytes as 16 hex digits, for identities.
std::string file_fingerprint(const std::string& path);
std::string read_file(const std::string& path);  // whole file; llm::Error naming the path on failure
// Appends the UTF-8 encoding of a Unicode code point (up to U+10FFFF).
void append_utf8(std::string& out, uint32_t code_point);

}  // namespace llm::data
