#include "engine/generate/model_chat.h"

#include <filesystem>

namespace llm::generate {

std::string chat_template_of_model(const std::string& model_path) {
  namespace fs = std::filesystem;
  const fs::path p(model_path);
  const fs::path dir = fs::is_directory(p) ? p : (p.has_parent_path() ? p.parent_path() : fs::path("."));
  return read_chat_template(dir.string());
}

ChatFormat chat_format_of_model(const std::string& model_path) {
  return detect_chat_format(chat_template_of_model(model_path));
}

}  // namespace llm::generate
