#include <chrono>
#include <filesystem>
#include <random>

#include "data/tokenizer.h"
#include "engine/core/error.h"
#include "tests/data/data_test_util.h"

namespace llm::testing {
namespace {

using data::Tokenizer;

const Tokenizer& gpt2() {
  static auto tok = data::load_tokenizer(asset("gpt2"));  // the directory: tokenizer.json wins
  return *tok;
}
const Tokenizer& gpt2_files() {
  static auto tok = data::load_gpt2_bpe(asset("gpt2/encoder.json"), asset("gpt2/vocab.bpe"));
  return *tok;
}

void expect_vectors(const Tokenizer& tok, const TestVectors& tv) {
  ASSERT_EQ(tv.inputs.size(), 46u);
  ASSERT_EQ(tv.expected.size(), tv.inputs.size());
  int exact = 0;
  for (size_t i = 0; i < tv.inputs.size(); ++i) {
    const auto got = tok.encode(tv.inputs[i]);
    EXPECT_EQ(got, tv.expected[i]) << "vector " << i << ": '" << tv.inputs[i] << "'";
    exact += got == tv.expected[i];
  }
  EXPECT_EQ(exact, 46);
}

TEST(Gpt2Bpe, LlamaCppVectorsFromEncoderJsonAndVocabBpe) {
  expect_vectors(gpt2_files(), read_test_vectors(asset("testvectors/ggml-vocab-gpt-2.gguf.inp"),
                                                 asset("testvectors/ggml-vocab-gpt-2.gguf.out")));
}

TEST(Gpt2Bpe, LlamaCppVectorsFromTokenizerJson) {
  const auto tok = data::load_tokenizer(asset("gpt2/tokenizer.json"));
  expect_vectors(*tok, read_test_vectors(asset("testvectors/ggml-vocab-gpt-2.gguf.inp"),
                                         asset("testvectors/ggml-vocab-gpt-2.gguf.out")));
}

TEST(Gpt2Bpe, BothFormsAreTheSameTokenizer) {
  EXPECT_EQ(gpt2().identity(), gpt2_files().identity());
  EXPECT_EQ(gpt2().vocab_size(), 50257);
  EXPECT_EQ(gpt2_files().vocab_size(), 50257);
  EXPECT_EQ(gpt2().eot_id(), 50256);
  EXPECT_EQ(gpt2_files().eot_id(), 50256);
  EXPECT_EQ(gpt2().special_id("<|endoftext|>"), 50256);
  EXPECT_EQ(gpt2().bos_id(), -1);
  EXPECT_EQ(gpt2().token_text(50256), "<|endoftext|>");
  EXPECT_EQ(gpt2().token_text(18435), " Hello");
  EXPECT_NE(gpt2().identity(), data::make_byte_tokenizer()->identity());
}

TEST(Gpt2Bpe, SpecialTokenTextIsEncodedAsPlainText) {
  const auto ids = gpt2().encode("a<|endoftext|>b");
  for (int32_t id : ids) EXPECT_NE(id, 50256);
  EXPECT_EQ(gpt2().decode(ids), "a<|endoftext|>b");
}

TEST(Gpt2Bpe, TinyShakespeareIs338025TokensAndFast) {
  const std::string text = data::read_file(asset("tinyshakespeare/input.txt"));
  ASSERT_EQ(text.size(), 1115394u);
  const auto t0 = std::chrono::steady_clock::now();
  const auto ids = gpt2_files().encode(text);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(ids.size(), 338025u);
  EXPECT_EQ(gpt2().encode(text), ids);
  EXPECT_EQ(gpt2_files().decode(ids), text);
  std::printf("tinyshakespeare: %zu tokens in %.3f s (%.2f M tokens/s)\n", ids.size(), secs, ids.size() / secs / 1e6);
#ifdef NDEBUG
  EXPECT_LT(secs, 2.0);  // sanitizer/debug builds are allowed to be slow
#endif
}

// Random valid UTF-8: ASCII, Latin, CJK, emoji and whitespace runs, mixed.
std::string random_utf8(std::mt19937_64& gen, size_t n_chars) {
  static const uint32_t ranges[][2] = {{0x20, 0x7E}, {0x09, 0x0D}, {0xA0, 0x24F}, {0x370, 0x3FF}, {0x400, 0x4FF},
                                       {0x4E00, 0x9FFF}, {0x1F300, 0x1F64F}, {0x2000, 0x206F}, {0x30, 0x39}};
  std::string s;
  for (size_t i = 0; i < n_chars; ++i) {
    const auto& r = ranges[gen() % (sizeof ranges / sizeof ranges[0])];
    uint32_t cp = r[0] + static_cast<uint32_t>(gen() % (r[1] - r[0] + 1));
    if (gen() % 5 == 0) cp = ' ';
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else if (cp < 0x800) {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      s += static_cast<char>(0xE0 | (cp >> 12));
      s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      s += static_cast<char>(0xF0 | (cp >> 18));
      s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  return s;
}

TEST(Gpt2Bpe, RoundTripsRandomUtf8) {
  std::mt19937_64 gen(7);
  for (int i = 0; i < 200; ++i) {
    const std::string s = random_utf8(gen, 1 + gen() % 80);
    const auto ids = gpt2().encode(s);
    ASSERT_EQ(gpt2().decode(ids), s) << "case " << i;
    for (int32_t id : ids) ASSERT_LT(id, 50256);
  }
}

TEST(Gpt2Bpe, RoundTripsArbitraryBytes) {
  std::mt19937_64 gen(11);
  for (int i = 0; i < 200; ++i) {
    std::string s(1 + gen() % 60, '\0');
    for (char& c : s) c = static_cast<char>(gen() % 256);  // mostly invalid UTF-8
    ASSERT_EQ(gpt2().decode(gpt2().encode(s)), s) << "case " << i;
  }
  const std::string tricky = std::string("ab\xff\xfe cd \xe2\x82", 10) + " \xf0\x9f\x98\x80";
  EXPECT_EQ(gpt2().decode(gpt2().encode(tricky)), tricky);
}

TEST(Gpt2Bpe, BadIdsAndFilesGiveClearErrors) {
  EXPECT_THROW(gpt2().decode({50257}), Error);
  EXPECT_THROW(gpt2().token_text(-1), Error);
  TempDir dir("tok");
  {
    std::FILE* f = std::fopen((dir / "bad.json").c_str(), "w");
    std::fputs("{\"model\": {\"type\": \"Unigram\"}}", f);
    std::fclose(f);
  }
  try {
    data::load_tokenizer(dir / "bad.json");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.json"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("Unigram"), std::string::npos) << e.what();
  }
  EXPECT_THROW(data::load_tokenizer(dir / "missing"), Error);
  // vocab.bpe as a directory read as no merges at all: a different tokenizer, silently.
  std::filesystem::create_directories(dir / "bpe/vocab.bpe");
  std::filesystem::copy_file(std::string(LLM_SOURCE_DIR) + "/data/assets/gpt2/encoder.json", dir / "bpe/encoder.json");
  EXPECT_EQ(testing::error_of([&] { data::load_tokenizer(dir / "bpe"); }), dir / "bpe/vocab.bpe" + ": a directory, not a file");
  EXPECT_THROW(data::load_tokenizer(dir.str()), Error);  // a directory without tokenizer files
}

// A miniature byte-level BPE tokenizer.json in the newer ["a", "b"] merges form, with one added special token.
std::string mini_tokenizer_json() {
  std::string json = "{\"model\":{\"type\":\"BPE\",\"vocab\":{";
  // Byte symbols in GPT-2's alphabet: printable ASCII maps to itself; others are escaped code points.
  auto symbol = [](int b) -> uint32_t {
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) return static_cast<uint32_t>(b);
    int n = 0;
    for (int k = 0; k < b; ++k)
      if (!((k >= '!' && k <= '~') || (k >= 0xA1 && k <= 0xAC) || (k >= 0xAE && k <= 0xFF))) ++n;
    return 256 + static_cast<uint32_t>(n);
  };
  for (int b = 0; b < 256; ++b) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "\"\\u%04x\":%d,", symbol(b), b);
    json += buf;
  }
  json += "\"ab\":256,\"abc\":257},\"merges\":[[\"a\",\"b\"],[\"ab\",\"c\"]]},"
          "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false},"
          "\"added_tokens\":[{\"id\":258,\"content\":\"<|endoftext|>\",\"special\":true}]}";
  return json;
}

void write_text(const std::string& path, const std::string& text) {
  std::FILE* f = std::fopen(path.c_str(), "w");
  std::fputs(text.c_str(), f);
  std::fclose(f);
}

TEST(HfTokenizerJson, AcceptsPairMergesAndAddedTokens) {
  TempDir dir("hf");
  write_text(dir / "tokenizer.json", mini_tokenizer_json());
  const auto tok = data::load_tokenizer(dir.str());
  EXPECT_EQ(tok->vocab_size(), 259);
  EXPECT_EQ(tok->eot_id(), 258);
  EXPECT_EQ(tok->encode("abcab"), (std::vector<int32_t>{257, 256}));
  EXPECT_EQ(tok->encode("abd"), (std::vector<int32_t>{256, 'd'}));
  EXPECT_EQ(tok->decode({257, 258}), "abc<|endoftext|>");
}

// Wrong types and out-of-range ids in tokenizer.json: one llm::Error naming the file and the key (they
// were nlohmann exceptions that ended the tools with std::terminate, and a negative added-token id
// wrote before the id table: a segfault).
TEST(HfTokenizerJson, BadValuesNameTheFileAndKey) {
  const std::string good = mini_tokenizer_json();
  auto replaced = [&](const std::string& from, const std::string& to) {
    std::string s = good;
    const size_t at = s.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return s.replace(at, from.size(), to);
  };
  const std::vector<std::pair<std::string, std::string>> cases = {
      {replaced("\"type\":\"BPE\"", "\"type\":5"), "model.type: expected a string, got 5"},
      {replaced("\"type\":\"ByteLevel\"", "\"type\":[]"), "pre_tokenizer.type: expected a string"},
      {replaced("\"add_prefix_space\":false", "\"add_prefix_space\":\"no\""),
       "pre_tokenizer.add_prefix_space: expected true or false"},
      {replaced("\"merges\":", "\"ignore_merges\":1,\"merges\":"), "model.ignore_merges: expected true or false"},
      {replaced("\"id\":258", "\"id\":-3"), "added_tokens[0].id: expected a token id (a non-negative integer), got -3"},
      {replaced("\"id\":258", "\"id\":3000000000"), "added_tokens[0].id: expected a token id"},
      {replaced("\"id\":258", "\"id\":\"258\""), "added_tokens[0].id: expected a token id"},
      {replaced("\"id\":258", "\"id\":2000000000"), "token id 2000000000 is far past the 259 entries"},
      {replaced("\"content\":\"<|endoftext|>\"", "\"content\":7"), "added_tokens[0].content: expected a string"},
      {replaced("\"added_tokens\":[", "\"added_tokens\":5,\"x\":["), "added_tokens: expected a list, got 5"},
      {replaced("\"abc\":257", "\"abc\":-257"), "model.vocab['abc']: expected a token id"},
      // Two tokens with one id: one of them decoded as the other, silently.
      {replaced("\"abc\":257", "\"abc\":256"), "token id 256 is given to two tokens"},
      {replaced("\"id\":258", "\"id\":256"), "added token '<|endoftext|>' has id 256, which another token has"},
      {replaced("{\"type\":\"ByteLevel\",\"add_prefix_space\":false}",
                "{\"type\":\"Sequence\",\"pretokenizers\":{\"type\":\"ByteLevel\"}}"),
       "pre_tokenizer.pretokenizers: expected a list"},
      {replaced("{\"type\":\"ByteLevel\",\"add_prefix_space\":false}",
                "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":1},"
                "\"behavior\":\"Isolated\"},{\"type\":\"ByteLevel\",\"use_regex\":false}]}"),
       "pattern.Regex: expected a string, got 1"},
  };
  TempDir dir("hfbad");
  for (const auto& [text, message] : cases) {
    write_text(dir / "tokenizer.json", text);
    try {
      data::load_tokenizer(dir / "tokenizer.json");
      ADD_FAILURE() << "expected an error containing: " << message;
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(dir / "tokenizer.json"), std::string::npos) << what;
      EXPECT_NE(what.find(message), std::string::npos) << what;
    }
  }
}

TEST(ByteTokenizer, EncodesBytesAndHasEot) {
  const auto tok = data::load_tokenizer("byte");
  EXPECT_EQ(tok->vocab_size(), 257);
  EXPECT_EQ(tok->eot_id(), 256);
  EXPECT_EQ(tok->encode("hi\xff"), (std::vector<int32_t>{'h', 'i', 255}));
  std::mt19937_64 gen(3);
  std::string s(300, '\0');
  for (char& c : s) c = static_cast<char>(gen() % 256);
  EXPECT_EQ(tok->decode(tok->encode(s)), s);
  EXPECT_THROW(tok->decode({257}), Error);
}

TEST(SentencePiece, Stories260KTokenizer) {
  const auto tok = data::load_tokenizer(asset("stories260K/tok512.model"));
  EXPECT_EQ(tok->vocab_size(), 512);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eot_id(), 2);
  EXPECT_EQ(tok->special_id("</s>"), 2);
  EXPECT_EQ(tok->special_id("no such piece"), -1);
  const std::string text = "Once upon a time, there was a little girl named Lily.";
  const auto ids = tok->encode(text);
  ASSERT_FALSE(ids.empty());
  EXPECT_NE(ids.front(), 1) << "encode() must not add BOS";
  EXPECT_EQ(tok->decode(ids), text);
  std::string streamed;
  for (int32_t id : ids) streamed += tok->token_text(id);
  EXPECT_EQ(streamed, " " + text);  // the dummy-prefix space shows when pieces are printed one by one
  // Byte fallback: characters outside the 512 pieces still round-trip.
  const std::string rare = "Zoë ate 寿司 🍣";
  EXPECT_EQ(tok->decode(tok->encode(rare)), rare);
  EXPECT_THROW(tok->decode({512}), Error);
}

TEST(SentencePiece, LlamaVectorsWithLlama2Tokenizer) {
  const std::string shared = shared_data_dir();
  const std::string model = shared + "/tokenizers/llama2/tokenizer.model";
  if (shared.empty() || !std::filesystem::exists(model))
    GTEST_SKIP() << "the Llama-2 tokenizer.model (Llama 2 Community License, not in the project) is not at " << model;
  const auto tok = data::load_tokenizer(model);
  EXPECT_EQ(tok->vocab_size(), 32000);
  expect_vectors(*tok, read_test_vectors(asset("testvectors/ggml-vocab-llama-spm.gguf.inp"),
                                         asset("testvectors/ggml-vocab-llama-spm.gguf.out")));
}

}  // namespace
}  // namespace llm::testing
