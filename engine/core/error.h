// One error type for the whole engine: llm::Error (defined in the public include/llm/error.h, so the
// SDK throws the same type), and LLM_CHECK, which throws it with a message built from parts.
#pragma once
#include <sstream>
#include <string>

#include "include/llm/error.h"

namespace llm {

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace llm

// LLM_CHECK(cond, "message parts", ...): throws llm::Error with the parts joined when cond is false.
#define LLM_CHECK(cond, ...)                                          \
  do {                                                                \
    if (!(cond)) throw ::llm::Error(::llm::detail::concat(__VA_ARGS__)); \
  } while (0)
