#include "engine/train/checkpoint.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "engine/io/hdf5_file.h"
#include "engine/io/hf_config.h"

namespace llm::train {

namespace fs = std::filesystem;
using io::H5File;

namespace {
constexpr const char* kFormat = "llm-checkpoint";
constexpr int64_t kVersion = 1;

void write_tensor(H5File& f, const std::string& name, const Tensor& t) {
  const Tensor c = t.detach().to(Device::cpu()).contiguous();  // GPU tensors are saved from host copies
  check_dtype(c, DType::F32, "save_checkpoint", name.c_str());
  f.write<float>(name, c.data<float>(), c.shape().vec());
}

Tensor read_tensor(const H5File& f, const std::string& name) {
  Tensor t = Tensor::empty(Shape(f.shape(name)));
  f.read_raw(name, io::H5Type::F32, t.data<float>(), static_cast<size_t>(t.numel()));
  return t;
}

// HDF5 has no u64 here: the generator words travel as their i64 bit patterns.
std::vector<int64_t> to_i64(const std::vector<uint64_t>& v) {
  std::vector<int64_t> out(v.size());
  std::memcpy(out.data(), v.data(), v.size() * sizeof(uint64_t));
  return out;
}
std::vector<uint64_t> to_u64(const std::vector<int64_t>& v) {
  std::vector<uint64_t> out(v.size());
  std::memcpy(out.data(), v.data(), v.size() * sizeof(int64_t));
  return out;
}
}  // namespace

void save_checkpoint(const std::string& path, const Checkpoint& c) {
  const fs::path parent = fs::path(path).parent_path();
  if (!parent.empty()) fs::create_directories(parent);
  H5File f = H5File::create_atomic(path);
  f.set_attr("/", "format", kFormat);
  f.set_attr("/", "version", kVersion);
  f.set_attr("/", "step", c.step);
  f.set_attr("/", "tokens", c.tokens);
  f.set_attr("/", "model_config", io::config_to_hf_json(c.model_config));
  f.set_attr("/", "train_config", c.train_config_yaml);
  f.set_attr("/", "tokenizer", c.tokenizer);
  for (const auto& [name, t] : c.weights) write_tensor(f, "model/" + name, t);
  if (c.has_optimizer) {
    f.set_attr("/", "optim_step", c.optimizer.step);
    for (const auto& [name, t] : c.optimizer.m) write_tensor(f, "optim/m/" + name, t);
    for (const auto& [name, t] : c.optimizer.v) write_tensor(f, "optim/v/" + name, t);
  }
  if (!c.loader_state.empty()) f.write<int64_t>("state/loader", c.loader_state);
  if (!c.rng_state.empty()) f.write<int64_t>("state/rng", to_i64(c.rng_state));
  f.commit();
}

Checkpoint load_checkpoint(const std::string& path, bool weights_only) {
  LLM_CHECK(fs::is_regular_file(path), path, ": no such checkpoint file");
  LLM_CHECK(io::is_hdf5_file(path), path, ": not an HDF5 file (truncated or not a checkpoint)");
  H5File f(path, H5File::Mode::Read);
  LLM_CHECK(f.has_attr("/", "format") && f.attr_string("/", "format") == kFormat, path, ": not an llm checkpoint");
  const int64_t version = f.attr_int("/", "version");
  LLM_CHECK(version == kVersion, path, ": checkpoint version ", version, " is not supported (expected ", kVersion, ")");
  Checkpoint c;
  c.model_config = io::config_from_hf_json(f.attr_string("/", "model_config"), path + ": model_config");
  c.step = f.attr_int("/", "step");
  c.tokens = f.attr_int("/", "tokens");
  c.train_config_yaml = f.attr_string("/", "train_config");
  c.tokenizer = f.attr_string("/", "tokenizer");
  for (const std::string& name : f.list_datasets("model")) c.weights.emplace_back(name, read_tensor(f, "model/" + name));
  if (weights_only) return c;
  c.has_optimizer = f.exists("optim");
  if (c.has_optimizer) {
    c.optimizer.step = f.attr_int("/", "optim_step");
    for (const std::string& name : f.list_datasets("optim/m")) {
      c.optimizer.m.emplace_back(name, read_tensor(f, "optim/m/" + name));
      c.optimizer.v.emplace_back(name, read_tensor(f, "optim/v/" + name));
    }
  }
  if (f.exists("state/loader")) c.loader_state = f.read<int64_t>("state/loader");
  if (f.exists("state/rng")) c.rng_state = to_u64(f.read<int64_t>("state/rng"));
  return c;
}

std::string checkpoint_path(const std::string& dir, int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "ckpt_%08lld.h5", static_cast<long long>(step));
  return (fs::path(dir) / name).string();
}

std::vector<std::string> list_checkpoints(const std::string& dir) {
  std::vector<std::string> out;
  if (!fs::is_directory(dir)) return out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (n.size() == 16 && n.rfind("ckpt_", 0) == 0 && n.substr(13) == ".h5") out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());  // zero-padded steps sort as numbers
  return out;
}

void prune_checkpoints(const std::string& dir, int64_t keep) {
  const std::vector<std::string> all = list_checkpoints(dir);
  for (size_t i = 0; i + static_cast<size_t>(keep) < all.size(); ++i) fs::remove(all[i]);
}

}  // namespace llm::train
