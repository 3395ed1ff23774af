// llm-serve-bench --port P [--host 127.0.0.1] [--clients C] [--requests N] [--max-tokens M] [--api-key K] [--json]
// A load client for llm-serve (scripts/bench_serve.sh drives it): C concurrent clients send N streamed
// /v1/completions requests in all (greedy, prompts from a fixed list) and it reports requests/s,
// generated tokens/s and time to first token (from sending a request to its first text event).
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "tools/cli.h"

namespace {

using clock_type = std::chrono::steady_clock;
using llm::cli::fail;
using llm::cli::positive;
using nlohmann::json;

const char* kUsage =
    "usage: llm-serve-bench --port P [--host 127.0.0.1] [--clients 4] [--requests 32] [--max-tokens 64]\n"
    "         [--api-key KEY] [--json]\n";

const std::vector<std::string> kPrompts = {"Once upon a time", "The little dog", "Lily and Ben went to the park.",
                                           "One day, a big bird", "Tom had a red ball.", "The sun was hot and"};

struct Outcome {
  bool ok = false;
  double ttft = 0, seconds = 0;
  int64_t tokens = 0;
  std::string error;
};

// One streamed request: the SSE events are read as they arrive; the last chunk carries the usage.
Outcome one_request(const std::string& host, int port, const std::string& api_key, const std::string& prompt, int64_t max_tokens) {
  Outcome o;
  httplib::Client client(host, port);
  client.set_read_timeout(600, 0);
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.set_header("Content-Type", "application/json");
  if (!api_key.empty()) req.set_header("Authorization", "Bearer " + api_key);
  req.body = json{{"prompt", prompt}, {"max_tokens", max_tokens}, {"temperature", 0}, {"stream", true},
                  {"stream_options", {{"include_usage", true}}}}.dump();
  std::string buffer;
  const auto start = clock_type::now();
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    buffer.append(data, n);
    size_t end;
    while ((end = buffer.find("\n\n")) != std::string::npos) {
      const std::string event = buffer.substr(0, end);
      buffer.erase(0, end + 2);
      if (event.rfind("data: ", 0) != 0 || event == "data: [DONE]") continue;
      const json j = json::parse(event.substr(6), nullptr, false);
      if (j.is_discarded()) continue;
      if (j.contains("error")) o.error = j["error"].value("message", "error");
      if (j.contains("usage") && j["usage"].is_object()) o.tokens = j["usage"]["completion_tokens"].get<int64_t>();
      if (o.ttft == 0 && j.contains("choices") && !j["choices"].empty() && !j["choices"][0].value("text", "").empty())
        o.ttft = std::chrono::duration<double>(clock_type::now() - start).count();
    }
    return true;
  };
  const httplib::Result r = client.send(req);
  o.seconds = std::chrono::duration<double>(clock_type::now() - start).count();
  if (!r) o.error = "no response (" + httplib::to_string(r.error()) + ")";
  else if (r->status != 200) o.error = "HTTP " + std::to_string(r->status) + ": " + r->body;
  o.ok = o.error.empty();
  return o;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))];
}

}  // namespace

int main(int argc, char** argv) {
  std::string host = "127.0.0.1", api_key;
  int port = 0;
  int64_t clients = 4, requests = 32, max_tokens = 64;
  bool as_json = false;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) fail(f + " needs a value");
      return argv[++i];
    };
    if (f == "--host") host = value();
    else if (f == "--port") port = positive<int>(f, value());
    else if (f == "--clients") clients = positive<int64_t>(f, value());
    else if (f == "--requests") requests = positive<int64_t>(f, value());
    else if (f == "--max-tokens") max_tokens = positive<int64_t>(f, value());
    else if (f == "--api-key") api_key = value();
    else if (f == "--json") as_json = true;
    else if (f == "-h" || f == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    } else {
      fail("unknown argument '" + f + "'\n" + kUsage);
    }
  }
  if (port == 0) fail(std::string("--port is required\n") + kUsage);

  std::atomic<int64_t> next{0};
  std::mutex mu;
  std::vector<Outcome> outcomes;
  const auto start = clock_type::now();
  std::vector<std::thread> threads;
  for (int64_t c = 0; c < clients; ++c)
    threads.emplace_back([&] {
      for (int64_t i; (i = next++) < requests;) {
        const Outcome o = one_request(host, port, api_key, kPrompts[static_cast<size_t>(i) % kPrompts.size()], max_tokens);
        std::lock_guard<std::mutex> lk(mu);
        outcomes.push_back(o);
      }
    });
  for (std::thread& t : threads) t.join();
  const double wall = std::chrono::duration<double>(clock_type::now() - start).count();

  int64_t ok = 0, tokens = 0;
  std::vector<double> ttft;
  std::string first_error;
  for (const Outcome& o : outcomes) {
    if (!o.ok) {
      if (first_error.empty()) first_error = o.error;
      continue;
    }
    ++ok;
    tokens += o.tokens;
    ttft.push_back(o.ttft * 1e3);
  }
  if (ok == 0) fail("every request failed; the first: " + first_error, 1);
  double mean_ttft = 0;
  for (double t : ttft) mean_ttft += t / static_cast<double>(ttft.size());
  if (as_json) {
    std::printf("%s\n", json{{"clients", clients}, {"requests", requests}, {"ok", ok}, {"max_tokens", max_tokens},
                             {"seconds", wall}, {"requests_per_s", ok / wall}, {"tokens_per_s", tokens / wall},
                             {"ttft_ms_mean", mean_ttft}, {"ttft_ms_p50", percentile(ttft, 0.5)},
                             {"ttft_ms_p95", percentile(ttft, 0.95)}}.dump().c_str());
  } else {
    std::printf("clients %3lld | %lld/%lld ok in %.2f s | %.2f requests/s | %.1f tokens/s | TTFT mean %.1f ms, p50 %.1f ms, p95 %.1f ms\n",
                static_cast<long long>(clients), static_cast<long long>(ok), static_cast<long long>(requests), wall, ok / wall,
                tokens / wall, mean_ttft, percentile(ttft, 0.5), percentile(ttft, 0.95));
  }
  if (ok < requests) std::fprintf(stderr, "warning: %lld request(s) failed; the first: %s\n", static_cast<long long>(requests - ok), first_error.c_str());
  return ok == requests ? 0 : 1;
}
