#include "data/prepare.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/shards.h"
#include "data/tokenizer.h"
#include "engine/core/error.h"
#include "engine/io/hdf5_file.h"
#include "engine/io/json_brief.h"

namespace llm::data {
namespace fs = std::filesystem;
using json = nlohmann::json;
using io::json_brief;

namespace {

bool is_jsonl(const std::string& path) { return fs::path(path).extension() == ".jsonl"; }

class Progress {
 public:
  Progress(std::ostream* out, int64_t total_bytes) : out_(out), total_(std::max<int64_t>(1, total_bytes)) {}
  // Left unfinished (an error on the way): end its line, so the error message starts a line of its own.
  ~Progress() {
    if (out_ && drawn_ && !finished_) *out_ << "\n" << std::flush;
  }
  void update(int64_t bytes, int64_t tokens, bool final = false) {
    if (!out_) return;
    const auto now = std::chrono::steady_clock::now();
    if (!final && now - last_ < std::chrono::milliseconds(200)) return;
    last_ = now;
    const double secs = std::chrono::duration<double>(now - start_).count();
    const double frac = std::min(1.0, double(bytes) / double(total_));
    const int width = 30, filled = static_cast<int>(frac * width);
    char line[200];
    std::snprintf(line, sizeof line, "\rprepare [%s%s] %5.1f%%  %.1f/%.1f MB  %lld tokens  %.2f M tok/s",
                  std::string(static_cast<size_t>(filled), '#').c_str(),
                  std::string(static_cast<size_t>(width - filled), '.').c_str(), 100 * frac, bytes / 1e6,
                  total_ / 1e6, static_cast<long long>(tokens), secs > 0 ? tokens / secs / 1e6 : 0.0);
    *out_ << line << (final ? "\n" : "") << std::flush;
    drawn_ = true;
    finished_ = final;
  }

 private:
  bool drawn_ = false, finished_ = false;
  std::ostream* out_;
  int64_t total_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now(), last_{};
};

int64_t count_documents(const std::string& path) {
  if (!is_jsonl(path)) return 1;
  std::ifstream f(path);
  std::string line;
  int64_t n = 0;
  while (std::getline(f, line)) n += line.find_first_not_of(" \t\r") != std::string::npos;
  return n;
}

}  // namespace

PrepareResult prepare_dataset(const PrepareOptions& opt, std::ostream* progress) {
  LLM_CHECK(!opt.inputs.empty(), "prepare: no input files");
  LLM_CHECK(!opt.out_dir.empty(), "prepare: no output directory");
  LLM_CHECK(opt.val_fraction >= 0 && opt.val_fraction < 1, "prepare: --val-fraction must be in [0, 1), got ",
            opt.val_fraction);
  const auto tok = load_tokenizer(opt.tokenizer);
  const int32_t eot = tok->eot_id();
  LLM_CHECK(eot >= 0, opt.tokenizer, ": the tokenizer has no end-of-text token to separate documents");

  int64_t total_bytes = 0, total_docs = 0;
  for (const std::string& in : opt.inputs) {
    LLM_CHECK(fs::is_regular_file(in), in, ": no such input file");
    total_bytes += static_cast<int64_t>(fs::file_size(in));
    total_docs += count_documents(in);
  }
  const double f = opt.val_fraction;
  const bool split_by_document = std::floor(double(total_docs) * f) >= 1;

  const ShardHeader header{tok->identity(), tok->vocab_size(), eot};
  ShardWriter train(opt.out_dir, "train", header, opt.shard_tokens);
  ShardWriter val(opt.out_dir, "val", header, opt.shard_tokens);
  // A run that fails part-way (a bad JSONL line, a full disk) after replacing shards of an earlier run
  // in out_dir leaves that run's meta.json describing shards it no longer matches: remove it then.
  bool finished = false;
  struct RemoveStaleMeta {
    const bool& finished;
    const ShardWriter &train, &val;
    fs::path meta;
    ~RemoveStaleMeta() {
      std::error_code ec;
      if (!finished && (!train.files().empty() || !val.files().empty())) fs::remove(meta, ec);
    }
  } remove_stale_meta{finished, train, val, fs::path(opt.out_dir) / "meta.json"};
  Progress bar(progress, total_bytes);
  const auto start = std::chrono::steady_clock::now();
  int64_t bytes_done = 0, doc_index = 0, tokens = 0;
  std::vector<int32_t> doc;

  auto add = [&](std::string_view text) {
    const std::vector<int32_t> ids = tok->encode(text);
    if (ids.empty()) return;  // an empty document would be a lone separator
    tokens += static_cast<int64_t>(ids.size()) + 1;
    if (f > 0 && split_by_document) {
      doc.assign(1, eot);
      doc.insert(doc.end(), ids.begin(), ids.end());
      const bool to_val = std::floor(double(doc_index + 1) * f) > std::floor(double(doc_index) * f);
      (to_val ? val : train).add_document(doc);
    } else {
      const size_t n_val = f > 0 ? static_cast<size_t>(std::floor(double(ids.size()) * f)) : 0;
      doc.assign(1, eot);
      doc.insert(doc.end(), ids.begin(), ids.end() - static_cast<std::ptrdiff_t>(n_val));
      train.add_document(doc);
      if (n_val > 0) {
        doc.assign(1, eot);
        doc.insert(doc.end(), ids.end() - static_cast<std::ptrdiff_t>(n_val), ids.end());
        val.add_document(doc);
      }
    }
    ++doc_index;
  };

  for (const std::string& in : opt.inputs) {
    if (!is_jsonl(in)) {
      const std::string text = read_file(in);
      add(text);
      bytes_done += static_cast<int64_t>(text.size());
      bar.update(bytes_done, tokens);
      continue;
    }
    std::ifstream file(in);
    LLM_CHECK(file.good(), in, ": cannot open");
    std::string line;
    int64_t lineno = 0;
    while (std::getline(file, line)) {
      ++lineno;
      bytes_done += static_cast<int64_t>(line.size()) + 1;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const std::string where = in + ":" + std::to_string(lineno);
      json j;
      try {
        j = json::parse(line);
      } catch (const json::parse_error& e) {
        throw Error(where + ": invalid JSON: " + e.what());
      }
      LLM_CHECK(j.is_object() && j.contains("text"), where, ": expected a JSON object with a \"text\" field");
      LLM_CHECK(j["text"].is_string(), where, ": field \"text\" is not a string");
      add(j["text"].get_ref<const std::string&>());
      bar.update(bytes_done, tokens);
    }
  }
  if (tokens == 0) {
    std::string names;
    for (const std::string& in : opt.inputs) names += (names.empty() ? "" : ", ") + in;
    throw Error("prepare: the input files hold no text: " + names);
  }
  train.finish();
  val.finish();
  bar.update(total_bytes, tokens, true);

  PrepareResult r;
  r.train_tokens = train.num_tokens();
  r.val_tokens = val.num_tokens();
  r.train_documents = train.num_documents();
  r.val_documents = val.num_documents();
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.tokens_per_second = r.seconds > 0 ? double(tokens) / r.seconds : 0;

  json meta;
  meta["format"] = "llm-data";
  meta["version"] = 1;
  meta["tokenizer"] = opt.tokenizer;
  meta["tokenizer_identity"] = tok->identity();
  meta["vocab_size"] = tok->vocab_size();
  meta["eot_id"] = eot;
  meta["dtype"] = train.uses_uint16() ? "uint16" : "uint32";
  meta["inputs"] = opt.inputs;
  meta["val_fraction"] = f;
  meta["split_by"] = split_by_document ? "document" : "tokens";
  auto split_json = [](const ShardWriter& w) {
    return json{{"shards", w.files()}, {"tokens", w.num_tokens()}, {"documents", w.num_documents()}};
  };
  meta["splits"] = {{"train", split_json(train)}, {"val", split_json(val)}};
  io::write_file_atomic((fs::path(opt.out_dir) / "meta.json").string(), meta.dump(2) + "\n");
  finished = true;

  // Shards a previous, larger run left behind would otherwise look like part of this data set.
  std::vector<std::string> keep = train.files();
  keep.insert(keep.end(), val.files().begin(), val.files().end());
  for (const auto& entry : fs::directory_iterator(opt.out_dir)) {
    const std::string name = entry.path().filename().string();
    const bool ours = (name.rfind("train_", 0) == 0 || name.rfind("val_", 0) == 0) && entry.path().extension() == ".h5";
    if (ours && std::find(keep.begin(), keep.end(), name) == keep.end()) fs::remove(entry.path());
  }
  return r;
}

DatasetMeta read_dataset_meta(const std::string& dir) {
  const fs::path meta_path = fs::path(dir) / "meta.json";
  DatasetMeta m;
  m.path = meta_path.string();
  LLM_CHECK(fs::is_regular_file(meta_path), dir, ": not a prepared data directory (no meta.json)");
  json j;
  try {
    j = json::parse(read_file(m.path));
  } catch (const json::exception& e) {
    throw Error(m.path + ": invalid JSON: " + e.what());
  }
  LLM_CHECK(j.is_object(), m.path, ": expected a JSON object");
  LLM_CHECK(j.contains("format") && j["format"] == "llm-data", m.path, ": format is not \"llm-data\"");
  auto text = [&](const json& o, const char* key, const std::string& where) {
    if (!o.contains(key)) return std::string();
    LLM_CHECK(o[key].is_string(), m.path, ": ", where, key, ": expected a string, got ", json_brief(o[key]));
    return o[key].get<std::string>();
  };
  auto integer = [&](const json& o, const char* key, int64_t fallback, const std::string& where) {
    if (!o.contains(key)) return fallback;
    LLM_CHECK(o[key].is_number_integer(), m.path, ": ", where, key, ": expected an integer, got ", json_brief(o[key]));
    return o[key].get<int64_t>();
  };
  m.tokenizer = text(j, "tokenizer", "");
  m.tokenizer_identity = text(j, "tokenizer_identity", "");
  m.dtype = text(j, "dtype", "");
  m.vocab_size = integer(j, "vocab_size", 0, "");
  m.eot_id = integer(j, "eot_id", -1, "");
  LLM_CHECK(j.contains("splits") && j["splits"].is_object(), m.path, ": splits: expected an object of train/val splits");
  for (const auto& [name, s] : j["splits"].items()) {
    const std::string where = "splits." + name + ".";
    LLM_CHECK(s.is_object() && s.contains("shards") && s["shards"].is_array(), m.path, ": ", where,
              "shards: expected a list of shard file names");
    DatasetSplit split;
    for (const json& f : s["shards"]) {
      LLM_CHECK(f.is_string() && !f.get<std::string>().empty(), m.path, ": ", where,
                "shards: expected shard file names, got ", json_brief(f));
      split.shards.push_back(f.get<std::string>());
    }
    split.tokens = integer(s, "tokens", -1, where);
    m.splits.emplace(name, std::move(split));
  }
  return m;
}

void inspect_dataset(const std::string& dir, std::ostream& out, int64_t sample_tokens) {
  const DatasetMeta meta = read_dataset_meta(dir);
  auto or_unknown = [](const std::string& s) { return s.empty() ? std::string("?") : s; };
  out << "directory:  " << dir << "\n"
      << "tokenizer:  " << or_unknown(meta.tokenizer) << " (" << or_unknown(meta.tokenizer_identity) << ")\n"
      << "vocab size: " << meta.vocab_size << ", eot id " << meta.eot_id << ", tokens stored as "
      << or_unknown(meta.dtype) << "\n";
  std::unique_ptr<TokenShard> first;
  for (const char* split : {"train", "val"}) {
    const auto it = meta.splits.find(split);
    LLM_CHECK(it != meta.splits.end(), meta.path, ": no split \"", split, "\"");
    const DatasetSplit& s = it->second;
    int64_t tokens = 0, docs = 0;
    for (const std::string& name : s.shards) {
      auto shard = TokenShard::open((fs::path(dir) / name).string());
      tokens += shard->size();
      docs += static_cast<int64_t>(shard->info().doc_offsets.size());
      if (!first) first = std::move(shard);
    }
    LLM_CHECK(tokens == s.tokens, meta.path, ": split ", split, " lists ", s.tokens, " tokens but its shards hold ", tokens);
    out << split << ": " << s.shards.size() << " shard(s), " << tokens << " tokens, " << docs << " documents\n";
  }
  if (!first || sample_tokens <= 0) return;
  std::vector<int32_t> ids(static_cast<size_t>(std::min(sample_tokens, first->size())));
  first->read(0, static_cast<int64_t>(ids.size()), ids.data());
  out << "sample (first " << ids.size() << " tokens of " << fs::path(first->info().path).filename().string()
      << "):\n  ids:  " << format_ids(ids) << "\n";
  try {
    const auto tok = load_tokenizer(meta.tokenizer);
    if (tok->identity() != meta.tokenizer_identity) {
      out << "  (tokenizer at " << meta.tokenizer << " has changed; not decoding)\n";
      return;
    }
    std::string text;
    for (int32_t id : ids) text += tok->token_text(id);
    out << "  text: " << text << "\n";
  } catch (const Error& e) {
    out << "  (cannot decode: " << e.what() << ")\n";
  }
}

std::string format_ids(const std::vector<int32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) s += ' ';
    s += std::to_string(ids[i]);
  }
  return s;
}

std::vector<int32_t> parse_ids(std::string_view text, const std::string& origin) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
    if (i == text.size()) break;
    size_t j = i;
    while (j < text.size() && !std::isspace(static_cast<unsigned char>(text[j]))) ++j;
    const std::string word(text.substr(i, j - i));
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(word, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    LLM_CHECK(used == word.size() && v >= 0 && v <= INT32_MAX, origin, ": '", word,
              "' is not a token id (expected non-negative integers separated by spaces)");
    ids.push_back(static_cast<int32_t>(v));
    i = j;
  }
  return ids;
}

}  // namespace llm::data
