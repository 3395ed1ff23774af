#include "engine/io/lora_adapter.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "engine/core/error.h"
#include "engine/io/json_brief.h"
#include "engine/io/hdf5_file.h"
#include "engine/io/safetensors.h"

namespace llm::io {

namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

const char* kConfigFile = "adapter_config.json";
const char* kWeightsFile = "adapter_model.safetensors";

json read_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  LLM_CHECK(in.good(), path, ": cannot read (a LoRA adapter directory holds ", kConfigFile, " and ", kWeightsFile, ")");
  std::ostringstream ss;
  ss << in.rdbuf();
  json j;
  try {
    j = json::parse(ss.str());
  } catch (const json::parse_error& e) {
    throw Error(path + ": not valid JSON: " + e.what());
  }
  LLM_CHECK(j.is_object(), path, ": expected a JSON object");
  return j;
}

// A key that is absent or null, or holds false, an empty list/object or the given default string.
bool unset(const json& j, const char* key, const char* default_string = nullptr) {
  if (!j.contains(key)) return true;
  const json& v = j.at(key);
  return v.is_null() || (v.is_boolean() && !v.get<bool>()) || ((v.is_array() || v.is_object()) && v.empty()) ||
         (default_string && v.is_string() && v.get<std::string>() == default_string);
}

// The module path of an adapter parameter name ("x.q_proj.lora_A.weight" or ".lora_B.weight" → "x.q_proj").
std::string module_of(const std::string& param) { return param.substr(0, param.size() - std::string(".lora_X.weight").size()); }
}  // namespace

nn::LoraConfig read_lora_config(const std::string& dir, std::string* base_model) {
  const std::string path = (fs::path(dir) / kConfigFile).string();
  const json j = read_json(path);
  auto key_error = [&](const std::string& key, const std::string& what) { return Error(path + ": key '" + key + "': " + what); };
  auto number = [&](const char* key, double fallback) -> double {
    if (!j.contains(key)) return fallback;
    if (!j.at(key).is_number()) throw key_error(key, "expected a number, got " + json_brief(j.at(key)));
    return j.at(key).get<double>();
  };

  if (!j.contains("peft_type") || j.at("peft_type") != "LORA")
    throw key_error("peft_type", "expected \"LORA\", got " + (j.contains("peft_type") ? json_brief(j.at("peft_type")) : "nothing"));
  if (!j.contains("r") || !j.at("r").is_number_integer() || j.at("r").get<int64_t>() <= 0)
    throw key_error("r", "expected a positive integer, got " + (j.contains("r") ? json_brief(j.at("r")) : "nothing"));
  nn::LoraConfig c;
  c.rank = j.at("r").get<int64_t>();
  c.alpha = static_cast<float>(number("lora_alpha", 8.0));  // PEFT's default
  c.dropout = static_cast<float>(number("lora_dropout", 0.0));
  if (j.contains("use_rslora") && !j.at("use_rslora").is_null()) {
    if (!j.at("use_rslora").is_boolean()) throw key_error("use_rslora", "expected true or false");
    c.rslora = j.at("use_rslora").get<bool>();
  }

  const json targets = j.contains("target_modules") ? j.at("target_modules") : json();
  if (targets.is_string()) {
    if (targets.get<std::string>() != "all-linear")
      throw key_error("target_modules", "a regular expression (" + json_brief(targets) + ") is not supported; give a list of module names or \"all-linear\"");
    c.targets = {"all-linear"};
  } else if (targets.is_array() && !targets.empty()) {
    for (const json& t : targets) {
      if (!t.is_string()) throw key_error("target_modules", "expected module names (strings), got " + json_brief(t));
      c.targets.push_back(t.get<std::string>());
    }
  } else {
    throw key_error("target_modules", "expected a list of module names or \"all-linear\", got " + json_brief(targets));
  }

  // PEFT settings that change what the adapter computes; loading them silently would be wrong.
  if (!unset(j, "bias", "none")) throw key_error("bias", json_brief(j.at("bias")) + " is not supported (only \"none\")");
  for (const char* key : {"use_dora", "rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform"})
    if (!unset(j, key)) throw key_error(key, json_brief(j.at(key)) + " is not supported");

  try {
    c.validate();
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
  if (base_model)
    *base_model = j.contains("base_model_name_or_path") && j.at("base_model_name_or_path").is_string()
                      ? j.at("base_model_name_or_path").get<std::string>()
                      : "";
  return c;
}

void save_lora_adapter(const std::string& dir, const nn::Module& model, const nn::LoraConfig& config,
                       const std::string& base_model_name_or_path) {
  const auto params = nn::lora_parameters(model);
  LLM_CHECK(!params.empty(), dir, ": save_lora_adapter: the model has no LoRA adapters (call nn::apply_lora first)");
  std::vector<std::string> targets = config.targets;
  if (targets == std::vector<std::string>{"all-linear"}) {
    // As PEFT: the saved config lists the module names "all-linear" matched.
    std::set<std::string> names;
    for (const auto& [name, t] : params) {
      const std::string module = module_of(name);
      names.insert(module.substr(module.rfind('.') + 1));
    }
    targets.assign(names.begin(), names.end());
  }
  json j = {{"peft_type", "LORA"},
            {"task_type", "CAUSAL_LM"},
            {"base_model_name_or_path", base_model_name_or_path},
            {"r", config.rank},
            {"lora_alpha", config.alpha},
            {"lora_dropout", config.dropout},
            {"target_modules", targets},
            {"bias", "none"},
            {"use_rslora", config.rslora},
            {"use_dora", false},
            {"modules_to_save", nullptr},
            {"inference_mode", true}};

  fs::create_directories(dir);
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const auto& [name, t] : params) tensors.emplace_back(kPeftPrefix + name, t);
  write_safetensors((fs::path(dir) / kWeightsFile).string(), tensors);
  write_file_atomic((fs::path(dir) / kConfigFile).string(), j.dump(2) + "\n");
}

LoraAdapterInfo load_lora_adapter(const std::string& dir, nn::Module& model, uint64_t seed) {
  LoraAdapterInfo info;
  info.config = read_lora_config(dir, &info.base_model);
  const nn::LoraConfig& config = info.config;
  const std::string config_path = (fs::path(dir) / kConfigFile).string();
  const std::string weights_path = (fs::path(dir) / kWeightsFile).string();
  LLM_CHECK(fs::exists(weights_path), weights_path, ": no such file (PEFT's adapter_model.bin is not read; save as safetensors)");
  const SafetensorsFile file(weights_path);

  std::vector<std::pair<Tensor, bool>> trainable;  // to put the model back as it was on an error
  for (auto& [name, p] : model.named_parameters()) trainable.emplace_back(p, p.requires_grad());
  std::vector<std::string>& adapted = info.modules;
  try {
    adapted = nn::apply_lora(model, config, seed);
  } catch (const Error& e) {
    throw Error(config_path + ": " + e.what());  // apply_lora changed nothing
  }
  try {
    NoGradGuard no_grad;
    std::set<std::string> used;
    for (auto& [name, param] : nn::lora_parameters(model)) {
      const std::string key = kPeftPrefix + name;
      LLM_CHECK(file.contains(key), weights_path, ": missing tensor '", key, "' (", config_path, " targets this module)");
      const Tensor t = file.tensor(key);
      LLM_CHECK(t.shape() == param.shape(), weights_path, ": tensor '", key, "' has shape ", t.shape().str(),
                ", but the model expects ", param.shape().str(), " (r = ", config.rank, " in ", config_path, ")");
      param.copy_(t);
      used.insert(key);
    }
    for (const std::string& key : file.names())
      LLM_CHECK(used.count(key), weights_path, ": unexpected tensor '", key, "' (not an adapter of a module that ",
                config_path, " targets in this model)");
  } catch (...) {
    const std::set<std::string> added(adapted.begin(), adapted.end());
    for (auto& [path, linear] : nn::lora_layers(model))
      if (added.count(path)) linear->lora = nn::LoraAdapter();
    for (auto& [p, on] : trainable) p.set_requires_grad(on);
    throw;
  }
  return info;
}

}  // namespace llm::io
