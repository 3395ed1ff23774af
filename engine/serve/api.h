// The OpenAI-compatible API's JSON: request bodies of /v1/completions and /v1/chat/completions parsed
// and checked (every problem an ApiError naming the field), responses, stream chunks and error objects.
// No HTTP here (server.h), so all of it is testable on strings.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/generate/chat.h"
#include "engine/generate/generate.h"

namespace llm::serve {

// An error as the API reports it: an HTTP status and OpenAI's {"error": {message, type, param, code}}.
struct ApiError : std::runtime_error {
  ApiError(int http_status, const std::string& message, std::string error_type = "invalid_request_error",
           std::string error_param = "", std::string error_code = "")
      : std::runtime_error(message), status(http_status), type(std::move(error_type)), param(std::move(error_param)),
        code(std::move(error_code)) {}
  int status;
  std::string type, param, code;  // param and code: "" becomes null
};
std::string error_body(const ApiError& e);

struct RequestLimits {
  int64_t max_tokens = 1024;         // the most a request may ask for
  int64_t default_max_tokens = 256;  // when it does not say
};

// One completion request, either kind.
struct CompletionRequest {
  bool chat = false;
  std::string model;                        // "" when not given
  std::string prompt;                       // /v1/completions
  std::vector<generate::Message> messages;  // /v1/chat/completions
  generate::GenerateOptions options;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage: a last chunk with the token counts
};

// Parses a request body. Unknown fields, fields of the wrong type and values out of range are
// ApiError 400 naming the field; `default_seed` seeds requests that give none.
CompletionRequest parse_completion_request(const std::string& body, bool chat, const RequestLimits& limits,
                                           uint64_t default_seed);

// OpenAI's finish_reason for a generation's ("eos" and "stop" are both "stop").
const char* finish_reason(const generate::Generation& g);

// The pieces of a response that stay the same across its chunks.
struct ResponseHeader {
  std::string id, model;
  int64_t created = 0;  // Unix seconds
  bool chat = false;
};

nlohmann::json usage_json(int64_t prompt_tokens, int64_t completion_tokens);
// The whole (non-streamed) response.
nlohmann::json completion_response(const ResponseHeader& h, const generate::Generation& g, int64_t prompt_tokens);
// One server-sent-event chunk: text (the first chat chunk also carries the role), or, with a finish
// reason, the closing chunk of the choice. `usage` (when not null) is the extra last chunk's usage.
nlohmann::json stream_chunk(const ResponseHeader& h, const std::string& text, const char* finish, bool first);
nlohmann::json usage_chunk(const ResponseHeader& h, int64_t prompt_tokens, int64_t completion_tokens);

}  // namespace llm::serve
