// The chat format of a model as the tools and the SDK take it (a path to a directory, a .h5 or a .bin).
#pragma once
#include <string>

#include "engine/generate/chat.h"

namespace llm::generate {

// From the tokenizer_config.json in the model's directory (the file's directory for a checkpoint or
// .bin file); ChatML when there is none.
ChatFormat chat_format_of_model(const std::string& model_path);

}  // namespace llm::generate
