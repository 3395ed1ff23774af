// GPT-2 style byte-level BPE: a regex pre-split (PCRE2), bytes mapped to printable code points,
// then merges applied in rank order within each piece. Loads OpenAI's encoder.json + vocab.bpe or
// a Hugging Face tokenizer.json (model.type "BPE" with a ByteLevel pre-tokenizer).
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>

#include "data/tokenizer.h"
#include "engine/core/error.h"
#include "engine/io/json_brief.h"

namespace llm::data {

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

namespace {

using json = nlohmann::json;
using io::json_brief;

// OpenAI's GPT-2 pre-split pattern.
const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";


// Decodes one code point of (valid) UTF-8 at s[i], advancing i; returns -1 on malformed input.
int64_t next_codepoint(const std::string& s, size_t& i) {
  const auto c = static_cast<unsigned char>(s[i]);
  int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
  if (len == 0 || i + static_cast<size_t>(len) > s.size()) return -1;
  uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
  for (int k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += static_cast<size_t>(len);
  return cp;
}

// GPT-2's bytes_to_unicode(): printable bytes map to themselves, the rest to 256, 257, ...
std::array<uint32_t, 256> byte_to_codepoint() {
  std::array<uint32_t, 256> map{};
  std::array<bool, 256> direct{};
  for (int b = '!'; b <= '~'; ++b) direct[b] = true;
  for (int b = 0xA1; b <= 0xAC; ++b) direct[b] = true;
  for (int b = 0xAE; b <= 0xFF; ++b) direct[b] = true;
  uint32_t n = 0;
  for (int b = 0; b < 256; ++b) map[b] = direct[b] ? static_cast<uint32_t>(b) : 256 + n++;
  return map;
}

class Regex {
 public:
  Regex(const std::string& pattern, const std::string& origin) {
    int err = 0;
    PCRE2_SIZE off = 0;
    // UCP: \s, \p{L} ... are Unicode-aware as in Python; MATCH_INVALID_UTF: invalid bytes never
    // match, and encode() turns the gaps into pieces of their own so any bytes round-trip.
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.c_str()), pattern.size(),
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &off, nullptr);
    if (!code_) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      throw Error(origin + ": cannot compile the pre-tokenizer regex at offset " + std::to_string(off) + ": " +
                  reinterpret_cast<char*>(msg));
    }
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // optional: falls back to the interpreter
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Calls f(begin, end) for consecutive pieces covering all of text.
  template <typename F>
  void split(std::string_view text, F&& f) const {
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code_, nullptr);
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t pos = 0;
    while (pos < text.size()) {
      const int rc = pcre2_match(code_, subject, text.size(), pos, 0, md, nullptr);
      if (rc < 0) {
        f(pos, text.size());  // no further match (only invalid bytes left)
        break;
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      size_t s = ov[0], e = ov[1];
      if (s > pos) f(pos, s);  // bytes the pattern cannot match
      if (e == s) e = s + 1;   // never loop on an empty match
      f(s, std::min(e, text.size()));
      pos = e;
    }
    pcre2_match_data_free(md);
  }

 private:
  pcre2_code* code_ = nullptr;
};

class BpeTokenizer final : public Tokenizer {
 public:
  // vocab: token text (in the byte-to-unicode alphabet) per id; merges: pairs in rank order.
  BpeTokenizer(const std::string& origin, const std::string& kind,
               const std::vector<std::pair<std::string, int32_t>>& vocab,
               const std::vector<std::pair<std::string, std::string>>& merges,
               const std::vector<std::pair<std::string, int32_t>>& specials, const std::string& pattern,
               bool ignore_merges)
      : kind_(kind), regex_(pattern, origin), ignore_merges_(ignore_merges) {
    const auto b2c = byte_to_codepoint();
    std::unordered_map<uint32_t, int> c2b;
    for (int b = 0; b < 256; ++b) c2b[b2c[b]] = b;

    int32_t max_id = -1;
    for (const auto& [text, id] : vocab) {
      LLM_CHECK(id >= 0, origin, ": token '", text, "' has negative id ", id);
      max_id = std::max(max_id, id);
      LLM_CHECK(vocab_.emplace(text, id).second, origin, ": duplicate token '", text, "'");
    }
    for (const auto& [text, id] : specials) {
      LLM_CHECK(id >= 0, origin, ": added token '", text, "' has negative id ", id);
      max_id = std::max(max_id, id);
    }
    // Real vocabularies number their tokens densely; an id far past the entry count is a corrupt
    // file, and would size the id-indexed tables below.
    const int64_t entries = static_cast<int64_t>(vocab.size() + specials.size());
    LLM_CHECK(max_id < entries + (int64_t{1} << 20), origin, ": token id ", max_id, " is far past the ", entries,
              " entries of the vocabulary (corrupt file?)");
    vocab_size_ = max_id + 1;
    bytes_.assign(static_cast<size_t>(vocab_size_), std::string());
    valid_.assign(static_cast<size_t>(vocab_size_), false);
    for (const auto& [text, id] : vocab) {
      std::string raw;
      size_t i = 0;
      bool mapped = true;
      while (i < text.size()) {
        const int64_t cp = next_codepoint(text, i);
        auto it = cp < 0 ? c2b.end() : c2b.find(static_cast<uint32_t>(cp));
        if (it == c2b.end()) {
          mapped = false;
          break;
        }
        raw += static_cast<char>(it->second);
      }
      // Two tokens sharing an id would decode one of them as the other: a corrupt vocabulary.
      LLM_CHECK(!valid_[id], origin, ": token id ", id, " is given to two tokens, '", text, "' and another");
      bytes_[id] = mapped ? raw : text;  // tokens outside the byte alphabet decode as written
      valid_[id] = true;
    }
    for (const auto& [text, id] : specials) {
      // An added token usually repeats its vocabulary entry (same text and id); another text is a clash.
      const auto entry = vocab_.find(text);
      LLM_CHECK(!valid_[id] || bytes_[id] == text || (entry != vocab_.end() && entry->second == id), origin, ": added token '",
                text, "' has id ", id, ", which another token has");
      bytes_[id] = text;
      valid_[id] = true;
      specials_[text] = id;
    }
    for (int b = 0; b < 256; ++b) {
      std::string s;
      append_utf8(s, b2c[b]);
      auto it = vocab_.find(s);
      LLM_CHECK(it != vocab_.end(), origin, ": the vocabulary lacks the byte token for byte ", b,
                " (not a byte-level BPE vocabulary?)");
      byte_id_[b] = it->second;
    }
    int32_t rank = 0;
    for (const auto& [a, b] : merges) {
      auto ia = vocab_.find(a), ib = vocab_.find(b), im = vocab_.find(a + b);
      LLM_CHECK(ia != vocab_.end() && ib != vocab_.end() && im != vocab_.end(), origin, ": merge ", rank + 1,
                " ('", a, "' '", b, "') uses a token missing from the vocabulary");
      merges_.emplace(pair_key(ia->second, ib->second), std::make_pair(rank, im->second));
      ++rank;
    }
    // Identity from the content (vocabulary in id order, merges in rank order), so the same
    // tokenizer read from encoder.json or tokenizer.json gets the same identity.
    uint64_t h = 1469598103934665603ull;
    auto mix = [&h](const std::string& s) {
      for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
      h = (h ^ 0xFF) * 1099511628211ull;  // separator byte that valid UTF-8 never contains
    };
    std::vector<std::string> texts(static_cast<size_t>(vocab_size_));
    for (const auto& [text, id] : vocab) texts[id] = text;
    for (const auto& [text, id] : specials) texts[id] = text;
    for (const auto& t : texts) mix(t);
    for (const auto& [a, b] : merges) mix(a + " " + b);
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
    identity_ = "bpe:vocab=" + std::to_string(vocab_size_) + ":merges=" + std::to_string(merges.size()) +
                ":fnv1a64=" + buf;
    for (const char* name : {"<|endoftext|>", "<|end_of_text|>", "</s>", "<|im_end|>"}) {
      if (eot_ < 0) eot_ = special_id(name);
    }
    for (const char* name : {"<|begin_of_text|>", "<s>"}) {
      if (bos_ < 0) bos_ = special_id(name);
    }
  }

  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int32_t> out;
    out.reserve(text.size() / 3 + 1);
    regex_.split(text, [&](size_t b, size_t e) { encode_piece(text.substr(b, e - b), out); });
    return out;
  }

  std::string token_text(int32_t id) const override {
    LLM_CHECK(id >= 0 && id < vocab_size_ && valid_[id], kind_, " tokenizer: token id ", id,
              " is outside the vocabulary (size ", vocab_size_, ")");
    return bytes_[id];
  }
  int64_t vocab_size() const override { return vocab_size_; }
  int32_t eot_id() const override { return eot_; }
  int32_t bos_id() const override { return bos_; }
  int32_t special_id(std::string_view name) const override {
    auto it = specials_.find(std::string(name));
    if (it != specials_.end()) return it->second;
    // encoder.json has no separate special list: <|endoftext|> is an ordinary vocabulary entry.
    if (name.size() > 2 && name.front() == '<' && name.back() == '>') {
      auto v = vocab_.find(std::string(name));
      if (v != vocab_.end()) return v->second;
    }
    return -1;
  }
  std::vector<std::string> special_tokens() const override {
    std::vector<std::string> out = Tokenizer::special_tokens();  // encoder.json's <|endoftext|> is in the vocabulary
    for (const auto& kv : specials_)
      if (std::find(out.begin(), out.end(), kv.first) == out.end()) out.push_back(kv.first);
    return out;
  }
  std::string identity() const override { return identity_; }

 private:
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
    if (piece.empty()) return;
    {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      auto it = cache_.find(std::string(piece));
      if (it != cache_.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<int32_t> ids;
    ids.reserve(piece.size());
    for (char c : piece) ids.push_back(byte_id_[static_cast<unsigned char>(c)]);
    if (ignore_merges_) {  // tokenizer.json "ignore_merges": a piece that is a token is taken whole
      std::string mapped;
      const auto b2c = byte_to_codepoint();
      for (char c : piece) append_utf8(mapped, b2c[static_cast<unsigned char>(c)]);
      auto it = vocab_.find(mapped);
      if (it != vocab_.end()) ids.assign(1, it->second);
    }
    // Repeatedly merge every occurrence of the lowest-ranked adjacent pair (as OpenAI's bpe()).
    while (ids.size() > 1) {
      int32_t best_rank = std::numeric_limits<int32_t>::max(), best_id = -1;
      uint64_t best_key = 0;
      for (size_t i = 0; i + 1 < ids.size(); ++i) {
        auto it = merges_.find(pair_key(ids[i], ids[i + 1]));
        if (it != merges_.end() && it->second.first < best_rank) {
          best_rank = it->second.first;
          best_id = it->second.second;
          best_key = it->first;
        }
      }
      if (best_id < 0) break;
      size_t w = 0;
      for (size_t i = 0; i < ids.size(); ++i) {
        if (i + 1 < ids.size() && pair_key(ids[i], ids[i + 1]) == best_key) {
          ids[w++] = best_id;
          ++i;
        } else {
          ids[w++] = ids[i];
        }
      }
      ids.resize(w);
    }
    out.insert(out.end(), ids.begin(), ids.end());
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() > (1u << 20)) cache_.clear();  // bound memory on huge corpora
    cache_.emplace(std::string(piece), std::move(ids));
  }

  std::string kind_;
  Regex regex_;
  bool ignore_merges_;
  std::unordered_map<std::string, int32_t> vocab_;
  std::unordered_map<std::string, int32_t> specials_;
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // pair -> (rank, merged id)
  std::vector<std::string> bytes_;
  std::vector<bool> valid_;
  std::array<int32_t, 256> byte_id_{};
  int64_t vocab_size_ = 0;
  int32_t eot_ = -1, bos_ = -1;
  std::string identity_;
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

// A token id from JSON: an integer in [0, 2^31), or an error naming `where`.
int32_t token_id(const json& v, const std::string& where) {
  LLM_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() <= INT32_MAX, where,
            ": expected a token id (a non-negative integer), got ", json_brief(v));
  return static_cast<int32_t>(v.get<int64_t>());
}

// o[key] when o is an object holding it, else `fallback`; a value of another type is an error naming the key.
std::string string_or(const json& o, const char* key, const std::string& fallback, const std::string& where) {
  if (!o.is_object() || !o.contains(key) || o[key].is_null()) return fallback;
  LLM_CHECK(o[key].is_string(), where, ".", key, ": expected a string, got ", json_brief(o[key]));
  return o[key].get<std::string>();
}
bool bool_or(const json& o, const char* key, bool fallback, const std::string& where) {
  if (!o.is_object() || !o.contains(key) || o[key].is_null()) return fallback;
  LLM_CHECK(o[key].is_boolean(), where, ".", key, ": expected true or false, got ", json_brief(o[key]));
  return o[key].get<bool>();
}

json parse_json_file(const std::string& path) {
  const std::string text = read_file(path);
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    throw Error(path + ": invalid JSON: " + e.what());
  }
}

std::pair<std::string, std::string> split_merge(const std::string& line, const std::string& where) {
  const size_t sp = line.find(' ');
  LLM_CHECK(sp != std::string::npos && sp > 0 && sp + 1 < line.size() && line.find(' ', sp + 1) == std::string::npos,
            where, ": expected a merge of two tokens separated by one space, got '", line, "'");
  return {line.substr(0, sp), line.substr(sp + 1)};
}

}  // namespace

std::unique_ptr<Tokenizer> load_gpt2_bpe(const std::string& encoder_json, const std::string& vocab_bpe) {
  const json enc = parse_json_file(encoder_json);
  LLM_CHECK(enc.is_object(), encoder_json, ": expected a JSON object of token -> id");
  std::vector<std::pair<std::string, int32_t>> vocab;
  vocab.reserve(enc.size());
  for (auto it = enc.begin(); it != enc.end(); ++it) {
    vocab.emplace_back(it.key(), token_id(it.value(), encoder_json + ": token '" + it.key() + "'"));
  }
  std::istringstream f(read_file(vocab_bpe));  // a directory read as no merges: a silently different tokenizer
  std::vector<std::pair<std::string, std::string>> merges;
  std::string line;
  int lineno = 0;
  while (std::getline(f, line)) {
    ++lineno;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line.rfind("#version", 0) == 0) continue;
    merges.push_back(split_merge(line, vocab_bpe + ":" + std::to_string(lineno)));
  }
  return std::make_unique<BpeTokenizer>(encoder_json, "gpt2-bpe", vocab, merges,
                                        std::vector<std::pair<std::string, int32_t>>{}, kGpt2Pattern, false);
}

namespace {
std::unique_ptr<Tokenizer> parse_hf_tokenizer_json(const std::string& path) {
  const json j = parse_json_file(path);
  LLM_CHECK(j.is_object() && j.contains("model") && j["model"].is_object(), path, ": no \"model\" object");
  const json& model = j["model"];
  const std::string type = string_or(model, "type", "", path + ": model");
  LLM_CHECK(type == "BPE", path, ": model.type is \"", type, "\"; only byte-level BPE tokenizer.json files are "
            "supported (use tokenizer.model for SentencePiece models)");
  LLM_CHECK(!j.contains("normalizer") || j["normalizer"].is_null(), path,
            ": normalizers are not supported (byte-level BPE needs none)");
  std::string pattern = kGpt2Pattern;
  bool byte_level = false;
  const std::string where_pre = path + ": pre_tokenizer";
  auto check_byte_level = [&](const json& p) {
    LLM_CHECK(!bool_or(p, "add_prefix_space", false, where_pre), path,
              ": pre_tokenizer ByteLevel with add_prefix_space=true is not supported");
    byte_level = true;
    return bool_or(p, "use_regex", true, where_pre);
  };
  const json& pre = j.contains("pre_tokenizer") ? j["pre_tokenizer"] : json();
  const std::string pre_type = string_or(pre, "type", "", where_pre);
  if (pre_type == "ByteLevel") {
    check_byte_level(pre);
  } else if (pre_type == "Sequence") {
    // Llama-3 style: Split(regex, Isolated) then ByteLevel without its own regex.
    bool have_split = false;
    const json& list = pre.contains("pretokenizers") ? pre["pretokenizers"] : json::array();
    LLM_CHECK(list.is_array(), where_pre, ".pretokenizers: expected a list, got ", json_brief(list));
    for (const json& p : list) {
      const std::string t = string_or(p, "type", "", where_pre + ".pretokenizers[]");
      if (t == "Split" && p.contains("pattern") && p["pattern"].contains("Regex") && !have_split) {
        const std::string behavior = string_or(p, "behavior", "", where_pre + ".pretokenizers[]");
        LLM_CHECK(behavior == "Isolated", path, ": Split pre-tokenizer behaviour \"", behavior,
                  "\" is not supported (only Isolated)");
        pattern = string_or(p["pattern"], "Regex", "", where_pre + ".pretokenizers[].pattern");
        have_split = true;
      } else if (t == "ByteLevel") {
        LLM_CHECK(!check_byte_level(p) || !have_split, path, ": both a Split regex and ByteLevel use_regex=true");
      } else {
        throw Error(path + ": unsupported pre-tokenizer \"" + t + "\" in the Sequence");
      }
    }
  }
  LLM_CHECK(byte_level, path, ": pre_tokenizer is \"", pre_type, "\"; only byte-level BPE is supported");

  LLM_CHECK(model.contains("vocab") && model["vocab"].is_object(), path, ": model.vocab is missing");
  std::vector<std::pair<std::string, int32_t>> vocab;
  for (auto it = model["vocab"].begin(); it != model["vocab"].end(); ++it) {
    vocab.emplace_back(it.key(), token_id(it.value(), path + ": model.vocab['" + it.key() + "']"));
  }
  std::vector<std::pair<std::string, std::string>> merges;
  LLM_CHECK(model.contains("merges") && model["merges"].is_array(), path, ": model.merges is missing");
  size_t k = 0;
  for (const json& m : model["merges"]) {
    const std::string where = path + ": model.merges[" + std::to_string(k++) + "]";
    if (m.is_string()) {
      merges.push_back(split_merge(m.get<std::string>(), where));
    } else {
      LLM_CHECK(m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string(), where,
                ": expected \"a b\" or [\"a\", \"b\"]");
      merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    }
  }
  std::vector<std::pair<std::string, int32_t>> specials;
  std::vector<std::pair<std::string, int32_t>> plain;
  const json& added = j.contains("added_tokens") && !j["added_tokens"].is_null() ? j["added_tokens"] : json::array();
  LLM_CHECK(added.is_array(), path, ": added_tokens: expected a list, got ", json_brief(added));
  for (size_t i = 0; i < added.size(); ++i) {
    const json& t = added[i];
    const std::string where = path + ": added_tokens[" + std::to_string(i) + "]";
    LLM_CHECK(t.is_object() && t.contains("id") && t.contains("content"), where, ": entry without id/content");
    LLM_CHECK(t["content"].is_string(), where, ".content: expected a string, got ", json_brief(t["content"]));
    specials.emplace_back(t["content"].get<std::string>(), token_id(t["id"], where + ".id"));
  }
  // Added tokens usually repeat a vocabulary entry (GPT-2's <|endoftext|>); keep one copy.
  for (const auto& [text, id] : vocab) {
    bool dup = false;
    for (const auto& s : specials) dup = dup || (s.first == text && s.second == id);
    if (!dup) plain.emplace_back(text, id);
  }
  return std::make_unique<BpeTokenizer>(path, "hf-bpe", plain, merges, specials, pattern,
                                        bool_or(model, "ignore_merges", false, path + ": model"));
}
}  // namespace

std::unique_ptr<Tokenizer> load_hf_tokenizer_json(const std::string& path) {
  try {
    return parse_hf_tokenizer_json(path);
  } catch (const json::exception& e) {  // a shape the checks above did not foresee: still one line naming the file
    throw Error(path + ": unexpected tokenizer.json structure: " + e.what());
  }
}

}  // namespace llm::data
