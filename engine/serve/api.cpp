#include "engine/serve/api.h"

#include <set>

namespace llm::serve {

using nlohmann::json;

std::string error_body(const ApiError& e) {
  // Messages quote the request (a JSON parse error shows the bytes it stopped at), which need not be
  // UTF-8: those bytes are replaced, so the error is always sent rather than becoming a 500.
  const json err = {{"message", e.what()},
                    {"type", e.type},
                    {"param", e.param.empty() ? json(nullptr) : json(e.param)},
                    {"code", e.code.empty() ? json(nullptr) : json(e.code)}};
  return json{{"error", err}}.dump(-1, ' ', false, json::error_handler_t::replace);
}

namespace {

ApiError bad(const std::string& field, const std::string& message) {
  return ApiError(400, field + ": " + message, "invalid_request_error", field);
}

const char* type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    default: return "a number";
  }
}

// The fields of one JSON object, each read with its expected type. Fields never read are unknown.
class Fields {
 public:
  Fields(const json& object, std::string prefix) : j_(object), prefix_(std::move(prefix)) {}

  const json* get(const std::string& key) {
    read_.insert(key);
    const auto it = j_.find(key);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  std::string name(const std::string& key) const { return prefix_ + key; }

  double number(const std::string& key, double fallback, double lo, double hi) {
    const json* v = get(key);
    if (!v) return fallback;
    if (!v->is_number()) throw bad(name(key), std::string("expected a number, got ") + type_name(*v));
    const double x = v->get<double>();
    if (!(x >= lo && x <= hi)) throw bad(name(key), "must be in [" + fmt(lo) + ", " + fmt(hi) + "], got " + v->dump());
    return x;
  }
  int64_t integer(const std::string& key, int64_t fallback, int64_t lo, int64_t hi) {
    const json* v = get(key);
    if (!v) return fallback;
    if (!v->is_number_integer()) throw bad(name(key), std::string("expected an integer, got ") + (v->is_number() ? v->dump() : type_name(*v)));
    const bool beyond_int64 = v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX);
    const int64_t x = beyond_int64 ? 0 : v->get<int64_t>();
    if (beyond_int64 || x < lo || x > hi)
      throw bad(name(key), "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + v->dump());
    return x;
  }
  bool boolean(const std::string& key, bool fallback) {
    const json* v = get(key);
    if (!v) return fallback;
    if (!v->is_boolean()) throw bad(name(key), std::string("expected a boolean, got ") + type_name(*v));
    return v->get<bool>();
  }
  std::string string(const std::string& key, bool required) {
    const json* v = get(key);
    if (!v) {
      if (required) throw bad(name(key), "is required");
      return "";
    }
    if (!v->is_string()) throw bad(name(key), std::string("expected a string, got ") + type_name(*v));
    return v->get<std::string>();
  }
  // OpenAI rejects arguments it does not know; so do we (a typo must not be silently ignored).
  void reject_unknown() const {
    for (const auto& [key, value] : j_.items())
      if (!read_.count(key)) throw ApiError(400, "Unrecognized request argument supplied: " + name(key), "invalid_request_error", name(key));
  }

 private:
  static std::string fmt(double x) {
    std::string s = std::to_string(x);
    s.erase(s.find_last_not_of('0') + 1);
    if (!s.empty() && s.back() == '.') s.pop_back();
    return s;
  }
  const json& j_;
  std::string prefix_;
  std::set<std::string> read_;
};

std::vector<std::string> parse_stop(Fields& f) {
  const json* v = f.get("stop");
  if (!v) return {};
  std::vector<std::string> out;
  if (v->is_string()) out.push_back(v->get<std::string>());
  else if (v->is_array() && v->size() <= 4) {
    for (const json& s : *v) {
      if (!s.is_string()) throw bad("stop", std::string("expected strings, got ") + type_name(s));
      out.push_back(s.get<std::string>());
    }
  } else {
    throw bad("stop", v->is_array() ? "at most 4 stop strings" : std::string("expected a string or an array of strings, got ") + type_name(*v));
  }
  for (const std::string& s : out)
    if (s.empty()) throw bad("stop", "stop strings must not be empty");
  return out;
}

std::string message_content(const json& content, const std::string& field) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) throw bad(field, std::string("expected a string or an array of text parts, got ") + type_name(content));
  std::string text;
  for (size_t i = 0; i < content.size(); ++i) {
    const std::string part_name = field + "[" + std::to_string(i) + "]";
    if (!content[i].is_object()) throw bad(part_name, std::string("expected an object, got ") + type_name(content[i]));
    Fields part(content[i], part_name + ".");
    if (part.string("type", true) != "text") throw bad(part_name + ".type", "only \"text\" parts are supported");
    text += part.string("text", true);
    part.reject_unknown();
  }
  return text;
}

std::vector<generate::Message> parse_messages(Fields& f) {
  const json* v = f.get("messages");
  if (!v) throw bad("messages", "is required");
  if (!v->is_array() || v->empty()) throw bad("messages", std::string("expected a non-empty array, got ") + (v->is_array() ? "an empty one" : type_name(*v)));
  std::vector<generate::Message> out;
  for (size_t i = 0; i < v->size(); ++i) {
    const std::string name = "messages[" + std::to_string(i) + "]";
    if (!(*v)[i].is_object()) throw bad(name, std::string("expected an object, got ") + type_name((*v)[i]));
    Fields m((*v)[i], name + ".");
    generate::Message msg;
    msg.role = m.string("role", true);
    if (msg.role != "system" && msg.role != "user" && msg.role != "assistant")
      throw bad(name + ".role", "expected \"system\", \"user\" or \"assistant\", got \"" + msg.role + "\"");
    const json* content = m.get("content");
    if (!content) throw bad(name + ".content", "is required");
    msg.content = message_content(*content, name + ".content");
    m.string("name", false);  // a participant's name: accepted, not used by the chat formats
    m.reject_unknown();
    out.push_back(std::move(msg));
  }
  return out;
}

}  // namespace

CompletionRequest parse_completion_request(const std::string& body, bool chat, const RequestLimits& limits, uint64_t default_seed) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for a number past double (1e400)
    throw ApiError(400, std::string("the request body is not valid JSON: ") + e.what());
  }
  if (!j.is_object()) throw ApiError(400, std::string("the request body must be a JSON object, got ") + type_name(j));
  Fields f(j, "");
  CompletionRequest r;
  r.chat = chat;
  r.model = f.string("model", false);
  if (chat) {
    r.messages = parse_messages(f);
  } else {
    const json* p = f.get("prompt");
    if (!p) throw bad("prompt", "is required");
    if (p->is_array() && p->size() == 1 && (*p)[0].is_string()) r.prompt = (*p)[0].get<std::string>();
    else if (p->is_string()) r.prompt = p->get<std::string>();
    else throw bad("prompt", std::string("expected a string (or an array of one string), got ") + type_name(*p));
  }
  const int64_t max_tokens = f.integer("max_tokens", limits.default_max_tokens, 0, limits.max_tokens);
  r.options.max_new_tokens = chat ? f.integer("max_completion_tokens", max_tokens, 0, limits.max_tokens) : max_tokens;
  generate::SamplingOptions& s = r.options.sampling;
  s.temperature = static_cast<float>(f.number("temperature", s.temperature, 0, 2));
  s.top_p = static_cast<float>(f.number("top_p", s.top_p, 1e-6, 1));
  s.top_k = f.integer("top_k", s.top_k, 0, 1 << 30);  // llama.cpp's extensions
  s.min_p = static_cast<float>(f.number("min_p", s.min_p, 0, 1));
  s.repeat_penalty = static_cast<float>(f.number("repeat_penalty", s.repeat_penalty, 1e-3, 100));
  s.seed = static_cast<uint64_t>(f.integer("seed", static_cast<int64_t>(default_seed & 0x7fffffffffffffffULL), INT64_MIN, INT64_MAX));
  r.options.stop = parse_stop(f);
  r.stream = f.boolean("stream", false);
  if (const json* so = f.get("stream_options")) {
    if (!so->is_object()) throw bad("stream_options", std::string("expected an object, got ") + type_name(*so));
    Fields sof(*so, "stream_options.");
    r.include_usage = sof.boolean("include_usage", false);
    sof.reject_unknown();
  }
  // Accepted where they ask for nothing we lack; anything else is refused rather than ignored.
  f.integer("n", 1, 1, 1);  // one choice per request
  f.string("user", false);
  for (const char* penalty : {"presence_penalty", "frequency_penalty"})
    if (f.number(penalty, 0, -2, 2) != 0) throw bad(penalty, "not supported (use repeat_penalty); must be 0");
  if (const json* lp = f.get("logprobs"); lp && !(lp->is_boolean() && !lp->get<bool>()))
    throw bad("logprobs", "not supported");
  if (!chat && f.boolean("echo", false)) throw bad("echo", "not supported");
  f.reject_unknown();
  return r;
}

const char* finish_reason(const generate::Generation& g) { return g.finish_reason == "length" ? "length" : "stop"; }

nlohmann::json usage_json(int64_t prompt_tokens, int64_t completion_tokens) {
  return {{"prompt_tokens", prompt_tokens}, {"completion_tokens", completion_tokens}, {"total_tokens", prompt_tokens + completion_tokens}};
}

namespace {
json envelope(const ResponseHeader& h, bool chunk) {
  const char* object = h.chat ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion";
  return {{"id", h.id}, {"object", object}, {"created", h.created}, {"model", h.model}};
}
}  // namespace

nlohmann::json completion_response(const ResponseHeader& h, const generate::Generation& g, int64_t prompt_tokens) {
  json out = envelope(h, false);
  json choice = {{"index", 0}, {"finish_reason", finish_reason(g)}, {"logprobs", nullptr}};
  if (h.chat) choice["message"] = {{"role", "assistant"}, {"content", g.text}};
  else choice["text"] = g.text;
  out["choices"] = json::array({choice});
  out["usage"] = usage_json(prompt_tokens, static_cast<int64_t>(g.tokens.size()));
  return out;
}

nlohmann::json stream_chunk(const ResponseHeader& h, const std::string& text, const char* finish, bool first) {
  json out = envelope(h, true);
  json choice = {{"index", 0}, {"finish_reason", finish ? json(finish) : json(nullptr)}, {"logprobs", nullptr}};
  if (h.chat) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!text.empty() || (first && !finish)) delta["content"] = text;
    choice["delta"] = delta;
  } else {
    choice["text"] = text;
  }
  out["choices"] = json::array({choice});
  return out;
}

nlohmann::json usage_chunk(const ResponseHeader& h, int64_t prompt_tokens, int64_t completion_tokens) {
  json out = envelope(h, true);
  out["choices"] = json::array();
  out["usage"] = usage_json(prompt_tokens, completion_tokens);
  return out;
}

}  // namespace llm::serve
