// llm-serve --model PATH [--host 127.0.0.1] [--port 8080] [--api-key KEY] [options]
// An OpenAI-compatible HTTP server (engine/serve/server.h): /v1/completions, /v1/chat/completions,
// /v1/models, /health, with requests decoded together by continuous batching. Ctrl-C stops it.
#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include <unistd.h>

#include "engine/core/error.h"
#include "engine/generate/chat.h"
#include "engine/serve/server.h"
#include "engine/train/pretrained.h"
#include "kernels/cpu/parallel.h"
#include "tools/cli.h"

namespace {

using llm::cli::fail;
using llm::cli::number;
using llm::cli::positive;

const char* kUsage =
    "usage: llm-serve --model PATH [--host 127.0.0.1] [--port 8080] [--api-key KEY] [--model-name NAME]\n"
    "         [--tokenizer SPEC] [--max-batch 16] [--max-queue 64] [--max-body BYTES] [--max-tokens 1024]\n"
    "         [--default-max-tokens 256] [--timeout SECONDS] [--ctx N] [--threads N] [--quantize q8]\n"
    "         [--device cpu|cuda] [--dtype bf16|f32]\n"
    "  PATH: a Hugging Face directory, an llm checkpoint (.h5) or a llama2.c .bin\n"
    "  --device cuda: weights and KV cache on the GPU, bf16 unless --dtype f32\n"
    "  --max-batch 1 serves one request at a time; --port 0 picks a free port\n"
    "  --ctx: positions per request (prompt + reply; default the model's context); the KV cache\n"
    "  holds max-batch x ctx positions\n";

struct Args {
  std::string model, tokenizer, device = "cpu", dtype;
  llm::serve::ServerOptions server;
  int threads = 0;
  bool q8 = false;
};

Args parse(int argc, char** argv) {
  Args a;
  a.server.model_name.clear();
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) fail(f + " needs a value");
      return argv[++i];
    };
    if (f == "--model" || f == "-m") a.model = value();
    else if (f == "--tokenizer") a.tokenizer = value();
    else if (f == "--host") a.server.host = value();
    else if (f == "--port") {
      a.server.port = number<int>(f, value());
      if (a.server.port < 0 || a.server.port > 65535) fail("--port: must be in [0, 65535]");
    }
    else if (f == "--api-key") a.server.api_key = value();
    else if (f == "--model-name") a.server.model_name = value();
    else if (f == "--max-batch") a.server.max_batch = positive<int64_t>(f, value());
    else if (f == "--max-queue") {
      a.server.max_queue = number<int64_t>(f, value());
      if (a.server.max_queue < 0) fail("--max-queue: must not be negative");
    }
    else if (f == "--max-body") a.server.max_body_bytes = positive<size_t>(f, value());
    else if (f == "--max-tokens") a.server.max_tokens = positive<int64_t>(f, value());
    else if (f == "--default-max-tokens") a.server.default_max_tokens = positive<int64_t>(f, value());
    else if (f == "--timeout") a.server.request_timeout_s = positive<double>(f, value());
    else if (f == "--ctx") a.server.context = positive<int64_t>(f, value());
    else if (f == "--threads" || f == "-t") a.threads = llm::cli::threads(f, value());
    else if (f == "--quantize") a.q8 = llm::cli::quantize_q8(value());
    else if (f == "--device") a.device = value();
    else if (f == "--dtype") a.dtype = value();
    else if (f == "-h" || f == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else {
      fail("unknown argument '" + f + "'\n" + kUsage);
    }
  }
  if (a.model.empty()) fail(std::string("--model is required\n") + kUsage);
  if (a.server.default_max_tokens > a.server.max_tokens) a.server.default_max_tokens = a.server.max_tokens;
  if (a.server.model_name.empty()) a.server.model_name = std::filesystem::path(a.model).filename().string();
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = parse(argc, argv);
  using namespace llm;
  try {
    cpu::set_num_threads(a.threads);
    const train::Placement where = train::parse_placement(a.device, a.dtype);
    const auto [model, tokenizer] = train::load_inference_model(a.model, a.tokenizer, a.q8, "pass --tokenizer SPEC", where);
    const generate::ChatTemplate chat = generate::ChatTemplate::of_model(a.model);

    // Ctrl-C and SIGTERM are taken by sigwait on this thread (blocked in every thread the server
    // starts), so stopping runs as ordinary code rather than inside a signal handler.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    const models::ModelConfig& c = model->config();
    const int64_t ctx = a.server.context > 0 ? std::min(a.server.context, c.max_seq_len) : c.max_seq_len;
    const double cache_mib = 2.0 * c.n_layers * a.server.max_batch * ctx * c.n_kv_heads * c.head_dim() *
                             static_cast<double>(dtype_size(where.dtype)) / (1 << 20);
    // A KV cache larger than the machine's memory is a typo in --max-batch or --ctx: say so now, not by
    // an exception from the decode thread or the kernel's OOM killer later.
    const double ram_mib = static_cast<double>(::sysconf(_SC_PHYS_PAGES)) * static_cast<double>(::sysconf(_SC_PAGE_SIZE)) / (1 << 20);
    LLM_CHECK(where.device.is_cuda() || ram_mib <= 0 || cache_mib <= ram_mib, "--max-batch ", a.server.max_batch,
              ": a KV cache of ", a.server.max_batch, " slots of ", ctx, " positions needs ", static_cast<int64_t>(cache_mib),
              " MiB, more than this machine's ", static_cast<int64_t>(ram_mib), " MiB of memory (lower --max-batch or --ctx)");
    serve::Server server(*model, *tokenizer, chat, a.server);
    const int port = server.start();
    std::fprintf(stderr, "llm-serve: %s (chat template: %s) on http://%s:%d, %lld slots of %lld positions (KV cache %.1f MiB)%s\n",
                 a.server.model_name.c_str(), chat.origin().c_str(), a.server.host.c_str(), port,
                 static_cast<long long>(a.server.max_batch), static_cast<long long>(ctx), cache_mib,
                 a.server.api_key.empty() ? "" : ", API key required");
    int sig = 0;
    sigwait(&signals, &sig);
    std::fprintf(stderr, "llm-serve: stopping (signal %d)\n", sig);
    server.stop();
  } catch (const std::exception& e) {  // llm::Error, and any library exception a bad input provokes
    fail(e.what(), 1);
  }
  return 0;
}
