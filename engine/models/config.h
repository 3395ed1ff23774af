// One model configuration for both families. Fields map one to one onto the keys of a Hugging Face
// config.json of each family (see engine/io for the mapping).
#pragma once
#include <cstdint>
#include <string>

#include "kernels/rope_frequencies.h"

namespace llm::models {

enum class Arch {
  GPT2,   // learned positions, pre-LayerNorm, GELU MLP, biases, tied embeddings
  Llama,  // RMSNorm, RoPE, SwiGLU MLP, grouped-query attention, no biases (Mistral; Qwen2 with attention_bias;
          // Qwen3 with qk_norm)
};

struct ModelConfig {
  Arch arch = Arch::Llama;
  int64_t vocab_size = 0;
  int64_t max_seq_len = 0;  // n_positions / max_position_embeddings
  int64_t dim = 0;          // n_embd / hidden_size
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;   // = n_heads for GPT-2
  int64_t hidden_dim = 0;   // MLP width: 4·dim for GPT-2, intermediate_size for LLaMA
  float norm_eps = 1e-5f;
  float rope_theta = 10000.f;
  RopeScaling rope_scaling;     // HF rope_scaling: none, linear or llama3 (Llama 3.1/3.2's long context)
  bool tie_embeddings = true;
  bool attention_bias = false;  // biases on q/k/v projections (Qwen2)
  int64_t sliding_window = 0;   // Mistral: each token attends to at most this many latest tokens; 0: all
  int64_t explicit_head_dim = 0;  // HF head_dim where it is not dim / n_heads (Qwen3, Mistral-Nemo); 0: dim / n_heads
  bool qk_norm = false;           // RMSNorm over each head of q and of k before RoPE (Qwen3)

  int64_t head_dim() const { return explicit_head_dim > 0 ? explicit_head_dim : n_heads ? dim / n_heads : 0; }
  RopeFrequencies rope() const { return {rope_theta, rope_scaling}; }
  const char* arch_name() const { return arch == Arch::GPT2 ? "gpt2" : "llama"; }
  // Throws llm::Error naming the first inconsistent field.
  void validate() const;
  // A readable one-line summary ("llama: 2 layers, dim 48, 4/2 heads, ...").
  std::string summary() const;
  // Parameters of a model with this configuration.
  int64_t num_parameters() const;
  // Training FLOPs per token for MFU: 6 per weight (forward + backward matmuls; position tables are
  // lookups) plus causal attention's score and value products, 6·L·T·C.
  double training_flops_per_token(int64_t seq_len) const;
};

// MFU's ceiling per GPU (unless a config says otherwise): the H100/H200 SXM datasheet's dense bf16
// tensor-core rate, 989 TFLOP/s (the H200 has the H100's compute with more, faster memory).
constexpr double kGpuPeakBf16Flops = 989e12;

}  // namespace llm::models
