// llm-serve's server in-process on a free loopback port, driven by real HTTP requests (httplib::Client):
// results equal generate()'s, concurrent clients are batched, streams are well-formed server-sent
// events, every bad request gets OpenAI's error JSON with the right status, and a client that
// disconnects mid-stream frees its slot while the server keeps serving.
#include "engine/serve/server.h"

#include <httplib.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <thread>

#include "engine/generate/generate.h"
#include "engine/train/pretrained.h"
#include "tests/common/testing.h"

namespace llm::serve {
namespace {

using nlohmann::json;

struct Model {
  std::unique_ptr<models::CausalLM> model =
      train::load_model(std::string(LLM_SOURCE_DIR) + "/tests/fixtures/stories260K/stories260K.bin");
  std::unique_ptr<data::Tokenizer> tok =
      data::load_tokenizer(std::string(LLM_SOURCE_DIR) + "/data/assets/stories260K/tok512.model");
};

Model& shared_model() {
  static Model m;
  return m;
}

// A started server and a client for it.
struct Running {
  explicit Running(ServerOptions o = {}) {
    o.host = "127.0.0.1";
    o.port = 0;
    o.model_name = "stories260K";
    server = std::make_unique<Server>(*shared_model().model, *shared_model().tok, generate::ChatTemplate(), o);
    port = server->start();
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(60, 0);
    return c;
  }
  httplib::Result post(const std::string& path, const std::string& body, const httplib::Headers& headers = {}) const {
    return client().Post(path.c_str(), headers, body, "application/json");
  }
  json health() const { return json::parse(client().Get("/health")->body); }

  std::unique_ptr<Server> server;
  int port = 0;
};

generate::Generation greedy_alone(const std::string& prompt, int64_t max_tokens) {
  generate::GenerateOptions o;
  o.max_new_tokens = max_tokens;
  o.sampling.temperature = 0;
  return generate::generate(*shared_model().model, *shared_model().tok, {generate::encode_prompt(*shared_model().tok, prompt)}, o)[0];
}

std::string completion_body(const std::string& prompt, int max_tokens, bool stream = false) {
  return json{{"prompt", prompt}, {"max_tokens", max_tokens}, {"temperature", 0}, {"stream", stream}}.dump();
}

// The JSON payloads of a server-sent-event stream, "[DONE]" as the string "[DONE]".
std::vector<json> sse_events(const std::string& body) {
  std::vector<json> out;
  size_t pos = 0;
  while ((pos = body.find("data: ", pos)) != std::string::npos) {
    const size_t end = body.find("\n\n", pos);
    const std::string payload = body.substr(pos + 6, end - pos - 6);
    out.push_back(payload == "[DONE]" ? json("[DONE]") : json::parse(payload));
    pos = end;
  }
  return out;
}

void expect_error(const httplib::Result& r, int status, const std::string& message_part, const std::string& param = "") {
  ASSERT_TRUE(r) << "no response";
  EXPECT_EQ(r->status, status) << r->body;
  const json j = json::parse(r->body);
  ASSERT_TRUE(j.contains("error")) << r->body;
  const json& e = j["error"];
  EXPECT_NE(e["message"].get<std::string>().find(message_part), std::string::npos) << r->body;
  EXPECT_TRUE(e["type"].is_string());
  EXPECT_TRUE(e.contains("code"));
  if (!param.empty()) {
    EXPECT_EQ(e["param"], param) << r->body;
  }
}

TEST(Server, CompletionEqualsGenerateAndReportsUsage) {
  Running s;
  const auto r = s.post("/v1/completions", completion_body("Once upon a time", 30));
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const json j = json::parse(r->body);
  const generate::Generation want = greedy_alone("Once upon a time", 30);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["model"], "stories260K");
  EXPECT_EQ(j["choices"][0]["text"], want.text);
  EXPECT_EQ(j["choices"][0]["finish_reason"], want.finish_reason == "length" ? "length" : "stop");
  EXPECT_EQ(j["usage"]["prompt_tokens"], 5);
  EXPECT_EQ(j["usage"]["completion_tokens"], want.tokens.size());

  const json models = json::parse(s.client().Get("/v1/models")->body);
  EXPECT_EQ(models["data"][0]["id"], "stories260K");
  EXPECT_EQ(s.health()["status"], "ok");
}

TEST(Server, ConcurrentClientsAreBatchedAndGetTheirOwnResults) {
  ServerOptions o;
  o.max_batch = 8;
  Running s(o);
  const std::vector<std::string> prompts = {"Once upon a time", "The little dog", "Lily and Ben", "One day",
                                            "Tom had a red ball", "The sun was", "A big fish", "Mom said"};
  std::vector<std::string> got(prompts.size());
  std::vector<std::thread> clients;
  for (size_t i = 0; i < prompts.size(); ++i)
    clients.emplace_back([&, i] {
      const auto r = s.post("/v1/completions", completion_body(prompts[i], 120));
      if (r && r->status == 200) got[i] = json::parse(r->body)["choices"][0]["text"];
      else got[i] = "<failed>";
    });
  for (auto& t : clients) t.join();
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(got[i], greedy_alone(prompts[i], 120).text) << prompts[i];
  EXPECT_GE(s.health()["peak_running"].get<int>(), 2);  // they were decoded together, not one by one
}

TEST(Server, StreamingSendsServerSentEvents) {
  Running s;
  const generate::Generation want = greedy_alone("The little dog", 40);
  const auto r = s.post("/v1/completions", completion_body("The little dog", 40, true));
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  EXPECT_EQ(r->get_header_value("Content-Type"), "text/event-stream");
  const std::vector<json> events = sse_events(r->body);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    text += events[i]["choices"][0]["text"].get<std::string>();
    EXPECT_EQ(events[i]["choices"][0]["finish_reason"].is_null(), i + 2 < events.size()) << i;
  }
  EXPECT_EQ(text, want.text);

  // Chat: the first delta carries the role, the content adds up, usage comes last when asked for.
  const json chat = {{"messages", {{{"role", "system"}, {"content", "Be brief."}}, {{"role", "user"}, {"content", "Tell a story."}}}},
                     {"max_tokens", 12}, {"stream", true}, {"seed", 3}, {"stream_options", {{"include_usage", true}}}};
  const auto rc = s.post("/v1/chat/completions", chat.dump());
  ASSERT_TRUE(rc);
  ASSERT_EQ(rc->status, 200) << rc->body;
  const std::vector<json> ce = sse_events(rc->body);
  ASSERT_GE(ce.size(), 4u);
  EXPECT_EQ(ce[0]["object"], "chat.completion.chunk");
  EXPECT_EQ(ce[0]["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(ce[ce.size() - 2]["usage"]["completion_tokens"], 12);
  std::string streamed;
  for (size_t i = 0; i + 2 < ce.size(); ++i) streamed += ce[i]["choices"][0]["delta"].value("content", "");
  // The same request without streaming gives the same text (same seed).
  json plain = chat;
  plain.erase("stream_options");
  plain["stream"] = false;
  const auto rp = s.post("/v1/chat/completions", plain.dump());
  ASSERT_TRUE(rp);
  const json pj = json::parse(rp->body);
  EXPECT_EQ(pj["object"], "chat.completion");
  EXPECT_EQ(pj["choices"][0]["message"]["content"], streamed);
}

TEST(Server, BadRequestsGetOpenAIErrors) {
  ServerOptions o;
  o.max_body_bytes = 4096;
  o.max_tokens = 100;
  o.default_max_tokens = 16;
  o.context = 64;  // positions per request
  Running s(o);
  expect_error(s.post("/v1/completions", "{\"prompt\": \"hi\""), 400, "not valid JSON");
  expect_error(s.post("/v1/completions", "[1, 2]"), 400, "must be a JSON object");
  expect_error(s.post("/v1/completions", R"({"prompt": 7})"), 400, "expected a string", "prompt");
  expect_error(s.post("/v1/completions", R"({"prompt": "hi", "max_tokens": "ten"})"), 400, "expected an integer", "max_tokens");
  expect_error(s.post("/v1/completions", R"({"prompt": "hi", "temperature": "hot"})"), 400, "expected a number", "temperature");
  expect_error(s.post("/v1/completions", R"({"prompt": "hi", "stream": 1})"), 400, "expected a boolean", "stream");
  expect_error(s.post("/v1/completions", R"({"prompt": "hi", "max_tokens": 101})"), 400, "must be in [0, 100]", "max_tokens");
  expect_error(s.post("/v1/completions", R"({"prompt": "hi", "n": 0})"), 400, "must be in [1, 1]", "n");
  expect_error(s.post("/v1/completions", R"({"prompt": "hi", "top_p": 1.5})"), 400, "must be in", "top_p");
  expect_error(s.post("/v1/completions", R"({"prompt": "hi", "stop": ["a", 3]})"), 400, "expected strings", "stop");
  expect_error(s.post("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x", "extra": 1}]})"), 400,
               "Unrecognized request argument", "messages[0].extra");
  expect_error(s.post("/v1/completions", R"({"prompt": "hi", "temprature": 1})"), 400, "Unrecognized request argument", "temprature");
  expect_error(s.post("/v1/completions", R"({"max_tokens": 3})"), 400, "is required", "prompt");
  expect_error(s.post("/v1/chat/completions", R"({"messages": [{"role": "robot", "content": "x"}]})"), 400, "role", "messages[0].role");
  expect_error(s.post("/v1/chat/completions", R"({"messages": []})"), 400, "non-empty", "messages");
  expect_error(s.post("/v1/completions", R"({"prompt": "hi", "model": "gpt-4"})"), 404, "does not exist", "model");
  expect_error(s.post("/v1/completions", completion_body(std::string(5000, 'a'), 3)), 413, "too large");
  expect_error(s.client().Get("/v1/nothing"), 404, "Unknown request URL");
  expect_error(s.post("/v1/completions", completion_body(std::string(200, '!'), 3)), 400, "context", "prompt");
  // A number past double's range and bytes that are not UTF-8 are bad JSON too (both were a 500: the
  // first escaped as out_of_range, the second broke the error body quoting the bytes).
  expect_error(s.post("/v1/completions", R"({"prompt": "hi", "temperature": 1e400})"), 400, "not valid JSON");
  expect_error(s.post("/v1/completions", "{\"prompt\": \"\xff\xfe\"}"), 400, "not valid JSON");
  EXPECT_EQ(s.health()["status"], "ok");  // still serving
}

// Sends raw bytes (what no HTTP client library would send) and returns the answer, read up to the end
// of its Content-Length body: the server must answer every malformation with a status and an error body.
std::string raw_exchange(int port, const std::string& bytes) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval timeout{30, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  std::string out;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size())) {
    char buf[4096];
    for (ssize_t n; (n = ::recv(fd, buf, sizeof(buf), 0)) > 0;) {
      out.append(buf, static_cast<size_t>(n));
      const size_t head = out.find("\r\n\r\n"), length = out.find("Content-Length: ");
      if (head != std::string::npos && length != std::string::npos && length < head &&
          out.size() >= head + 4 + std::stoul(out.substr(length + 16)))
        break;
    }
  }
  ::close(fd);
  return out;
}

void expect_raw_error(int port, const std::string& request, const std::string& status_line, const std::string& message_part) {
  const std::string answer = raw_exchange(port, request);
  EXPECT_EQ(answer.rfind(status_line, 0), 0u) << answer;
  const size_t body = answer.find("\r\n\r\n");
  ASSERT_NE(body, std::string::npos) << answer;
  const json j = json::parse(answer.substr(body + 4), nullptr, false);
  ASSERT_TRUE(j.is_object() && j.contains("error")) << answer;
  EXPECT_NE(j["error"]["message"].get<std::string>().find(message_part), std::string::npos) << answer;
}

TEST(Server, MalformedHttpGetsErrorsThatSayWhatIsWrong) {
  Running s;
  const std::string post = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n";
  expect_raw_error(s.port, "GARBAGE\r\n\r\n", "HTTP/1.1 400", "malformed HTTP request line");
  expect_raw_error(s.port, "BREW /health HTTP/1.1\r\n\r\n", "HTTP/1.1 400", "malformed HTTP request line");
  expect_raw_error(s.port, post + "Content-Length: -5\r\n\r\n{}", "HTTP/1.1 400", "Content-Length: expected a number of bytes, got \"-5\"");
  expect_raw_error(s.port, post + "Content-Length: 100\r\n\r\n{\"prompt\"", "HTTP/1.1 400", "shorter than its Content-Length");
  expect_raw_error(s.port, post + "Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", "HTTP/1.1 400", "malformed chunked body");
  expect_raw_error(s.port, "GET /" + std::string(10000, 'a') + " HTTP/1.1\r\n\r\n", "HTTP/1.1 414", "URL is too long");
  // A well-formed chunked body is read like any other.
  const std::string body = completion_body("Once", 2);
  char size[32];
  std::snprintf(size, sizeof(size), "%zx", body.size());
  const std::string answer = raw_exchange(s.port, post + "Transfer-Encoding: chunked\r\n\r\n" + size + "\r\n" + body + "\r\n0\r\n\r\n");
  EXPECT_EQ(answer.rfind("HTTP/1.1 200", 0), 0u) << answer;
  EXPECT_EQ(s.health()["status"], "ok");
}

TEST(Server, ApiKeyIsRequiredWhenSet) {
  ServerOptions o;
  o.api_key = "sk-test";
  Running s(o);
  expect_error(s.post("/v1/completions", completion_body("hi", 2)), 401, "Missing API key");
  expect_error(s.post("/v1/completions", completion_body("hi", 2), {{"Authorization", "Bearer wrong"}}), 401, "Incorrect API key");
  expect_error(s.client().Get("/v1/models"), 401, "API key");
  const auto ok = s.post("/v1/completions", completion_body("hi", 2), {{"Authorization", "Bearer sk-test"}});
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << ok->body;
  EXPECT_EQ(s.client().Get("/health")->status, 200);  // health checks need no key
}

TEST(Server, FullQueueGets429AndTimeoutGets504) {
  ServerOptions o;
  o.max_batch = 1;
  o.max_queue = 0;
  Running s(o);
  // Occupy the only slot with a long stream, read until its first event arrives.
  std::atomic<bool> first_event{false}, stop_reading{false};
  std::thread holder([&] {
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.body = completion_body("Once upon a time", 500, true);
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) {
      first_event = true;
      return !stop_reading.load();
    };
    s.client().send(req);
  });
  while (!first_event) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  expect_error(s.post("/v1/completions", completion_body("hi", 2)), 429, "busy");
  stop_reading = true;
  holder.join();

  ServerOptions t;
  t.request_timeout_s = 1e-6;  // expires before the request reaches the decoder
  Running slow(t);
  expect_error(slow.post("/v1/completions", completion_body("hi", 50)), 504, "timed out");
}

TEST(Server, HugeTimeoutMeansNoTimeout) {
  ServerOptions o;
  o.request_timeout_s = 1e18;  // the deadline overflowed the clock: every request got 504 at once
  Running s(o);
  const auto r = s.post("/v1/completions", completion_body("Once", 3));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
}

TEST(Server, ClientThatDisconnectsMidStreamFreesItsSlot) {
  ServerOptions o;
  o.max_batch = 2;
  o.max_tokens = 2000;
  Running s(o);
  int events = 0;
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  // Sampling at a high temperature rarely ends early; the context (512) bounds it otherwise.
  req.body = json{{"prompt", "Once"}, {"max_tokens", 2000}, {"temperature", 1.5}, {"stream", true}, {"seed", 1}}.dump();
  req.set_header("Content-Type", "application/json");
  req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++events < 3; };
  s.client().send(req);  // returns once the receiver refused more: the connection is closed
  EXPECT_EQ(events, 3);
  // The server notices at its next write, cancels the sequence and keeps serving others.
  const auto r = s.post("/v1/completions", completion_body("The little dog", 20));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(json::parse(r->body)["choices"][0]["text"], greedy_alone("The little dog", 20).text);
  for (int i = 0; i < 500 && s.health()["cancelled"] != 1; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const json h = s.health();
  EXPECT_EQ(h["cancelled"], 1);
  EXPECT_EQ(h["running"], 0);
}

TEST(Server, StopFailsNothingSilently) {
  Running s;
  s.server->stop();
  s.server->stop();  // idempotent
  EXPECT_FALSE(s.client().Get("/health"));  // no longer listening
}

}  // namespace
}  // namespace llm::serve
