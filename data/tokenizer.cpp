// The factory, the byte tokenizer and helpers shared by the tokenizers.
#include "data/tokenizer.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/core/error.h"

namespace llm::data {

namespace fs = std::filesystem;

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (int32_t id : ids) out += token_text(id);
  return out;
}

std::vector<std::string> Tokenizer::special_tokens() const {
  std::vector<std::string> out;
  for (int32_t id : {bos_id(), eot_id()})
    if (id >= 0) out.push_back(token_text(id));
  return out;
}

std::vector<int32_t> Tokenizer::encode_with_special(std::string_view text) const {
  std::vector<std::string> specials = special_tokens();
  specials.erase(std::remove(specials.begin(), specials.end(), std::string()), specials.end());
  // Longest first, so "<|im_start|>" wins over a special "<|im" at the same position.
  std::sort(specials.begin(), specials.end(), [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  bool starts[256] = {};  // first bytes of specials: most positions are rejected by one lookup
  for (const std::string& s : specials) starts[static_cast<unsigned char>(s[0])] = true;
  std::vector<int32_t> out;
  size_t plain = 0;  // start of the text not yet encoded
  auto flush = [&](size_t end) {
    if (end > plain) {
      const std::vector<int32_t> ids = encode(text.substr(plain, end - plain));
      out.insert(out.end(), ids.begin(), ids.end());
    }
  };
  for (size_t i = 0; i < text.size();) {
    const std::string* hit = nullptr;
    for (size_t k = 0; starts[static_cast<unsigned char>(text[i])] && k < specials.size(); ++k)
      if (text.compare(i, specials[k].size(), specials[k]) == 0) {
        hit = &specials[k];
        break;
      }
    if (!hit) {
      ++i;
      continue;
    }
    flush(i);
    const int32_t id = special_id(*hit);
    LLM_CHECK(id >= 0, identity(), ": special token '", *hit, "' has no id");
    out.push_back(id);
    i += hit->size();
    plain = i;
  }
  flush(text.size());
  return out;
}

std::string read_file(const std::string& path) {
  std::error_code ec;  // a directory opens as a stream and reads as empty text: say what it is
  LLM_CHECK(!fs::is_directory(path, ec), path, ": a directory, not a file");
  std::ifstream f(path, std::ios::binary);
  LLM_CHECK(f.good(), path, ": cannot open file");
  std::ostringstream ss;
  ss << f.rdbuf();
  LLM_CHECK(!f.bad(), path, ": read error");
  return ss.str();
}

std::string file_fingerprint(const std::string& path) {
  const std::string bytes = read_file(path);
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 1099511628211ull;
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

namespace {

// 256 byte tokens and one end-of-text token (256): the smallest tokenizer that round-trips anything.
class ByteTokenizer final : public Tokenizer {
 public:
  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int32_t> ids(text.size());
    for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
    return ids;
  }
  std::string token_text(int32_t id) const override {
    LLM_CHECK(id >= 0 && id <= 256, "byte tokenizer: token id ", id, " is outside the vocabulary [0, 257)");
    return id == 256 ? std::string("<|endoftext|>") : std::string(1, static_cast<char>(id));
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string out;
    out.reserve(ids.size());
    for (int32_t id : ids) {
      if (id == 256) out += "<|endoftext|>";  // so documents stay visible in decoded streams
      else out += token_text(id);
    }
    return out;
  }
  int64_t vocab_size() const override { return 257; }
  int32_t eot_id() const override { return 256; }
  int32_t bos_id() const override { return -1; }
  int32_t special_id(std::string_view name) const override { return name == "<|endoftext|>" ? 256 : -1; }
  std::string identity() const override { return "byte:vocab=257"; }
};

}  // namespace

std::unique_ptr<Tokenizer> make_byte_tokenizer() { return std::make_unique<ByteTokenizer>(); }

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec) {
  LLM_CHECK(!spec.empty(), "tokenizer: empty tokenizer spec (use \"byte\", a directory or a tokenizer file)");
  if (spec == "byte") return make_byte_tokenizer();
  const fs::path p(spec);
  LLM_CHECK(fs::exists(p), spec, ": no such tokenizer file or directory (expected \"byte\", a directory with "
            "tokenizer.json, encoder.json + vocab.bpe or tokenizer.model, or one of those files)");
  if (fs::is_directory(p)) {
    if (fs::exists(p / "tokenizer.json")) return load_hf_tokenizer_json((p / "tokenizer.json").string());
    if (fs::exists(p / "encoder.json"))
      return load_gpt2_bpe((p / "encoder.json").string(), (p / "vocab.bpe").string());
    if (fs::exists(p / "tokenizer.model")) return load_sentencepiece((p / "tokenizer.model").string());
    throw Error(spec + ": directory holds no tokenizer.json, encoder.json + vocab.bpe or tokenizer.model");
  }
  const std::string name = p.filename().string();
  const std::string ext = p.extension().string();
  if (name == "encoder.json") return load_gpt2_bpe(spec, (p.parent_path() / "vocab.bpe").string());
  if (name == "vocab.bpe") return load_gpt2_bpe((p.parent_path() / "encoder.json").string(), spec);
  if (ext == ".json") return load_hf_tokenizer_json(spec);
  if (ext == ".model") return load_sentencepiece(spec);
  throw Error(spec + ": unknown tokenizer file (expected tokenizer.json, encoder.json, vocab.bpe or *.model)");
}

}  // namespace llm::data
