#include "tests/common/testing.h"

#include <cstdlib>
#include <filesystem>

#include "engine/core/error.h"

namespace llm::testing {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::string shared_data_dir() {
  if (const char* env = std::getenv("LLM_SHARED_DATA")) return env;
  const std::filesystem::path dir = std::filesystem::path(LLM_SOURCE_DIR) / ".." / "shared" / "data";
  return std::filesystem::is_directory(dir) ? dir.lexically_normal().string() : "";
}

}  // namespace llm::testing
