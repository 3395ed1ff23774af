// A JSON value as text for an error message: json.dump() bounded in depth and length. dump() recurses
// once per level of nesting, so quoting a hostile value nested a million levels deep (a config.json
// key holding [[[[...]]]]) overflowed the stack inside the error message itself.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace llm::io {

inline std::string json_brief(const nlohmann::json& v, size_t max_chars = 200) {
  constexpr size_t kMaxDepth = 64;
  // Walk without recursion; stop as soon as the nesting is deeper than dump() should be asked to go.
  std::vector<std::pair<const nlohmann::json*, size_t>> todo{{&v, 0}};
  while (!todo.empty()) {
    const auto [node, depth] = todo.back();
    todo.pop_back();
    if (!node->is_structured()) continue;
    if (depth >= kMaxDepth) return v.is_array() ? "[... nested more than 64 levels ...]" : "{... nested more than 64 levels ...}";
    for (const auto& child : *node) todo.emplace_back(&child, depth + 1);
  }
  std::string text = v.dump();
  if (text.size() > max_chars) text = text.substr(0, max_chars) + "...";
  return text;
}

}  // namespace llm::io
