// llm-serve's engine: an OpenAI-compatible HTTP server (cpp-httplib) over continuous batching.
// HTTP handler threads parse and check requests and queue them; one decode thread owns the model and
// a BatchDecoder, admits queued requests into free slots between steps (a new request joins the
// running batch at the next step) and hands text back to the waiting or streaming handlers.
//   POST /v1/completions, POST /v1/chat/completions (both with "stream": true as server-sent events),
//   GET /v1/models, GET /health. Errors are OpenAI's JSON error objects with the matching status.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "data/tokenizer.h"
#include "engine/generate/chat.h"
#include "engine/models/transformer.h"

namespace llm::serve {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                 // 0: any free port (Server::start returns it)
  std::string api_key;             // when set, requests need "Authorization: Bearer KEY" (not /health)
  std::string model_name = "llm";  // the id /v1/models lists; a request naming another model gets 404
  int64_t max_batch = 16;          // sequences decoded together; 1 serves one request at a time
  int64_t max_queue = 64;          // requests waiting for a slot; more get 429
  size_t max_body_bytes = 1 << 20; // larger bodies get 413
  int64_t max_tokens = 1024;       // the most max_tokens a request may ask for
  int64_t default_max_tokens = 256;
  double request_timeout_s = 120;  // from arrival to the last token; then 504 (or an error event)
  int64_t prefill_chunk = 256;     // prompt tokens per step and sequence (BatchDecoder)
  int64_t context = 0;             // positions per slot (prompt + reply); 0: the model's context. The KV
                                   // cache holds max_batch × context positions for every layer.
};

class Server {
 public:
  // The model and tokenizer must outlive the server; `chat` formats chat requests.
  Server(models::CausalLM& model, const data::Tokenizer& tokenizer, generate::ChatTemplate chat, ServerOptions options);
  ~Server();  // stops
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds and starts serving in background threads; returns the port. Throws llm::Error when the
  // address cannot be bound or the options are invalid.
  int start();
  // Stops accepting, fails queued and running requests with 503, joins the threads. Idempotent.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace llm::serve
