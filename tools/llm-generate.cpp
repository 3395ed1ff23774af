// llm-generate --model PATH (--prompt TEXT [--prompt TEXT ...] | --prompt-file F | --chat) [options]
// Text generation with a KV cache. One prompt streams to stdout as it is generated; several prompts
// are decoded together in one batch and printed in order. Speeds go to stderr.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "engine/core/error.h"
#include "engine/generate/chat.h"
#include "engine/generate/generate.h"
#include "engine/train/pretrained.h"
#include "kernels/cpu/parallel.h"
#include "tools/cli.h"

namespace {

using llm::cli::fail;
using llm::cli::number;

const char* kUsage =
    "usage: llm-generate --model PATH (--prompt TEXT [--prompt TEXT ...] | --prompt-file FILE | --chat)\n"
    "         [-n N] [--temp T] [--top-k K] [--top-p P] [--min-p P] [--repeat-penalty R] [--repeat-last-n N]\n"
    "         [--seed S] [--threads N] [--stop TEXT ...] [--ignore-eos] [--tokenizer SPEC] [--system TEXT]\n"
    "         [--quantize q8] [--device cpu|cuda] [--dtype bf16|f32]\n"
    "  PATH: a Hugging Face directory, an llm checkpoint (.h5) or a llama2.c .bin\n"
    "  --device cuda: weights and KV cache on the GPU, bf16 unless --dtype f32 (sampling stays on the CPU)\n"
    "  --temp 0 is greedy; defaults: -n 128 --temp 0.8 --top-k 40 --top-p 0.95 --min-p 0.05 --seed 0\n";

struct Args {
  std::string model, tokenizer, prompt_file, system, device = "cpu", dtype;
  std::vector<std::string> prompts, stop;
  bool chat = false, ignore_eos = false, q8 = false;
  int threads = 0;
  llm::generate::GenerateOptions gen;
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
    else if (f == "--prompt" || f == "-p") a.prompts.push_back(value());
    else if (f == "--prompt-file" || f == "-f") a.prompt_file = value();
    else if (f == "--chat") a.chat = true;
    else if (f == "--system") a.system = value();
    else if (f == "--tokenizer") a.tokenizer = value();
    else if (f == "-n" || f == "--n-predict") a.gen.max_new_tokens = number<int64_t>(f, value());
    else if (f == "--temp") a.gen.sampling.temperature = number<float>(f, value());
    else if (f == "--top-k") a.gen.sampling.top_k = number<int64_t>(f, value());
    else if (f == "--top-p") a.gen.sampling.top_p = number<float>(f, value());
    else if (f == "--min-p") a.gen.sampling.min_p = number<float>(f, value());
    else if (f == "--repeat-penalty") a.gen.sampling.repeat_penalty = number<float>(f, value());
    else if (f == "--repeat-last-n") a.gen.sampling.repeat_last_n = number<int64_t>(f, value());
    else if (f == "--seed" || f == "-s") a.gen.sampling.seed = number<uint64_t>(f, value());
    else if (f == "--threads" || f == "-t") a.threads = llm::cli::threads(f, value());
    else if (f == "--stop") {
      a.stop.push_back(value());
      if (a.stop.back().empty()) fail("--stop: must not be empty");
    }
    else if (f == "--ignore-eos") a.ignore_eos = true;
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
  const int sources = (a.prompts.empty() ? 0 : 1) + (a.prompt_file.empty() ? 0 : 1) + (a.chat ? 1 : 0);
  if (sources != 1) fail(std::string("give exactly one of --prompt, --prompt-file or --chat\n") + kUsage);
  if (a.gen.max_new_tokens < 0) fail("-n: must not be negative");
  a.gen.stop = a.stop;
  a.gen.stop_at_eos = !a.ignore_eos;
  try {
    a.gen.sampling.validate();
  } catch (const llm::Error& e) {
    fail(e.what());
  }
  return a;
}

void print_stats(const llm::generate::GenerateStats& s) {
  std::fprintf(stderr, "\nprompt: %lld tokens, %.1f tokens/s | generation: %lld tokens, %.1f tokens/s | time to first token: %.0f ms\n",
               static_cast<long long>(s.prompt_tokens), s.prompt_tokens / std::max(s.prefill_seconds, 1e-9),
               static_cast<long long>(s.generated_tokens), s.generated_tokens / std::max(s.decode_seconds, 1e-9),
               s.time_to_first_token * 1e3);
}

}  // namespace

int main(int argc, char** argv) {
  Args a = parse(argc, argv);
  using namespace llm;
  try {
    cpu::set_num_threads(a.threads);
    const auto [model, tokenizer] = train::load_inference_model(a.model, a.tokenizer, a.q8, "pass --tokenizer SPEC",
                                                                train::parse_placement(a.device, a.dtype));

    if (a.chat) {
      // Interactive: each user line is one turn; the conversation stays in the prompt.
      const generate::ChatTemplate chat = generate::ChatTemplate::of_model(a.model);
      for (const std::string& s : chat.stop_strings()) a.gen.stop.push_back(s);
      std::vector<generate::Message> history;
      if (!a.system.empty()) history.push_back({"system", a.system});
      std::fprintf(stderr, "chat (template: %s); an empty line or Ctrl-D ends it\n", chat.origin().c_str());
      std::string line;
      while (std::fprintf(stderr, "> "), std::getline(std::cin, line) && !line.empty()) {
        history.push_back({"user", line});
        const std::vector<int32_t> ids = chat.encode(*tokenizer, history, true);
        generate::GenerateStats stats;
        const auto out = generate::generate(*model, *tokenizer, {ids}, a.gen,
                                            [](size_t, const std::string& t) { std::fwrite(t.data(), 1, t.size(), stdout), std::fflush(stdout); },
                                            &stats);
        std::printf("\n");
        history.push_back({"assistant", out[0].text});
        print_stats(stats);
      }
      return 0;
    }

    if (!a.prompt_file.empty()) a.prompts = {data::read_file(a.prompt_file)};
    std::vector<std::vector<int32_t>> ids;
    for (const std::string& p : a.prompts) {
      ids.push_back(generate::encode_prompt(*tokenizer, p));
      // Checked before the prompt is echoed, so a prompt past the context is an error line of its own.
      generate::validate_prompt(model->config(), ids.back(), a.prompts.size() == 1 ? "the prompt" : "prompt " + std::to_string(ids.size()));
    }
    generate::GenerateStats stats;
    if (ids.size() == 1) {
      std::fwrite(a.prompts[0].data(), 1, a.prompts[0].size(), stdout);
      std::fflush(stdout);
      generate::generate(*model, *tokenizer, ids, a.gen,
                         [](size_t, const std::string& t) { std::fwrite(t.data(), 1, t.size(), stdout), std::fflush(stdout); },
                         &stats);
      std::printf("\n");
    } else {
      const auto out = generate::generate(*model, *tokenizer, ids, a.gen, nullptr, &stats);
      for (size_t i = 0; i < out.size(); ++i)
        std::printf("=== %zu (%s)\n%s%s\n", i + 1, out[i].finish_reason.c_str(), a.prompts[i].c_str(), out[i].text.c_str());
    }
    print_stats(stats);
  } catch (const std::exception& e) {  // llm::Error, and any library exception a bad input provokes
    fail(e.what(), 1);
  }
  return 0;
}
