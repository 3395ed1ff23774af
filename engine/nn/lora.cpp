#include "engine/nn/lora.h"

#include <algorithm>
#include <cmath>
#include <set>

namespace llm::nn {

namespace {
const char* kAllLinear = "all-linear";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// PEFT's rule: the module path is the target or ends with "." + target.
bool path_matches(const std::string& path, const std::string& target) {
  return path == target || ends_with(path, "." + target);
}

// PEFT's "all-linear" leaves out the output layer.
bool is_output_head(const std::string& path) { return path == "lm_head"; }

// The Linear paths for an error message, layer numbers folded ("model.layers.N.self_attn.q_proj"), so
// the list stays short for deep models.
std::string describe(const std::vector<std::pair<std::string, Linear*>>& linears) {
  std::vector<std::string> seen;
  std::string out;
  for (const auto& [path, linear] : linears) {
    std::string folded;
    for (size_t i = 0; i < path.size();) {
      const size_t end = path.find('.', i);
      const std::string part = path.substr(i, end == std::string::npos ? std::string::npos : end - i);
      const bool number = !part.empty() && part.find_first_not_of("0123456789") == std::string::npos;
      folded += (folded.empty() ? "" : ".") + (number ? std::string("N") : part);
      i = end == std::string::npos ? path.size() : end + 1;
    }
    if (std::find(seen.begin(), seen.end(), folded) != seen.end()) continue;
    seen.push_back(folded);
    out += (out.empty() ? "" : ", ") + folded;
  }
  return out;
}
}  // namespace

float LoraConfig::scale() const {
  return rslora ? alpha / std::sqrt(static_cast<float>(rank)) : alpha / static_cast<float>(rank);
}

void LoraConfig::validate() const {
  LLM_CHECK(rank > 0, "lora: rank must be positive, got ", rank);
  LLM_CHECK(std::isfinite(alpha) && alpha > 0, "lora: alpha must be positive, got ", alpha);
  LLM_CHECK(dropout >= 0 && dropout < 1, "lora: dropout must be in [0, 1), got ", dropout);
  LLM_CHECK(!targets.empty(), "lora: no target modules given (names such as q_proj, v_proj, or all-linear)");
}

std::vector<std::string> apply_lora(Module& model, const LoraConfig& config, uint64_t seed) {
  config.validate();

  std::vector<std::pair<std::string, Linear*>> linears;
  for (auto& [path, module] : model.named_modules())
    if (auto* linear = dynamic_cast<Linear*>(module)) linears.emplace_back(path, linear);
  std::vector<std::pair<std::string, Linear*>> chosen;
  std::set<std::string> matched_targets;
  for (const auto& [path, linear] : linears) {
    bool chosen_here = false;
    for (const auto& t : config.targets) {
      const bool match = t == kAllLinear ? !is_output_head(path) : path_matches(path, t);
      if (match) matched_targets.insert(t);
      chosen_here = chosen_here || match;
    }
    if (chosen_here) chosen.emplace_back(path, linear);
  }
  // Every pattern must name something: a misspelt target would otherwise silently train less.
  for (const auto& t : config.targets) {
    if (matched_targets.count(t)) continue;
    throw Error("lora: target module '" + t + "' matches no Linear layer of the model (its Linear layers: " +
                describe(linears) + ")");
  }
  for (const auto& [path, linear] : chosen)
    LLM_CHECK(!linear->lora.defined(), "lora: '", path, "' already has a LoRA adapter");

  for (auto& [name, p] : model.named_parameters()) p.set_requires_grad(false);
  Generator gen(seed);
  std::vector<std::string> adapted;
  for (auto& [path, linear] : chosen) {
    LoraAdapter& a = linear->lora;
    // kaiming_uniform_(a=sqrt(5)), PEFT's (and nn.Linear's) init: uniform in ±1/sqrt(fan_in).
    const float bound = 1.f / std::sqrt(static_cast<float>(linear->in_features()));
    a.A = Tensor::rand(Shape{config.rank, linear->in_features()}, gen, -bound, bound).set_requires_grad(true);
    a.B = Tensor::zeros(Shape{linear->out_features(), config.rank}).set_requires_grad(true);
    a.scale = config.scale();
    a.dropout = config.dropout;
    a.seed = gen.next_u64();
    a.calls = 0;
    adapted.push_back(path);
  }
  return adapted;
}

std::vector<std::pair<std::string, Linear*>> lora_layers(Module& model) {
  std::vector<std::pair<std::string, Linear*>> out;
  for (auto& [path, module] : model.named_modules())
    if (auto* linear = dynamic_cast<Linear*>(module); linear && linear->lora.defined()) out.emplace_back(path, linear);
  return out;
}

std::vector<std::string> merge_lora(Module& model) {
  NoGradGuard no_grad;
  std::vector<std::string> merged;
  for (auto& [path, linear] : lora_layers(model)) {
    LoraAdapter& a = linear->lora;
    const Tensor delta = ops::matmul(a.B, a.A);  // [out, in]
    float* w = linear->weight.data<float>();
    const float* d = delta.data<float>();
    for (int64_t i = 0, n = linear->weight.numel(); i < n; ++i) w[i] += a.scale * d[i];
    a = LoraAdapter();
    if (linear->q8.defined()) linear->quantize_q8();
    merged.push_back(path);
  }
  return merged;
}

std::vector<std::pair<std::string, Tensor>> trainable_parameters(const Module& model) {
  std::vector<std::pair<std::string, Tensor>> out;
  for (auto& [name, p] : model.named_parameters())
    if (p.requires_grad()) out.emplace_back(name, p);
  return out;
}

bool is_lora_parameter(const std::string& name) {
  return ends_with(name, ".lora_A.weight") || ends_with(name, ".lora_B.weight");
}

std::vector<std::pair<std::string, Tensor>> lora_parameters(const Module& model) {
  std::vector<std::pair<std::string, Tensor>> out;
  for (auto& [name, p] : model.named_parameters())
    if (is_lora_parameter(name)) out.emplace_back(name, p);
  return out;
}

}  // namespace llm::nn
