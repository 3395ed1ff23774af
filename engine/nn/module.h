// Modules: named parameters in a tree, as torch.nn. Parameter names are dotted paths
// ("model.layers.0.self_attn.q_proj.weight"), which is how checkpoints and Hugging Face files name them.
#pragma once
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/core/tensor.h"
#include "engine/ops/ops.h"

namespace llm::nn {

// While one is alive (on this thread), new Linear and Embedding weights are left uninitialized
// instead of zeroed, as torch's skip_init: for a model whose every parameter load_state is about to
// fill, so that its memory is not written (and made resident) twice.
class SkipParameterInit {
 public:
  SkipParameterInit();
  ~SkipParameterInit();
  SkipParameterInit(const SkipParameterInit&) = delete;
  SkipParameterInit& operator=(const SkipParameterInit&) = delete;
  static bool active();

 private:
  bool was_;
};

class Module {
 public:
  Module() = default;
  virtual ~Module() = default;
  // Modules register pointers to their members, so they never move or copy.
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // Every parameter below this module, in registration order, with its dotted name.
  std::vector<std::pair<std::string, Tensor>> named_parameters() const;
  std::vector<Tensor> parameters() const;
  int64_t num_parameters() const;
  // The parameter with this dotted name; throws naming it when there is none.
  Tensor parameter(const std::string& name) const;
  // Every module below this one (not itself), parents before children, with its dotted path.
  std::vector<std::pair<std::string, Module*>> named_modules();

  // Copies tensors into the parameters of the same names (shapes must match). strict: every
  // parameter must be given and every given name must exist; errors name the offending tensors.
  void load_state(const std::map<std::string, Tensor>& tensors, bool strict = true);
  // The same, but the parameters become the given tensors where they can serve as they are
  // (contiguous, the parameter's dtype and device) instead of copies of them: loading a model then
  // needs no second copy of its weights (a memory-mapped f32 file's tensors stay mapped; its pages are
  // copy-on-write). Only for a model built to be loaded, before anything (an optimizer) holds its
  // parameters, and with tensors nothing else will use: they are shared, not copied.
  void adopt_state(std::map<std::string, Tensor>&& tensors, bool strict = true);

  // Moves every parameter to `device` (a new leaf there, requires_grad as before; gradients dropped).
  // Modules hold parameters by slot, so every later forward uses the moved ones.
  void to(Device device);
  // Converts every floating-point parameter to `dtype` (bf16 weights for inference on the GPU), the
  // same way: new leaves, requires_grad as before, gradients dropped.
  void to(DType dtype);

  void set_training(bool on);
  bool training() const { return training_; }

  // Inference with int8 weights (Q8_0): every Linear below keeps a quantized copy of its weight and
  // uses it in forward (not differentiable; the fp32 weights stay for training and saving).
  virtual void quantize_q8();
  // For a model that only generates from here on: frees the fp32 weights that Q8 copies replace (a
  // quarter of the memory remains). Training, saving and LoRA need them: not after this.
  virtual void release_quantized_fp32_weights();

 protected:
  // A slot may stay undefined (an optional parameter, e.g. a LoRA adapter): it is listed once defined.
  void register_parameter(const std::string& name, Tensor* slot);
  void register_module(const std::string& name, Module* child);

 private:
  void collect(const std::string& prefix, std::vector<std::pair<std::string, Tensor>>* out) const;
  void collect_slots(const std::string& prefix, std::vector<std::pair<std::string, Tensor*>>* out);
  template <class Map, class Place>
  void load_state_with(Map& tensors, bool strict, Place place);
  std::vector<std::pair<std::string, Tensor*>> params_;
  std::vector<std::pair<std::string, Module*>> children_;
  bool training_ = true;
};

// A low-rank adapter on a Linear (LoRA, Hu et al. 2021), added by nn::apply_lora (engine/nn/lora.h):
// the layer computes x·Wᵀ + b + scale·(dropout(x)·Aᵀ)·Bᵀ.
struct LoraAdapter {
  Tensor A, B;          // [r, in] and [out, r]: parameters "lora_A.weight" and "lora_B.weight" (PEFT's names)
  float scale = 0.f;    // alpha / r (alpha / sqrt(r) with rsLoRA)
  float dropout = 0.f;  // on the adapter's input, in training mode only
  uint64_t seed = 0;    // dropout masks: a new one per training forward call, from seed and the count
  mutable uint64_t calls = 0;
  bool defined() const { return A.defined(); }
};

// y = x·Wᵀ + b with W [out, in] (nn.Linear), plus an optional LoRA adapter.
class Linear : public Module {
 public:
  Linear(int64_t in, int64_t out, bool bias);
  Tensor forward(const Tensor& x) const;
  // gelu(forward(x)) and residual + forward(x): one fused op (ops::linear_gelu / linear_residual)
  // where the layer is plain, i.e. has neither a Q8 copy nor an adapter.
  Tensor forward_gelu(const Tensor& x) const;
  Tensor forward_residual(const Tensor& x, const Tensor& residual) const;
  // Layers whose input width is not a multiple of the 32-value block stay in fp32. An adapter keeps
  // working on top of the quantized weight (its own matrices stay fp32).
  void quantize_q8() override {
    if (weight.defined() && weight.size(1) % 32 == 0) q8 = ops::quantize_q8(weight);  // undefined: done and freed
  }
  void release_quantized_fp32_weights() override {
    if (q8.defined()) weight = Tensor();
  }
  int64_t in_features() const { return weight.size(1); }
  int64_t out_features() const { return weight.size(0); }
  Tensor weight, bias;
  ops::Q8Matrix q8;  // set by quantize_q8()
  LoraAdapter lora;  // set by nn::apply_lora, folded into weight by nn::merge_lora
};

class Embedding : public Module {
 public:
  Embedding(int64_t vocab, int64_t dim);
  Tensor forward(const Tensor& ids) const { return ops::embedding(ids, weight); }
  Tensor weight;
};

class LayerNorm : public Module {
 public:
  LayerNorm(int64_t dim, float eps);
  Tensor forward(const Tensor& x) const { return ops::layer_norm(x, weight, bias, eps); }
  Tensor weight, bias;
  float eps;
};

class RMSNorm : public Module {
 public:
  RMSNorm(int64_t dim, float eps);
  Tensor forward(const Tensor& x) const { return ops::rms_norm(x, weight, eps); }
  Tensor weight;
  float eps;
};

}  // namespace llm::nn
