// The chat template and format of a model as the tools and the SDK take it (a path to a directory, a
// .h5 or a .bin): from the tokenizer_config.json in the model's directory (the file's directory for a
// checkpoint or .bin file).
#pragma once
#include <string>

#include "engine/generate/chat.h"

namespace llm::generate {

// The model's Jinja chat_template, or "" when it has none.
std::string chat_template_of_model(const std::string& model_path);
// The format that template implements; ChatML when there is none.
ChatFormat chat_format_of_model(const std::string& model_path);

}  // namespace llm::generate
