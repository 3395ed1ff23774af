// llm-data: prepare token shards from text, inspect them, encode/decode on the command line.
// A thin main: the work is in data/prepare.h and data/tokenizer.h.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include "data/prepare.h"
#include "data/tokenizer.h"
#include "engine/core/error.h"

namespace {

const char* kUsage =
    "usage:\n"
    "  llm-data prepare --tokenizer SPEC --input FILE... --out DIR [--val-fraction 0.1] [--shard-tokens N]\n"
    "  llm-data inspect DIR [--sample N]\n"
    "  llm-data encode --tokenizer SPEC   (text on stdin -> ids on one line)\n"
    "  llm-data decode --tokenizer SPEC   (ids on stdin -> text)\n"
    "SPEC: \"byte\", a directory with tokenizer.json, encoder.json + vocab.bpe or tokenizer.model, or one of\n"
    "those files. Inputs: .jsonl (one document per line, field \"text\") or text (one document per file).\n";

std::string need_value(const std::vector<std::string>& args, size_t& i) {
  LLM_CHECK(i + 1 < args.size() && args[i + 1].rfind("--", 0) != 0, args[i], ": missing value");
  return args[++i];
}

double parse_double(const std::string& flag, const std::string& s) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  LLM_CHECK(used == s.size() && !s.empty(), flag, ": expected a number, got \"", s, "\"");
  return v;
}

// A whole number (1e8 is fine) in [lowest, 2^53]: a fraction or an out-of-range value is an error
// naming the flag (a cast used to truncate 1.5 to 1 and turn 1e30 into a negative count).
int64_t parse_count(const std::string& flag, const std::string& s, int64_t lowest) {
  const double v = parse_double(flag, s);
  LLM_CHECK(v == std::floor(v) && v >= static_cast<double>(lowest) && v <= 9007199254740992.0, flag,
            ": expected a whole number of at least ", lowest, ", got \"", s, "\"");
  return static_cast<int64_t>(v);
}

int run(const std::vector<std::string>& args) {
  LLM_CHECK(!args.empty(), "no command given\n", kUsage);
  const std::string cmd = args[0];
  if (cmd == "-h" || cmd == "--help") {
    std::cout << kUsage;
    return 0;
  }
  std::string tokenizer, out_dir, dir;
  std::vector<std::string> inputs;
  llm::data::PrepareOptions po;
  int64_t sample = 64;
  for (size_t i = 1; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--tokenizer") {
      tokenizer = need_value(args, i);
    } else if (a == "--out") {
      out_dir = need_value(args, i);
    } else if (a == "--val-fraction") {
      po.val_fraction = parse_double(a, need_value(args, i));
    } else if (a == "--shard-tokens") {
      po.shard_tokens = parse_count(a, need_value(args, i), 1);
    } else if (a == "--sample") {
      sample = parse_count(a, need_value(args, i), 0);
    } else if (a == "--input") {
      LLM_CHECK(i + 1 < args.size() && args[i + 1].rfind("--", 0) != 0, "--input: missing file");
      while (i + 1 < args.size() && args[i + 1].rfind("--", 0) != 0) inputs.push_back(args[++i]);
    } else if (a.rfind("--", 0) != 0 && cmd == "inspect" && dir.empty()) {
      dir = a;
    } else {
      throw llm::Error("unknown argument '" + a + "' for '" + cmd + "'\n" + kUsage);
    }
  }
  if (cmd == "prepare") {
    LLM_CHECK(!tokenizer.empty(), "prepare: --tokenizer is required");
    LLM_CHECK(!inputs.empty(), "prepare: --input is required");
    LLM_CHECK(!out_dir.empty(), "prepare: --out is required");
    po.tokenizer = tokenizer;
    po.inputs = inputs;
    po.out_dir = out_dir;
    const auto r = llm::data::prepare_dataset(po, &std::cerr);
    std::printf("wrote %s: train %lld tokens (%lld documents), val %lld tokens (%lld documents), %.2f s, %.2f M tok/s\n",
                out_dir.c_str(), static_cast<long long>(r.train_tokens), static_cast<long long>(r.train_documents),
                static_cast<long long>(r.val_tokens), static_cast<long long>(r.val_documents), r.seconds,
                r.tokens_per_second / 1e6);
    return 0;
  }
  if (cmd == "inspect") {
    LLM_CHECK(!dir.empty(), "inspect: give the prepared directory");
    llm::data::inspect_dataset(dir, std::cout, sample);
    return 0;
  }
  if (cmd == "encode" || cmd == "decode") {
    LLM_CHECK(!tokenizer.empty(), cmd, ": --tokenizer is required");
    const auto tok = llm::data::load_tokenizer(tokenizer);
    const std::string in((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    if (cmd == "encode") {
      std::cout << llm::data::format_ids(tok->encode(in)) << "\n";
    } else {
      std::cout << tok->decode(llm::data::parse_ids(in, "stdin"));
    }
    return std::cout.good() ? 0 : 1;
  }
  throw llm::Error("unknown command '" + cmd + "'\n" + kUsage);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(std::vector<std::string>(argv + 1, argv + argc));
  } catch (const std::exception& e) {
    std::string msg = e.what();
    const size_t nl = msg.find('\n');  // the one-line error first, usage (if any) after it
    std::fprintf(stderr, "error: %s\n%s", msg.substr(0, nl).c_str(), nl == std::string::npos ? "" : msg.substr(nl + 1).c_str());
    return 1;
  }
}
