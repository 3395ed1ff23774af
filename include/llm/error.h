// llm::Error: the one exception type of the engine and of the SDK (include/llm/llm.h): a message a
// user can act on, thrown on misuse or bad input. engine/core/error.h adds LLM_CHECK.
#pragma once
#include <stdexcept>
#include <string>

#include "export.h"

namespace llm {

class LLM_API Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace llm
