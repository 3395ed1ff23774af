// Helpers shared by the data tests: project assets, shared data, temporary directories.
#pragma once
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "tests/common/testing.h"

namespace llm::testing {

inline std::string asset(const std::string& rel) { return std::string(LLM_SOURCE_DIR) + "/data/assets/" + rel; }

// A fresh directory under the system temp dir, removed when the object goes away.
class TempDir {
 public:
  explicit TempDir(const std::string& tag) {
    path_ = std::filesystem::temp_directory_path() /
            ("llm_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter()++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }
  std::string str() const { return path_.string(); }

 private:
  static int& counter() {
    static int c = 0;
    return c;
  }
  std::filesystem::path path_;
};

// The llama.cpp test-vector pair: inputs separated by "\n__ggml_vocab_test__\n", one id line each.
struct TestVectors {
  std::vector<std::string> inputs;
  std::vector<std::vector<int32_t>> expected;
};

inline TestVectors read_test_vectors(const std::string& inp, const std::string& out) {
  TestVectors tv;
  const std::string text = data::read_file(inp);
  const std::string sep = "\n__ggml_vocab_test__\n";
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t e = text.find(sep, pos);
    if (e == std::string::npos) break;
    tv.inputs.push_back(text.substr(pos, e - pos));
    pos = e + sep.size();
  }
  const std::string ids = data::read_file(out);
  size_t start = 0;
  while (start < ids.size()) {
    size_t e = ids.find('\n', start);
    if (e == std::string::npos) e = ids.size();
    std::vector<int32_t> line;
    size_t i = start;
    while (i < e) {
      while (i < e && ids[i] == ' ') ++i;
      if (i >= e) break;
      size_t j = i;
      while (j < e && ids[j] != ' ') ++j;
      line.push_back(std::stoi(ids.substr(i, j - i)));
      i = j;
    }
    tv.expected.push_back(line);
    start = e + 1;
  }
  return tv;
}

}  // namespace llm::testing
