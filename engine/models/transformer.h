// Decoder-only language models: GPT-2 and the LLaMA family, built from engine/nn modules with Hugging
// Face parameter names, so checkpoints map onto them without special cases.
#pragma once
#include <algorithm>
#include <memory>
#include <vector>

#include "engine/models/config.h"
#include "engine/nn/module.h"

namespace llm::models {

struct ForwardOptions {
  Tensor positions;  // i32 [T] or [B, T]; default 0..T-1
  Tensor doc;        // i32 [B, T] document ids of packed sequences; default: one document per row
};

// Keys and values of every layer for up to `capacity` positions of `batch` sequences, for generation,
// on the model's device (CausalLM::make_cache picks device and dtype).
struct KVCache {
  KVCache(const ModelConfig& config, int64_t batch, int64_t capacity, Device device = Device::cpu(),
          DType dtype = DType::F32);
  std::vector<Tensor> k, v;     // per layer: [batch, capacity, n_kv_heads, head_dim]
  std::vector<int32_t> length;  // tokens cached per sequence
  int64_t batch, capacity;
  void reset() { std::fill(length.begin(), length.end(), 0); }
};

class CausalLM : public nn::Module {
 public:
  explicit CausalLM(const ModelConfig& config) : config_(config) {}
  // ids i32 [B, T] → logits [B, T, vocab] (f32, or bf16 with a bf16 activation dtype), on the
  // device of the ids, which must be the parameters' device.
  virtual Tensor forward(const Tensor& ids, const ForwardOptions& options = {}) = 0;
  // The dtype of the activations forward computes: f32 (default), or bf16 for mixed precision on
  // CUDA (the embeddings are cast once; parameters stay as they are: ops.h has the rule).
  void set_activation_dtype(DType dtype) { activation_dtype_ = dtype; }
  DType activation_dtype() const { return activation_dtype_; }
  // The device of the parameters (where forward runs).
  Device device() const;
  // A KV cache where this model runs: on its device, bf16 when it computes in bf16 (bf16 weights or
  // activations), else f32.
  KVCache make_cache(int64_t batch, int64_t capacity) const;
  // Inference with a KV cache (call under NoGradGuard): row b of ids [B, T] (on any device) holds
  // n_new[b] <= T new tokens (the rest is padding), which are appended to the cache after its cached
  // ones. Returns the logits [B, vocab] of each row's last new token (rows with n_new 0 return
  // unspecified values), on the model's device, f32 or bf16 as forward's.
  Tensor forward_cached(const Tensor& ids, const std::vector<int32_t>& n_new, KVCache& cache);
  // GPT-2 initialization: normal(0, 0.02) for matrices and embeddings, residual output projections
  // scaled by 1/sqrt(2·n_layers), zero biases, unit norm weights. Deterministic from the seed.
  void init_weights(uint64_t seed);
  const ModelConfig& config() const { return config_; }
  // Also quantizes the output head when it is tied to the token embedding.
  void quantize_q8() override;

 protected:
  // The output head: x·Wᵀ with the head weight, or its Q8 copy after quantize_q8().
  Tensor output_head(const Tensor& x, const Tensor& weight) const {
    return head_q8_.defined() ? ops::linear_q8(x, head_q8_) : ops::linear(x, weight);
  }
  ops::Q8Matrix head_q8_;
  // The architecture's part of forward_cached: hidden states [B, T, C] after the last block (before the
  // final norm), given positions [B, T] and the cache, whose layer entries it fills after each row's
  // past[b] cached tokens with its n_new[b] new ones (i32 [B]; all inputs on the model's device).
  virtual Tensor hidden_cached(const Tensor& ids, const Tensor& positions, const Tensor& past, const Tensor& n_new,
                               KVCache& cache) = 0;
  // Final norm and output head of hidden rows [N, C] → logits [N, vocab].
  virtual Tensor head(const Tensor& hidden) = 0;
  // The embedding output in the activation dtype.
  Tensor activations(const Tensor& embedded) const { return ops::cast(embedded, activation_dtype_); }
  ModelConfig config_;
  DType activation_dtype_ = DType::F32;
};

// The model for config.arch, with weights initialized from `seed`.
std::unique_ptr<CausalLM> make_model(const ModelConfig& config, uint64_t seed = 0);
// The same with its weight matrices left uninitialized, for load_state (strict) to fill every
// parameter: loading a pretrained model neither draws random weights nor zeroes memory it replaces.
std::unique_ptr<CausalLM> make_model_for_loading(const ModelConfig& config);

}  // namespace llm::models
