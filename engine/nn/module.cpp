#include "engine/nn/module.h"

#include <set>

namespace llm::nn {

namespace {
thread_local bool skip_parameter_init = false;
// A weight matrix: zeros, or uninitialized under SkipParameterInit.
Tensor weight_matrix(const Shape& shape) {
  return SkipParameterInit::active() ? Tensor::empty(shape) : Tensor::zeros(shape);
}
}  // namespace

SkipParameterInit::SkipParameterInit() : was_(skip_parameter_init) { skip_parameter_init = true; }
SkipParameterInit::~SkipParameterInit() { skip_parameter_init = was_; }
bool SkipParameterInit::active() { return skip_parameter_init; }

void Module::register_parameter(const std::string& name, Tensor* slot) {
  if (slot->defined()) slot->set_requires_grad(true);
  params_.emplace_back(name, slot);
}

void Module::register_module(const std::string& name, Module* child) { children_.emplace_back(name, child); }

void Module::collect(const std::string& prefix, std::vector<std::pair<std::string, Tensor>>* out) const {
  for (const auto& [name, slot] : params_)
    if (slot->defined()) out->emplace_back(prefix + name, *slot);
  for (const auto& [name, child] : children_) child->collect(prefix + name + ".", out);
}

std::vector<std::pair<std::string, Tensor>> Module::named_parameters() const {
  std::vector<std::pair<std::string, Tensor>> out;
  collect("", &out);
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_parameters()) out.push_back(t);
  return out;
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (const auto& [name, t] : named_parameters()) n += t.numel();
  return n;
}

Tensor Module::parameter(const std::string& name) const {
  for (const auto& [n, t] : named_parameters())
    if (n == name) return t;
  throw Error("no parameter named '" + name + "' in this model");
}

std::vector<std::pair<std::string, Module*>> Module::named_modules() {
  std::vector<std::pair<std::string, Module*>> out;
  for (auto& [name, child] : children_) {
    out.emplace_back(name, child);
    for (auto& [sub, module] : child->named_modules()) out.emplace_back(name + "." + sub, module);
  }
  return out;
}

void Module::collect_slots(const std::string& prefix, std::vector<std::pair<std::string, Tensor*>>* out) {
  for (auto& [name, slot] : params_)
    if (slot->defined()) out->emplace_back(prefix + name, slot);
  for (auto& [name, child] : children_) child->collect_slots(prefix + name + ".", out);
}

// The checks of both load_states; place(slot, tensor) puts each tensor into its parameter's slot.
template <class Map, class Place>
void Module::load_state_with(Map& tensors, bool strict, Place place) {
  NoGradGuard no_grad;
  std::vector<std::pair<std::string, Tensor*>> slots;
  collect_slots("", &slots);
  std::set<std::string> used;
  std::vector<std::string> missing;
  for (auto& [name, slot] : slots) {
    auto it = tensors.find(name);
    if (it == tensors.end()) {
      missing.push_back(name);
      continue;
    }
    LLM_CHECK(it->second.shape() == slot->shape(), "tensor '", name, "' has shape ", it->second.shape().str(),
              ", but the model expects ", slot->shape().str());
    place(*slot, it->second);
    used.insert(name);
  }
  if (!strict) return;
  LLM_CHECK(missing.empty(), "missing tensor '", missing.front(), "'", missing.size() > 1 ? " (and " : "",
            missing.size() > 1 ? std::to_string(missing.size() - 1) + " more)" : "");
  for (const auto& [name, t] : tensors) LLM_CHECK(used.count(name), "unexpected tensor '", name, "' (", t.str(), ")");
}

void Module::load_state(const std::map<std::string, Tensor>& tensors, bool strict) {
  load_state_with(tensors, strict, [](Tensor& slot, const Tensor& t) { slot.copy_(t); });
}

void Module::adopt_state(std::map<std::string, Tensor>&& tensors, bool strict) {
  load_state_with(tensors, strict, [](Tensor& slot, const Tensor& t) {
    if (!t.is_contiguous() || t.dtype() != slot.dtype() || t.device() != slot.device()) {
      slot.copy_(t);
      return;
    }
    Tensor adopted = t.detach();
    adopted.set_requires_grad(slot.requires_grad());
    adopted.set_name(slot.name());
    slot = adopted;
  });
  tensors.clear();
}

void Module::release_quantized_fp32_weights() {
  for (auto& [name, child] : children_) child->release_quantized_fp32_weights();
}

void Module::to(Device device) {
  NoGradGuard no_grad;
  for (auto& [name, slot] : params_) {
    if (!slot->defined() || slot->device() == device) continue;
    const bool requires_grad = slot->requires_grad();
    Tensor moved = slot->detach().to(device);
    moved.set_name(slot->name());
    if (requires_grad) moved.set_requires_grad(true);
    *slot = moved;
  }
  for (auto& [name, child] : children_) child->to(device);
}

void Module::to(DType dtype) {
  NoGradGuard no_grad;
  for (auto& [name, slot] : params_) {
    if (!slot->defined() || !is_floating(slot->dtype()) || slot->dtype() == dtype) continue;
    const bool requires_grad = slot->requires_grad();
    Tensor converted = slot->detach().to(dtype);
    converted.set_name(slot->name());
    if (requires_grad) converted.set_requires_grad(true);
    *slot = converted;
  }
  for (auto& [name, child] : children_) child->to(dtype);
}

void Module::quantize_q8() {
  for (auto& [name, child] : children_) child->quantize_q8();
}

void Module::set_training(bool on) {
  training_ = on;
  for (auto& [name, child] : children_) child->set_training(on);
}

Linear::Linear(int64_t in, int64_t out, bool has_bias) {
  weight = weight_matrix(Shape{out, in});
  register_parameter("weight", &weight);
  if (has_bias) {
    bias = Tensor::zeros(Shape{out});
    register_parameter("bias", &bias);
  }
  register_parameter("lora_A.weight", &lora.A);
  register_parameter("lora_B.weight", &lora.B);
}

Tensor Linear::forward(const Tensor& x) const {
  Tensor y = q8.defined() ? ops::linear_q8(x, q8, bias) : ops::linear(x, weight, bias);
  if (!lora.defined()) return y;
  // Only calls that draw a mask advance the counter, so evaluation in between leaves the masks alone.
  const bool drop = training() && lora.dropout > 0;
  const Tensor in = drop ? ops::dropout(x, lora.dropout, lora.seed + lora.calls++) : x;
  // The scale goes on the narrow [.., r] product, the cheapest place for it.
  const Tensor h = ops::linear(in, lora.A);
  return y + ops::linear(h * lora.scale, lora.B);
}

Tensor Linear::forward_gelu(const Tensor& x) const {
  return q8.defined() || lora.defined() ? ops::gelu(forward(x)) : ops::linear_gelu(x, weight, bias);
}

Tensor Linear::forward_residual(const Tensor& x, const Tensor& residual) const {
  return q8.defined() || lora.defined() ? residual + forward(x) : ops::linear_residual(x, weight, bias, residual);
}

Embedding::Embedding(int64_t vocab, int64_t dim) {
  weight = weight_matrix(Shape{vocab, dim});
  register_parameter("weight", &weight);
}

LayerNorm::LayerNorm(int64_t dim, float eps_) : eps(eps_) {
  weight = Tensor::ones(Shape{dim});
  bias = Tensor::zeros(Shape{dim});
  register_parameter("weight", &weight);
  register_parameter("bias", &bias);
}

RMSNorm::RMSNorm(int64_t dim, float eps_) : eps(eps_) {
  weight = Tensor::ones(Shape{dim});
  register_parameter("weight", &weight);
}

}  // namespace llm::nn
