#include "engine/serve/server.h"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include <sys/resource.h>

#include "engine/core/error.h"
#include "engine/generate/batch_decoder.h"
#include "engine/serve/api.h"

namespace llm::serve {

using clock_type = std::chrono::steady_clock;
using nlohmann::json;

namespace {

// JSON text; text cut inside a UTF-8 character (a token boundary) is replaced, never a throw.
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(error_body(e), "application/json");
}

// The error for a status httplib itself produced (malformed request, unknown route, oversize body).
ApiError error_for_status(const httplib::Request& req, int status) {
  switch (status) {
    // httplib answers 400 itself when the request line does not parse (path still empty), or when the
    // headers or the body cannot be read.
    case 400:
      if (req.path.empty())
        return ApiError(400, "malformed HTTP request line (expected e.g. \"POST /v1/completions HTTP/1.1\" with a known method)",
                        "invalid_request_error", "", "bad_request");
      return ApiError(400, "cannot read the request's headers or body: a header line too long, a body shorter than its "
                           "Content-Length, a malformed chunked body, or a body with neither Content-Length nor chunked encoding",
                      "invalid_request_error", "", "bad_request");
    case 404: return ApiError(404, "Unknown request URL: " + req.method + " " + req.path, "invalid_request_error", "", "unknown_url");
    case 413: {
      // cpp-httplib caps form-encoded bodies (curl -d's default type) at 8 KiB, whatever the limit.
      const bool form = req.get_header_value("Content-Type").find("x-www-form-urlencoded") != std::string::npos;
      // httplib reads a Content-Length it cannot parse ("-5") as too large; say what was wrong.
      const std::string length = req.get_header_value("Content-Length");
      if (!length.empty() && length.find_first_not_of("0123456789") != std::string::npos)
        return ApiError(400, "Content-Length: expected a number of bytes, got \"" + length + "\"", "invalid_request_error", "", "bad_request");
      return ApiError(413, std::string("the request body is too large") + (form ? " for a form-encoded body; send it as Content-Type: application/json" : ""),
                      "invalid_request_error", "", "request_too_large");
    }
    case 414: return ApiError(414, "the request URL is too long", "invalid_request_error", "", "request_too_large");
    default: return ApiError(status, "request failed with HTTP status " + std::to_string(status), status >= 500 ? "server_error" : "invalid_request_error");
  }
}

// One request between its handler thread and the decode thread.
struct Job {
  CompletionRequest request;
  std::vector<int32_t> prompt;
  ResponseHeader header;
  clock_type::time_point deadline;
  std::atomic<bool> cancelled{false};  // the client went away: stop decoding it

  std::mutex mu;
  std::condition_variable cv;
  std::string text;  // produced and not yet taken by a stream
  bool done = false;
  generate::Generation result;
  std::optional<ApiError> error;  // instead of a result: timeout, shutdown, failure

  void add_text(const std::string& t) {
    std::lock_guard<std::mutex> lk(mu);
    text += t;
    cv.notify_all();
  }
  void finish(generate::Generation&& g, std::optional<ApiError> err) {
    std::lock_guard<std::mutex> lk(mu);
    if (done) return;
    result = std::move(g);
    error = std::move(err);
    done = true;
    cv.notify_all();
  }
};

ApiError timeout_error() { return ApiError(504, "the request timed out", "server_error", "", "timeout"); }
ApiError shutdown_error() { return ApiError(503, "the server is shutting down", "server_error", "", "unavailable"); }

}  // namespace

struct Server::Impl {
  Impl(models::CausalLM& m, const data::Tokenizer& t, generate::ChatTemplate c, ServerOptions o)
      : model(m), tokenizer(t), chat_template(std::move(c)), options(std::move(o)) {}

  models::CausalLM& model;
  const data::Tokenizer& tokenizer;
  generate::ChatTemplate chat_template;
  ServerOptions options;
  httplib::Server http;
  std::thread http_thread, decode_thread;
  bool started = false;

  std::mutex mu;  // guards queue, stopping, running_count
  std::condition_variable cv;
  std::deque<std::shared_ptr<Job>> queue;
  bool stopping = false;
  int64_t running_count = 0;
  int64_t peak_running = 0;       // the most requests ever decoded together
  int64_t cancelled_count = 0;    // requests whose client went away before the end
  std::atomic<uint64_t> request_counter{0};

  void routes();
  std::shared_ptr<Job> submit(const httplib::Request& req, bool chat);
  void completion(const httplib::Request& req, httplib::Response& res, bool chat);
  void stream(httplib::Response& res, const std::shared_ptr<Job>& job);
  void decode_loop();
  int64_t slot_context() const {
    const int64_t model_context = model.config().max_seq_len;
    return options.context > 0 ? std::min(options.context, model_context) : model_context;
  }
};

Server::Server(models::CausalLM& model, const data::Tokenizer& tokenizer, generate::ChatTemplate chat, ServerOptions options)
    : impl_(std::make_unique<Impl>(model, tokenizer, std::move(chat), std::move(options))) {}

Server::~Server() { stop(); }

int Server::start() {
  Impl& s = *impl_;
  const ServerOptions& o = s.options;
  LLM_CHECK(!s.started, "llm-serve: the server was already started");
  LLM_CHECK(o.max_batch >= 1, "llm-serve: --max-batch must be at least 1, got ", o.max_batch);
  LLM_CHECK(o.max_queue >= 0, "llm-serve: --max-queue must not be negative, got ", o.max_queue);
  LLM_CHECK(o.max_tokens >= 1 && o.default_max_tokens >= 0 && o.default_max_tokens <= o.max_tokens,
            "llm-serve: need 1 <= max tokens and 0 <= default max tokens <= max tokens");
  LLM_CHECK(o.request_timeout_s > 0, "llm-serve: --timeout must be positive");
  LLM_CHECK(o.context >= 0, "llm-serve: --ctx must not be negative, got ", o.context);
  // One HTTP thread per slot and queue place (routes()): asking for more than the system can start
  // ended the process from the listening thread (std::terminate), so the count is checked here.
  int64_t thread_limit = 32768;
  struct rlimit nproc {};
  if (::getrlimit(RLIMIT_NPROC, &nproc) == 0 && nproc.rlim_cur != RLIM_INFINITY)
    thread_limit = std::min<int64_t>(thread_limit, static_cast<int64_t>(nproc.rlim_cur / 2));
  LLM_CHECK(o.max_batch <= thread_limit - 8 - o.max_queue, "llm-serve: --max-batch ", o.max_batch, " + --max-queue ",
            o.max_queue, " must be at most ", thread_limit - 8, " (the server starts one HTTP thread for each)");
  s.routes();
  const int port = o.port == 0 ? s.http.bind_to_any_port(o.host) : (s.http.bind_to_port(o.host, o.port) ? o.port : -1);
  LLM_CHECK(port > 0, "llm-serve: cannot listen on ", o.host, ":", o.port, " (address in use or not available)");
  s.started = true;
  s.decode_thread = std::thread([&s] { s.decode_loop(); });
  s.http_thread = std::thread([&s] { s.http.listen_after_bind(); });
  return port;
}

void Server::stop() {
  Impl& s = *impl_;
  if (!s.started) return;
  {
    std::lock_guard<std::mutex> lk(s.mu);
    if (s.stopping) return;
    s.stopping = true;
  }
  s.cv.notify_all();
  s.decode_thread.join();  // fails every queued and running request, waking their handlers
  s.http.stop();
  s.http_thread.join();
}

void Server::Impl::routes() {
  // Each handler thread waits for (or streams) one request; leave room for every slot and the queue.
  const size_t threads = static_cast<size_t>(options.max_batch + options.max_queue + 8);
  http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http.set_payload_max_length(options.max_body_bytes);
  http.set_keep_alive_timeout(5);

  http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (options.api_key.empty() || req.path == "/health") return httplib::Server::HandlerResponse::Unhandled;
    if (req.get_header_value("Authorization") == "Bearer " + options.api_key) return httplib::Server::HandlerResponse::Unhandled;
    send_error(res, ApiError(401, req.has_header("Authorization") ? "Incorrect API key provided" : "Missing API key: pass it as \"Authorization: Bearer KEY\"",
                             "invalid_request_error", "", "invalid_api_key"));
    return httplib::Server::HandlerResponse::Handled;
  });
  http.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;  // our own error body
    send_error(res, error_for_status(req, res.status));
    return httplib::Server::HandlerResponse::Handled;
  }));
  http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "unknown exception";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    send_error(res, ApiError(500, "internal error: " + what, "server_error"));
  });

  http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    std::lock_guard<std::mutex> lk(mu);
    res.set_content(dump({{"status", "ok"}, {"running", running_count}, {"queued", queue.size()}, {"slots", options.max_batch},
                         {"peak_running", peak_running}, {"cancelled", cancelled_count}}),
                    "application/json");
  });
  http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    const json model_entry = {{"id", options.model_name}, {"object", "model"}, {"created", 0}, {"owned_by", "llm"}};
    res.set_content(dump({{"object", "list"}, {"data", json::array({model_entry})}}), "application/json");
  });
  http.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) { completion(req, res, false); });
  http.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) { completion(req, res, true); });
}

std::shared_ptr<Job> Server::Impl::submit(const httplib::Request& req, bool chat) {
  const uint64_t n = ++request_counter;
  RequestLimits limits;
  limits.max_tokens = options.max_tokens;
  limits.default_max_tokens = options.default_max_tokens;
  auto job = std::make_shared<Job>();
  job->request = parse_completion_request(req.body, chat, limits, /*default_seed=*/n);
  const CompletionRequest& r = job->request;
  if (!r.model.empty() && r.model != options.model_name)
    throw ApiError(404, "The model '" + r.model + "' does not exist; this server has '" + options.model_name + "'",
                   "invalid_request_error", "model", "model_not_found");
  if (chat) {
    try {
      job->prompt = chat_template.encode(tokenizer, r.messages, true);
    } catch (const Error& e) {  // the template refused the conversation (raise_exception) or failed
      throw ApiError(400, std::string("the chat template: ") + e.what(), "invalid_request_error", "messages", "");
    }
    for (const std::string& s : chat_template.stop_strings()) job->request.options.stop.push_back(s);
  } else {
    job->prompt = generate::encode_prompt(tokenizer, r.prompt);
  }
  const int64_t context = slot_context();
  if (static_cast<int64_t>(job->prompt.size()) >= context)
    throw ApiError(400, "the prompt has " + std::to_string(job->prompt.size()) + " tokens; the context per request is " +
                            std::to_string(context), "invalid_request_error", chat ? "messages" : "prompt", "context_length_exceeded");
  job->header = {std::string(chat ? "chatcmpl-" : "cmpl-") + std::to_string(n), options.model_name,
                 std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count(), chat};
  // At most ~30 years: a larger --timeout (1e18) overflowed the clock, and every request timed out at once.
  const double timeout_s = std::min(options.request_timeout_s, 1e9);
  job->deadline = clock_type::now() + std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(timeout_s));
  {
    std::lock_guard<std::mutex> lk(mu);
    if (stopping) throw shutdown_error();
    // Requests beyond the free slots wait; at most max_queue of them.
    const int64_t free_slots = std::max<int64_t>(0, options.max_batch - running_count);
    if (static_cast<int64_t>(queue.size()) >= options.max_queue + free_slots)
      throw ApiError(429, "the server is busy (" + std::to_string(queue.size()) + " requests queued); retry later", "rate_limit_error", "", "queue_full");
    queue.push_back(job);
  }
  cv.notify_all();
  return job;
}

void Server::Impl::completion(const httplib::Request& req, httplib::Response& res, bool chat) {
  std::shared_ptr<Job> job;
  try {
    job = submit(req, chat);
  } catch (const ApiError& e) {
    return send_error(res, e);
  } catch (const Error& e) {  // a tokenizer or template problem with this input
    return send_error(res, ApiError(400, e.what()));
  }
  if (job->request.stream) return stream(res, job);
  std::unique_lock<std::mutex> lk(job->mu);
  job->cv.wait(lk, [&] { return job->done; });
  if (job->error) return send_error(res, *job->error);
  res.set_content(dump(completion_response(job->header, job->result, static_cast<int64_t>(job->prompt.size()))), "application/json");
}

void Server::Impl::stream(httplib::Response& res, const std::shared_ptr<Job>& job) {
  res.set_header("Cache-Control", "no-cache");
  auto first = std::make_shared<bool>(true);
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, job, first](size_t, httplib::DataSink& sink) {
        std::unique_lock<std::mutex> lk(job->mu);
        if (!job->cv.wait_for(lk, std::chrono::seconds(1), [&] { return job->done || !job->text.empty(); })) {
          // Nothing yet (queued, or a long prompt): an SSE comment, which clients ignore, tells
          // whether the client is still there.
          lk.unlock();
          static const char kKeepAlive[] = ": keep-alive\n\n";
          if (sink.write(kKeepAlive, sizeof(kKeepAlive) - 1)) return true;
          job->cancelled = true;
          cv.notify_all();
          return false;
        }
        const std::string text = std::move(job->text);
        job->text.clear();
        const bool done = job->done;
        lk.unlock();
        std::string out;
        auto event = [&out](const json& j) { out += "data: " + dump(j) + "\n\n"; };
        if (!text.empty() || (*first && done && job->request.chat && !job->error)) event(stream_chunk(job->header, text, nullptr, *first));
        if (!out.empty()) *first = false;
        if (done) {
          if (job->error) {
            out += "data: " + error_body(*job->error) + "\n\n";
          } else {
            event(stream_chunk(job->header, "", finish_reason(job->result), *first));
            if (job->request.include_usage)
              event(usage_chunk(job->header, static_cast<int64_t>(job->prompt.size()), static_cast<int64_t>(job->result.tokens.size())));
          }
          out += "data: [DONE]\n\n";
        }
        if (!out.empty() && !sink.write(out.data(), out.size())) {
          job->cancelled = true;  // the client went away; the decode thread frees its slot
          cv.notify_all();
          return false;
        }
        if (done) sink.done();
        return true;
      },
      [this, job](bool success) {
        if (!success) {
          job->cancelled = true;
          cv.notify_all();
        }
      });
}

void Server::Impl::decode_loop() {
  generate::BatchDecoder decoder(model, tokenizer, options.max_batch, options.prefill_chunk, slot_context());
  std::map<uint64_t, std::shared_ptr<Job>> running;
  auto fail_all = [&](const ApiError& e) {
    for (auto& [id, job] : running) {
      job->finish({}, e);
      decoder.cancel(id);
    }
    running.clear();
  };
  for (;;) {
    std::vector<std::shared_ptr<Job>> admitted;
    {
      std::unique_lock<std::mutex> lk(mu);
      cv.wait(lk, [&] { return stopping || !queue.empty() || !running.empty(); });
      if (stopping) break;
      while (!queue.empty() && static_cast<int64_t>(running.size() + admitted.size()) < options.max_batch) {
        admitted.push_back(std::move(queue.front()));
        queue.pop_front();
      }
    }
    const auto now = clock_type::now();
    int64_t cancelled = 0;
    for (const std::shared_ptr<Job>& job : admitted) {
      if (job->cancelled) {
        job->finish({}, ApiError(499, "the client closed the request"));
        ++cancelled;
        continue;
      }
      if (now > job->deadline) {
        job->finish({}, timeout_error());
        continue;
      }
      generate::BatchDecoder::Callbacks cb;
      cb.on_text = [job](const std::string& t) { job->add_text(t); };
      cb.on_done = [job](generate::Generation&& g) { job->finish(std::move(g), std::nullopt); };
      try {
        running[decoder.add(job->prompt, job->request.options, cb)] = job;
      } catch (const Error& e) {
        job->finish({}, ApiError(400, e.what()));
      }
    }
    // Requests whose client went away or whose time ran out leave the batch before the step.
    for (auto it = running.begin(); it != running.end();) {
      const std::shared_ptr<Job> job = it->second;
      if (job->cancelled || now > job->deadline) {
        cancelled += job->cancelled ? 1 : 0;
        if (!job->cancelled) job->finish({}, timeout_error());  // before cancel's on_done, so the 504 wins
        decoder.cancel(it->first);
        it = running.erase(it);
      } else {
        ++it;
      }
    }
    const int64_t batch_size = static_cast<int64_t>(running.size());
    try {
      decoder.step();
    } catch (const std::exception& e) {
      fail_all(ApiError(500, std::string("generation failed: ") + e.what(), "server_error"));
    }
    // Finished jobs (done is only ever set on this thread) leave the table.
    for (auto it = running.begin(); it != running.end();) it = it->second->done ? running.erase(it) : std::next(it);
    {
      std::lock_guard<std::mutex> lk(mu);
      peak_running = std::max(peak_running, batch_size);
      running_count = static_cast<int64_t>(running.size());
      cancelled_count += cancelled;
    }
  }
  fail_all(shutdown_error());
  std::lock_guard<std::mutex> lk(mu);
  for (const std::shared_ptr<Job>& job : queue) job->finish({}, shutdown_error());
  queue.clear();
}

}  // namespace llm::serve
