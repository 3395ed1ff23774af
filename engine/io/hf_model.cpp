#include "engine/io/hf_model.h"

#include <filesystem>
#include <functional>
#include <memory>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "engine/core/error.h"
#include "engine/io/hdf5_file.h"
#include "engine/io/hf_config.h"
#include "engine/io/safetensors.h"

namespace llm::io {

namespace fs = std::filesystem;
using json = nlohmann::json;
using models::Arch;
using models::ModelConfig;

namespace {
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  LLM_CHECK(in.good(), path, ": cannot read");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// GPT-2 weights HF keeps as Conv1D [in, out].
bool is_conv1d_weight(const std::string& name) {
  return ends_with(name, ".attn.c_attn.weight") || ends_with(name, ".attn.c_proj.weight") ||
         ends_with(name, ".mlp.c_fc.weight") || ends_with(name, ".mlp.c_proj.weight");
}

Shape reversed(const Shape& s) { return Shape{s[1], s[0]}; }

// Tokenizer files a HF directory may carry (encoder.json + vocab.bpe is GPT-2's original pair).
const char* const kTokenizerFiles[] = {"tokenizer.json",  "tokenizer_config.json", "tokenizer.model",
                                       "encoder.json",    "vocab.bpe",             "special_tokens_map.json",
                                       "vocab.json",      "merges.txt"};

// A stored tensor, not read yet: the (shared) file it is in and its name there.
struct Source {
  std::shared_ptr<const SafetensorsFile> file;
  std::string stored_name;
};
}  // namespace

std::map<std::string, Shape> expected_parameters(const ModelConfig& c) {
  std::map<std::string, Shape> p;
  const int64_t D = c.dim, H = c.hidden_dim;
  if (c.arch == Arch::GPT2) {
    p["transformer.wte.weight"] = Shape{c.vocab_size, D};
    p["transformer.wpe.weight"] = Shape{c.max_seq_len, D};
    for (int64_t i = 0; i < c.n_layers; ++i) {
      const std::string b = "transformer.h." + std::to_string(i) + ".";
      for (const char* ln : {"ln_1", "ln_2"}) {
        p[b + ln + ".weight"] = Shape{D};
        p[b + ln + ".bias"] = Shape{D};
      }
      p[b + "attn.c_attn.weight"] = Shape{3 * D, D};
      p[b + "attn.c_attn.bias"] = Shape{3 * D};
      p[b + "attn.c_proj.weight"] = Shape{D, D};
      p[b + "attn.c_proj.bias"] = Shape{D};
      p[b + "mlp.c_fc.weight"] = Shape{H, D};
      p[b + "mlp.c_fc.bias"] = Shape{H};
      p[b + "mlp.c_proj.weight"] = Shape{D, H};
      p[b + "mlp.c_proj.bias"] = Shape{D};
    }
    p["transformer.ln_f.weight"] = Shape{D};
    p["transformer.ln_f.bias"] = Shape{D};
    return p;
  }
  const int64_t q = c.n_heads * c.head_dim(), kv = c.n_kv_heads * c.head_dim();
  p["model.embed_tokens.weight"] = Shape{c.vocab_size, D};
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string b = "model.layers." + std::to_string(i) + ".";
    p[b + "input_layernorm.weight"] = Shape{D};
    p[b + "post_attention_layernorm.weight"] = Shape{D};
    p[b + "self_attn.q_proj.weight"] = Shape{q, D};
    p[b + "self_attn.k_proj.weight"] = Shape{kv, D};
    p[b + "self_attn.v_proj.weight"] = Shape{kv, D};
    if (c.attention_bias) {
      p[b + "self_attn.q_proj.bias"] = Shape{q};
      p[b + "self_attn.k_proj.bias"] = Shape{kv};
      p[b + "self_attn.v_proj.bias"] = Shape{kv};
    }
    if (c.qk_norm) {
      p[b + "self_attn.q_norm.weight"] = Shape{c.head_dim()};
      p[b + "self_attn.k_norm.weight"] = Shape{c.head_dim()};
    }
    p[b + "self_attn.o_proj.weight"] = Shape{D, q};
    p[b + "mlp.gate_proj.weight"] = Shape{H, D};
    p[b + "mlp.up_proj.weight"] = Shape{H, D};
    p[b + "mlp.down_proj.weight"] = Shape{D, H};
  }
  p["model.norm.weight"] = Shape{D};
  if (!c.tie_embeddings) p["lm_head.weight"] = Shape{c.vocab_size, D};
  return p;
}

namespace {
// Every layer has tensors of its own, so a config with more layers than the weights have tensors is
// wrong; checking that first keeps a corrupt count (num_hidden_layers: 1000000000) from listing a
// billion expected parameters before any message.
void check_layer_count(const ModelConfig& config, size_t stored, const std::string& what) {
  LLM_CHECK(config.n_layers <= static_cast<int64_t>(stored), what, ": the config's ", config.n_layers,
            " layers cannot fit in the ", stored, " tensors stored");
}
}  // namespace

void check_weights(const ModelConfig& config, const std::map<std::string, Tensor>& weights, const std::string& source) {
  check_layer_count(config, weights.size(), source);
  const std::map<std::string, Shape> expected = expected_parameters(config);
  for (const auto& [name, t] : weights) {
    const auto it = expected.find(name);
    LLM_CHECK(it != expected.end(), source, ": unexpected tensor '", name, "' (not a parameter of this ",
              config.arch_name(), " model)");
    LLM_CHECK(t.shape() == it->second, source, ": tensor '", name, "' has shape ", t.shape().str(), ", expected ",
              it->second.str());
  }
  for (const auto& kv : expected) LLM_CHECK(weights.count(kv.first), source, ": missing tensor '", kv.first, "'");
}

std::string tokenizer_spec_in(const std::string& dir) {
  const fs::path d(dir);
  if (fs::is_regular_file(d / "tokenizer.json") || fs::is_regular_file(d / "tokenizer.model") ||
      (fs::is_regular_file(d / "encoder.json") && fs::is_regular_file(d / "vocab.bpe")))
    return dir;
  return "";
}

struct HfDirectory::Stored {
  std::map<std::string, Source> raw;  // every stored tensor by its stored name
  std::string listing;                // the file that names all tensors, for "missing" messages
};

HfDirectory::HfDirectory(const std::string& dir) : dir_(dir), stored_(std::make_shared<Stored>()) {
  const fs::path d(dir);
  LLM_CHECK(fs::is_directory(d), dir, ": no such directory");
  config_path_ = (d / "config.json").string();
  LLM_CHECK(fs::is_regular_file(config_path_), dir, ": not a Hugging Face model directory (no config.json)");
  const std::string config_text = read_text(config_path_);
  config_ = config_from_hf_json(config_text, config_path_);
  fused_projections_ = json::parse(config_text).value("model_type", "") == "phi3";
  LLM_CHECK(config_.arch != Arch::GPT2 || config_.tie_embeddings, config_path_,
            ": key 'tie_word_embeddings': GPT-2 with an untied lm_head is not supported");

  std::map<std::string, Source>& raw = stored_->raw;
  const std::string single = (d / "model.safetensors").string(), index = (d / "model.safetensors.index.json").string();
  if (fs::is_regular_file(single)) {
    stored_->listing = single;
    const auto file = std::make_shared<const SafetensorsFile>(single);
    for (const std::string& name : file->names()) raw[name] = {file, name};
  } else if (fs::is_regular_file(index)) {
    stored_->listing = index;
    json j;
    try {
      j = json::parse(read_text(index));
    } catch (const json::exception& e) {
      throw Error(index + ": not valid JSON: " + e.what());
    }
    LLM_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(), index,
              ": expected an object with a \"weight_map\" of tensor name → file");
    std::map<std::string, std::vector<std::string>> by_file;
    for (const auto& [name, file] : j["weight_map"].items()) {
      LLM_CHECK(file.is_string(), index, ": weight_map['", name, "'] must be a file name");
      const std::string f = file.get<std::string>();
      LLM_CHECK(f.find('/') == std::string::npos && f != ".." && !f.empty(), index, ": weight_map['", name,
                "']: '", f, "' is not a file name in the directory");
      by_file[f].push_back(name);
    }
    for (const auto& [file_name, names] : by_file)
      LLM_CHECK(fs::is_regular_file(d / file_name), index, ": shard '", file_name, "' (holding '", names.front(),
                "') does not exist");
    for (const auto& [file_name, names] : by_file) {
      const std::string shard = (d / file_name).string();
      const auto file = std::make_shared<const SafetensorsFile>(shard);
      for (const std::string& name : names) {
        LLM_CHECK(file->contains(name), shard, ": missing tensor '", name, "' (the index puts it here)");
        raw[name] = {file, name};
      }
      const std::set<std::string> listed(names.begin(), names.end());
      for (const std::string& name : file->names())
        LLM_CHECK(listed.count(name), shard, ": unexpected tensor '", name, "' (not in ", index, "'s weight_map for this shard)");
    }
  } else {
    throw Error(dir + ": no model.safetensors or model.safetensors.index.json (only safetensors weights are supported)");
  }
  check_layer_count(config_, raw.size(), stored_->listing + " (" + config_path_ + ")");
}

std::string HfDirectory::tokenizer() const { return tokenizer_spec_in(dir_); }

namespace {
// Our parameters a stored tensor holds, in row order: itself, or for Phi-3's fused projections the
// parts it stacks (qkv_proj: q, k, v; gate_up_proj: gate, up).
std::vector<std::string> parts_of(const std::string& name, bool fused) {
  for (const auto& [fused_name, parts] :
       {std::pair<std::string, std::vector<std::string>>{"self_attn.qkv_proj.weight",
                                                         {"self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                                          "self_attn.v_proj.weight"}},
        {"mlp.gate_up_proj.weight", {"mlp.gate_proj.weight", "mlp.up_proj.weight"}}})
    if (fused && ends_with(name, "." + fused_name)) {
      const std::string prefix = name.substr(0, name.size() - fused_name.size());
      std::vector<std::string> out;
      for (const std::string& part : parts) out.push_back(prefix + part);
      return out;
    }
  return {name};
}
}  // namespace

void HfDirectory::for_each_weight(const std::function<void(const std::string&, Tensor)>& visit) const {
  // HF names → ours, dropping buffers and tied heads; GPT-2's Conv1D weights turned to [out, in];
  // Phi-3's fused projections split.
  const ModelConfig& c = config_;
  const std::map<std::string, Shape> expected = expected_parameters(c);
  std::map<std::string, std::string> seen;  // our name → its stored name
  for (const auto& [stored_name, src] : stored_->raw) {
    std::string name = stored_name;
    if (c.arch == Arch::GPT2) {
      if (name == "lm_head.weight" || ends_with(name, ".attn.bias") || ends_with(name, ".attn.masked_bias")) continue;
      if (!starts_with(name, "transformer.")) name = "transformer." + name;
    } else {
      if (ends_with(name, "rotary_emb.inv_freq")) continue;
      if (c.tie_embeddings && name == "lm_head.weight") continue;
    }
    const std::string& file = src.file->path();
    const std::vector<std::string> parts = parts_of(name, fused_projections_);
    int64_t rows = 0;
    for (const std::string& part : parts) {
      const auto it = expected.find(part);
      LLM_CHECK(it != expected.end(), file, ": unexpected tensor '", stored_name, "' (not a parameter of this ",
                config_path_, " model)");
      LLM_CHECK(seen.emplace(part, stored_name).second, file, ": tensor '", stored_name, "' is stored twice (also as '",
                seen[part], "')");
      rows += it->second[0];
    }
    // Shapes are checked from the header, before the data is read and converted.
    const Shape stored_shape(src.file->entry(src.stored_name).shape);
    const Shape& first = expected.at(parts.front());
    const bool conv1d = c.arch == Arch::GPT2 && is_conv1d_weight(name);
    const Shape want = conv1d ? reversed(first) : parts.size() > 1 ? Shape{rows, first[1]} : first;
    LLM_CHECK(stored_shape == want, file, ": tensor '", stored_name, "' has shape ", stored_shape.str(), ", expected ",
              want.str(), conv1d ? " (GPT-2 Conv1D [in, out])" : "");
    Tensor t = src.file->tensor(src.stored_name);
    if (conv1d) t = t.transpose(0, 1).contiguous();
    if (parts.size() == 1) {
      visit(name, t);
      continue;
    }
    int64_t begin = 0;
    for (const std::string& part : parts) {
      const int64_t n = expected.at(part)[0];
      visit(part, t.slice(0, begin, begin + n).contiguous());
      begin += n;
    }
  }
  for (const auto& kv : expected)
    LLM_CHECK(seen.count(kv.first), stored_->listing, ": missing tensor '", kv.first, "'");
}

LoadedModel load_hf_directory(const std::string& dir) {
  const HfDirectory hf(dir);
  LoadedModel out;
  out.config = hf.config();
  hf.for_each_weight([&](const std::string& name, Tensor t) { out.weights.emplace(name, std::move(t)); });
  out.tokenizer = hf.tokenizer();
  return out;
}

namespace {
void copy_file_atomic(const fs::path& from, const fs::path& to) {
  std::error_code ec;
  if (fs::exists(to) && fs::equivalent(from, to, ec)) return;  // saving over the source directory
  write_file_atomic(to.string(), read_text(from.string()));
}

// The tokenizer files to copy from `source` (a directory or one file) as (from, name in the new
// directory): worked out, and checked, before anything is written.
std::vector<std::pair<fs::path, std::string>> tokenizer_files(const std::string& source) {
  std::vector<std::pair<fs::path, std::string>> files;
  if (source.empty() || source == "byte") return files;
  const fs::path src(source);
  if (fs::is_directory(src)) {
    for (const char* name : kTokenizerFiles)
      if (fs::is_regular_file(src / name)) files.emplace_back(src / name, name);
    LLM_CHECK(!files.empty(), source, ": no tokenizer files (tokenizer.json, tokenizer.model, encoder.json + vocab.bpe ...)");
    return files;
  }
  LLM_CHECK(fs::is_regular_file(src), source, ": no such tokenizer file or directory");
  const std::string base = src.filename().string();
  for (const char* name : kTokenizerFiles)
    if (base == name) {
      files.emplace_back(src, name);
      if (base == "encoder.json") {
        const fs::path bpe = src.parent_path() / "vocab.bpe";
        LLM_CHECK(fs::is_regular_file(bpe), bpe.string(), ": missing (encoder.json needs its vocab.bpe)");
        files.emplace_back(bpe, "vocab.bpe");
      }
      return files;
    }
  LLM_CHECK(src.extension() == ".model", source, ": not a tokenizer file this directory can hold");
  files.emplace_back(src, "tokenizer.model");  // a SentencePiece model under its HF name
  return files;
}
}  // namespace

void save_hf_directory(const std::string& dir, const ModelConfig& config,
                       const std::vector<std::pair<std::string, Tensor>>& weights, const std::string& tokenizer_source) {
  config.validate();
  std::map<std::string, Tensor> by_name;
  for (const auto& [name, t] : weights)
    LLM_CHECK(by_name.emplace(name, t).second, dir, ": tensor '", name, "' given twice");
  check_weights(config, by_name, dir);
  std::vector<std::pair<std::string, Tensor>> stored;
  stored.reserve(weights.size());
  for (const auto& [name, t] : weights)
    stored.emplace_back(name, config.arch == Arch::GPT2 && is_conv1d_weight(name) ? t.transpose(0, 1) : t);
  // A bad tokenizer source is found before anything is written, so it leaves no directory without one.
  const std::vector<std::pair<fs::path, std::string>> tokenizer = tokenizer_files(tokenizer_source);
  fs::create_directories(dir);
  const fs::path d(dir);
  write_file_atomic((d / "config.json").string(), config_to_hf_json(config));
  write_safetensors((d / "model.safetensors").string(), stored, StoredType::F32, {{"format", "pt"}});
  for (const auto& [from, name] : tokenizer) copy_file_atomic(from, d / name);
}

}  // namespace llm::io
