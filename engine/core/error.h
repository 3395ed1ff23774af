// One error type for the whole engine: a message a user can act on, thrown on misuse or bad input.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace llm {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

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
