#include "data/loader.h"

#include <glob.h>

#include <algorithm>
#include <filesystem>
#include "data/prepare.h"
#include "data/tokenizer.h"
#include "engine/core/error.h"

namespace llm::data {
namespace fs = std::filesystem;

LoaderOptions::Mode parse_loader_mode(const std::string& name) {
  if (name == "sequential") return LoaderOptions::Mode::Sequential;
  if (name == "random") return LoaderOptions::Mode::Random;
  throw Error("data loader: mode must be \"sequential\" or \"random\", got \"" + name + "\"");
}

namespace {

std::vector<std::string> resolve_files(const std::string& source, const std::string& split) {
  if (fs::is_directory(source)) {
    LLM_CHECK(fs::exists(fs::path(source) / "meta.json"), source, ": not a prepared data directory (no meta.json); pass a glob such as '",
              source, "/*.bin' for llm.c shards");
    const DatasetMeta meta = read_dataset_meta(source);
    const auto it = meta.splits.find(split);
    LLM_CHECK(it != meta.splits.end(), meta.path, ": no split \"", split, "\"");
    std::vector<std::string> files;
    for (const std::string& s : it->second.shards) files.push_back((fs::path(source) / s).string());
    LLM_CHECK(!files.empty(), meta.path, ": split \"", split, "\" has no shards (no tokens were written to it)");
    return files;
  }
  glob_t g{};
  const int rc = ::glob(source.c_str(), 0, nullptr, &g);
  std::vector<std::string> files;
  if (rc == 0) {
    for (size_t i = 0; i < g.gl_pathc; ++i) files.emplace_back(g.gl_pathv[i]);
  }
  globfree(&g);
  LLM_CHECK(!files.empty(), source, ": no shard files match");
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

DataLoader::DataLoader(const std::string& source, const std::string& split, LoaderOptions options)
    : opt_(options), files_(resolve_files(source, split)) {
  LLM_CHECK(opt_.B > 0 && opt_.T > 0, "data loader: B and T must be positive, got B=", opt_.B, " T=", opt_.T);
  LLM_CHECK(opt_.world_size > 0 && opt_.rank >= 0 && opt_.rank < opt_.world_size, "data loader: rank ", opt_.rank,
            " is outside world_size ", opt_.world_size);
  const int64_t global = opt_.world_size * opt_.B * opt_.T;
  int64_t windows = 0;
  for (const std::string& f : files_) {
    shards_.push_back(TokenShard::open(f));
    const ShardInfo& info = shards_.back()->info();
    if (identity_.empty()) identity_ = info.tokenizer_identity;
    LLM_CHECK(info.tokenizer_identity.empty() || info.tokenizer_identity == identity_, f,
              ": written with tokenizer '", info.tokenizer_identity, "' but ", files_.front(), " with '", identity_,
              "'");
    if (opt_.mode == LoaderOptions::Mode::Sequential) {
      LLM_CHECK(info.num_tokens >= global + 1, f, ": holds ", info.num_tokens, " tokens, fewer than one global batch ",
                "needs (world_size*B*T + 1 = ", global + 1, ")");
    }
    windows += std::max<int64_t>(0, info.num_tokens - opt_.T);
    window_prefix_.push_back(windows);
    total_tokens_ += info.num_tokens;
  }
  LLM_CHECK(windows > 0, source, ": no shard holds T + 1 = ", opt_.T + 1, " tokens");
  reset();
}

void DataLoader::reset() {
  state_ = LoaderState{};
  gen_.manual_seed(opt_.seed);
  state_.rng = gen_.state();
}

void DataLoader::read_tokens(int64_t shard, int64_t offset, int64_t count, int32_t* out) const {
  shards_[static_cast<size_t>(shard)]->read(offset, count, out);
  if (opt_.vocab_size <= 0) return;
  for (int64_t i = 0; i < count; ++i)
    LLM_CHECK(out[i] >= 0 && out[i] < opt_.vocab_size, files_[static_cast<size_t>(shard)], ": token ", out[i],
              " at position ", offset + i, " is outside the model's vocabulary [0, ", opt_.vocab_size, ")");
}

void DataLoader::next(std::vector<int32_t>& inputs, std::vector<int32_t>& targets) {
  const int64_t B = opt_.B, T = opt_.T;
  inputs.resize(static_cast<size_t>(B * T));
  targets.resize(static_cast<size_t>(B * T));
  if (opt_.mode == LoaderOptions::Mode::Sequential) {
    buf_.resize(static_cast<size_t>(B * T + 1));
    read_tokens(state_.shard, state_.position + opt_.rank * B * T, B * T + 1, buf_.data());
    std::copy(buf_.begin(), buf_.end() - 1, inputs.begin());
    std::copy(buf_.begin() + 1, buf_.end(), targets.begin());
    const int64_t global = opt_.world_size * B * T;
    state_.position += global;
    if (state_.position + global + 1 > shards_[static_cast<size_t>(state_.shard)]->size()) {
      state_.shard = (state_.shard + 1) % static_cast<int64_t>(shards_.size());
      state_.position = 0;
    }
  } else {
    buf_.resize(static_cast<size_t>(T + 1));
    const uint64_t total = static_cast<uint64_t>(window_prefix_.back());
    const int64_t first = static_cast<int64_t>(opt_.rank) * B;
    for (int64_t w = 0; w < opt_.world_size * B; ++w) {
      // Every rank draws the whole global batch so the stream does not depend on world_size.
      const int64_t u = static_cast<int64_t>(gen_.next_u64() % total);
      if (w < first || w >= first + B) continue;
      const auto it = std::upper_bound(window_prefix_.begin(), window_prefix_.end(), u);
      const int64_t shard = it - window_prefix_.begin();
      const int64_t offset = u - (shard > 0 ? window_prefix_[static_cast<size_t>(shard - 1)] : 0);
      read_tokens(shard, offset, T + 1, buf_.data());
      const int64_t row = w - first;
      std::copy(buf_.begin(), buf_.end() - 1, inputs.begin() + row * T);
      std::copy(buf_.begin() + 1, buf_.end(), targets.begin() + row * T);
    }
    state_.rng = gen_.state();
  }
  ++state_.batches;
}

Batch DataLoader::next() {
  std::vector<int32_t> in, tg;
  next(in, tg);
  return Batch{Tensor::from_vector(in, Shape{opt_.B, opt_.T}), Tensor::from_vector(tg, Shape{opt_.B, opt_.T})};
}

LoaderState DataLoader::state() const { return state_; }

void DataLoader::set_state(const LoaderState& s) {
  LLM_CHECK(s.shard >= 0 && s.shard < static_cast<int64_t>(shards_.size()), "data loader: saved shard index ",
            s.shard, " is outside the ", shards_.size(), " shards of this data set");
  LLM_CHECK(s.position >= 0 && s.position <= shards_[static_cast<size_t>(s.shard)]->size(),
            "data loader: saved position ", s.position, " is outside shard ", files_[static_cast<size_t>(s.shard)]);
  if (!s.rng.empty()) gen_.set_state(s.rng);
  state_ = s;
  state_.rng = gen_.state();
}

}  // namespace llm::data
