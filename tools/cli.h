// Small helpers the command-line mains share: one-line errors and typed flag values.
#pragma once
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <thread>
#include <type_traits>

namespace llm::cli {

// Prints "error: <message>" on stderr and exits with `code` (2: usage, 1: a failure while running).
[[noreturn]] inline void fail(const std::string& message, int code = 2) {
  std::fprintf(stderr, "error: %s\n", message.c_str());
  std::exit(code);
}

// The value of `flag` as a number, or a usage error naming the flag and the text.
template <typename T>
T number(const std::string& flag, const char* text) {
  // Streams read "-1" into an unsigned type as its largest value: refuse the sign instead.
  if (std::is_unsigned<T>::value && std::string(text).find('-') != std::string::npos)
    fail(flag + ": expected a non-negative number, got \"" + std::string(text) + "\"");
  std::istringstream in(text);
  T v{};
  in >> v;
  if (in.fail() || !in.eof()) fail(flag + ": expected a number, got \"" + std::string(text) + "\"");
  return v;
}

// The same, and at least 1.
template <typename T>
T positive(const std::string& flag, const char* text) {
  const T v = number<T>(flag, text);
  if (v < 1) fail(flag + ": must be at least 1, got " + std::string(text));
  return v;
}

// --threads: 0 (all cores) up to 4x the hardware threads (at least 64). Far more ran into the
// system's thread limit inside OpenMP: a libgomp message, or a segfault.
inline int threads(const std::string& flag, const char* text) {
  const int v = number<int>(flag, text);
  const int most = std::max(64, 4 * static_cast<int>(std::thread::hardware_concurrency()));
  if (v < 0 || v > most) fail(flag + ": expected 0 (all cores) to " + std::to_string(most) + ", got " + std::string(text));
  return v;
}

// --quantize's value: q8 is the one weight format there is.
inline bool quantize_q8(const std::string& kind) {
  if (kind != "q8") fail("--quantize: expected q8, got \"" + kind + "\"");
  return true;
}

}  // namespace llm::cli
