// llm-eval --model PATH --text FILE [--tokenizer SPEC] [--seq-len T] [--stride S] [--threads N]
//   Sliding-window perplexity of a text file (Hugging Face's perplexity-guide method).
// llm-eval --model PATH --tokens IDS.npy --logits-out OUT.npy [--threads N]
//   The model's logits for given token ids, as a float32 .npy, for comparing with other frameworks.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <string>

#include "data/tokenizer.h"
#include "engine/core/error.h"
#include "engine/train/eval.h"
#include "engine/train/pretrained.h"
#include "kernels/cpu/parallel.h"
#include "tools/cli.h"

namespace {

using llm::cli::fail;
using llm::cli::positive;

const char* kUsage =
    "usage: llm-eval --model PATH --text FILE [--tokenizer SPEC] [--seq-len T] [--stride S] [--threads N] [--quantize q8]\n"
    "                [--device cpu|cuda] [--dtype bf16|f32]\n"
    "       llm-eval --model PATH --tokens IDS.npy --logits-out OUT.npy [--threads N]\n"
    "  PATH: a Hugging Face directory, an llm checkpoint (.h5) or a llama2.c .bin\n"
    "  --text: mean loss (nats/token) and perplexity with windows of T tokens moving by S\n"
    "          (defaults: T = the model's context, at most 1024; S = T); --device cuda runs the model on the\n"
    "          GPU, bf16 unless --dtype f32\n"
    "  --tokens: int32/int64 .npy of shape [B, T]; writes float32 logits [B, T, V] to --logits-out\n";

struct Args {
  std::string model, text, tokenizer, tokens, logits_out, device = "cpu", dtype;
  int64_t seq_len = 0, stride = 0;
  int threads = 0;
  bool q8 = false;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) fail(f + " needs a value");
      return argv[++i];
    };
    if (f == "--model" || f == "-m") a.model = value();
    else if (f == "--text") a.text = value();
    else if (f == "--tokenizer") a.tokenizer = value();
    else if (f == "--seq-len") a.seq_len = positive<int64_t>(f, value());
    else if (f == "--stride") a.stride = positive<int64_t>(f, value());
    else if (f == "--threads" || f == "-t") a.threads = llm::cli::threads(f, value());
    else if (f == "--quantize") a.q8 = llm::cli::quantize_q8(value());
    else if (f == "--device") a.device = value();
    else if (f == "--dtype") a.dtype = value();
    else if (f == "--tokens") a.tokens = value();
    else if (f == "--logits-out") a.logits_out = value();
    else if (f == "-h" || f == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else {
      fail("unknown argument '" + f + "'\n" + kUsage);
    }
  }
  if (a.model.empty()) fail(std::string("--model is required\n") + kUsage);
  if (a.text.empty() == a.tokens.empty()) fail(std::string("give exactly one of --text or --tokens\n") + kUsage);
  if (!a.tokens.empty() && a.logits_out.empty()) fail("--tokens needs --logits-out");
  if (a.tokens.empty() && !a.logits_out.empty()) fail("--logits-out goes with --tokens");
  if (!a.tokens.empty() && (a.seq_len || a.stride || !a.tokenizer.empty() || a.device != "cpu" || !a.dtype.empty()))
    fail("--seq-len, --stride, --tokenizer, --device and --dtype go with --text, not --tokens");
  if (a.stride && a.seq_len && a.stride > a.seq_len) fail("--stride: must not exceed --seq-len");
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = parse(argc, argv);
  using namespace llm;
  try {
    cpu::set_num_threads(a.threads);
    if (!a.tokens.empty()) {
      LLM_CHECK(std::filesystem::is_regular_file(a.tokens), a.tokens, ": no such file");
      auto model = train::load_model(a.model);
      if (a.q8) model->quantize_q8();
      const Shape shape = train::write_logits_npy(*model, a.tokens, a.logits_out);
      std::printf("wrote %s: float32 logits %s\n", a.logits_out.c_str(), shape.str().c_str());
      return 0;
    }
    LLM_CHECK(std::filesystem::is_regular_file(a.text), a.text, ": no such text file");
    const std::string text = data::read_file(a.text);
    const io::LoadedModel loaded = train::load_pretrained(a.model);
    const std::string spec = !a.tokenizer.empty() ? a.tokenizer : loaded.tokenizer;
    LLM_CHECK(!spec.empty(), a.model, ": no tokenizer came with the model; pass --tokenizer SPEC");
    const auto tokenizer = data::load_tokenizer(spec);
    train::check_tokenizer_fits(*tokenizer, loaded.config, spec, a.model);
    const std::vector<int32_t> ids = train::encode_for_eval(*tokenizer, text);
    LLM_CHECK(ids.size() >= 2, a.text, ": too short to evaluate (", ids.size(), " token(s); at least 2 are needed)");
    auto model = train::make_loaded_model(loaded);
    train::place(*model, train::parse_placement(a.device, a.dtype), a.q8);
    if (a.q8) model->quantize_q8();
    train::PerplexityOptions options;
    options.seq_len = a.seq_len;
    options.stride = a.stride;
    const bool progress = ::isatty(STDERR_FILENO) != 0;
    const train::PerplexityResult r = train::evaluate_perplexity(*model, ids, options, [&](int64_t w, int64_t n) {
      if (!progress || n < 2) return;
      std::fprintf(stderr, "\rwindow %lld/%lld", static_cast<long long>(w), static_cast<long long>(n));
      if (w == n) std::fprintf(stderr, "\r\033[K");
    });
    std::printf("model: %s (%s)\n", a.model.c_str(), model->config().summary().c_str());
    std::printf("text: %s: %lld tokens, %lld scored, %lld window(s) of %lld, stride %lld\n", a.text.c_str(),
                static_cast<long long>(r.tokens), static_cast<long long>(r.scored), static_cast<long long>(r.windows),
                static_cast<long long>(r.seq_len), static_cast<long long>(r.stride));
    std::printf("loss: %.4f nats/token | perplexity: %.4f | %.1f tokens/s\n", r.loss, r.perplexity,
                static_cast<double>(r.forwarded) / std::max(r.seconds, 1e-9));
  } catch (const std::exception& e) {  // llm::Error, and any library exception a bad input provokes
    fail(e.what(), 1);
  }
  return 0;
}
