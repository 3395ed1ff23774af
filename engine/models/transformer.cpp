#include "engine/models/transformer.h"

#include <cmath>

namespace llm::models {

// ---- config ---------------------------------------------------------------------------------
void ModelConfig::validate() const {
  auto positive = [](int64_t v, const char* name) { LLM_CHECK(v > 0, "model config: ", name, " must be positive, got ", v); };
  positive(vocab_size, "vocab_size");
  positive(max_seq_len, "max_seq_len");
  positive(dim, "dim");
  positive(n_layers, "n_layers");
  positive(n_heads, "n_heads");
  positive(n_kv_heads, "n_kv_heads");
  positive(hidden_dim, "hidden_dim");
  LLM_CHECK(explicit_head_dim > 0 || dim % n_heads == 0, "model config: dim ", dim, " is not a multiple of n_heads ",
            n_heads, " (and no head_dim is given)");
  LLM_CHECK(explicit_head_dim >= 0, "model config: head_dim must be positive, got ", explicit_head_dim);
  LLM_CHECK(arch == Arch::Llama || (explicit_head_dim == 0 && !qk_norm),
            "model config: a head_dim of its own and qk_norm are LLaMA-family settings");
  // At most one of the family's variants (Qwen2's biases, Qwen3's q/k norms, Mistral's window): the
  // combinations are no Hugging Face model type, so config.json could not say them.
  LLM_CHECK(int(attention_bias) + int(qk_norm) + int(sliding_window > 0) <= 1,
            "model config: attention_bias, qk_norm and sliding_window are three model types; at most one applies");
  LLM_CHECK(n_heads % n_kv_heads == 0, "model config: n_heads ", n_heads, " is not a multiple of n_kv_heads ", n_kv_heads);
  LLM_CHECK(arch != Arch::GPT2 || n_kv_heads == n_heads, "model config: GPT-2 has n_kv_heads == n_heads");
  LLM_CHECK(arch != Arch::Llama || head_dim() % 2 == 0, "model config: RoPE needs an even head_dim, got ", head_dim());
  LLM_CHECK(norm_eps > 0, "model config: norm_eps must be positive");
  LLM_CHECK(arch != Arch::Llama || rope_theta > 0, "model config: rope_theta must be positive");
  const RopeScaling& s = rope_scaling;
  if (s.type != RopeScalingType::kNone) {
    LLM_CHECK(arch == Arch::Llama, "model config: rope_scaling needs a RoPE model (LLaMA family)");
    LLM_CHECK(s.factor > 0, "model config: rope_scaling factor must be positive, got ", s.factor);
  }
  if (s.type == RopeScalingType::kLlama3) {
    LLM_CHECK(s.low_freq_factor > 0 && s.high_freq_factor > s.low_freq_factor,
              "model config: rope_scaling needs 0 < low_freq_factor < high_freq_factor, got ", s.low_freq_factor,
              " and ", s.high_freq_factor);
    LLM_CHECK(s.original_max_position > 0, "model config: rope_scaling original_max_position_embeddings must be "
              "positive, got ", s.original_max_position);
  }
  LLM_CHECK(sliding_window >= 0 && (arch == Arch::Llama || sliding_window == 0),
            "model config: sliding_window must be 0 (none) or positive, and only LLaMA-family models have one");
}

std::string ModelConfig::summary() const {
  return std::string(arch_name()) + ": " + std::to_string(n_layers) + " layers, dim " + std::to_string(dim) + ", " +
         std::to_string(n_heads) + "/" + std::to_string(n_kv_heads) + " heads, mlp " + std::to_string(hidden_dim) +
         ", vocab " + std::to_string(vocab_size) + ", context " + std::to_string(max_seq_len) +
         (tie_embeddings ? ", tied embeddings" : "") +
         (rope_scaling.type == RopeScalingType::kLinear ? ", linear RoPE scaling" : "") +
         (rope_scaling.type == RopeScalingType::kLlama3 ? ", llama3 RoPE scaling" : "") +
         (sliding_window > 0 ? ", sliding window " + std::to_string(sliding_window) : "") +
         (explicit_head_dim > 0 ? ", head_dim " + std::to_string(explicit_head_dim) : "") + (qk_norm ? ", qk_norm" : "");
}

int64_t ModelConfig::num_parameters() const {
  const int64_t kv = n_kv_heads * head_dim();
  int64_t per_layer, n;
  if (arch == Arch::GPT2) {
    per_layer = 2 * 2 * dim + (dim * 3 * dim + 3 * dim) + (dim * dim + dim) + (dim * hidden_dim + hidden_dim) +
                (hidden_dim * dim + dim);
    n = vocab_size * dim + max_seq_len * dim + 2 * dim;
  } else {
    const int64_t q = n_heads * head_dim();
    per_layer = 2 * dim + 2 * dim * q + 2 * dim * kv + 3 * dim * hidden_dim + (attention_bias ? q + 2 * kv : 0) +
                (qk_norm ? 2 * head_dim() : 0);
    n = vocab_size * dim + dim;
  }
  return n + n_layers * per_layer + (tie_embeddings ? 0 : vocab_size * dim);
}

double ModelConfig::training_flops_per_token(int64_t seq_len) const {
  int64_t n = num_parameters();
  if (arch == Arch::GPT2) n -= max_seq_len * dim;
  return 6.0 * static_cast<double>(n) + 6.0 * static_cast<double>(n_layers * seq_len * n_heads * head_dim());
}

// ---- initialization -------------------------------------------------------------------------
namespace {
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Positions 0..T-1, as the default for every row, on `device`.
Tensor default_positions(int64_t T, Device device) {
  std::vector<int32_t> p(T);
  for (int64_t t = 0; t < T; ++t) p[t] = static_cast<int32_t>(t);
  return Tensor::from_vector(p, Shape{T}).to(device);
}
}  // namespace

void CausalLM::init_weights(uint64_t seed) {
  NoGradGuard no_grad;
  Generator gen(seed);
  const float std = 0.02f, residual_std = 0.02f / std::sqrt(2.f * config_.n_layers);
  for (auto& [name, p] : named_parameters()) {
    if (p.dim() >= 2) {
      const bool residual = ends_with(name, "attn.c_proj.weight") || ends_with(name, "mlp.c_proj.weight") ||
                            ends_with(name, "o_proj.weight") || ends_with(name, "down_proj.weight");
      p.copy_(Tensor::randn(p.shape(), gen, 0.f, residual ? residual_std : std));
    } else {
      p.fill_(ends_with(name, "norm.weight") || ends_with(name, "ln_1.weight") || ends_with(name, "ln_2.weight") ||
                      ends_with(name, "ln_f.weight")
                  ? 1.0
                  : 0.0);
    }
  }
}

void CausalLM::quantize_q8() {
  nn::Module::quantize_q8();
  if (config_.tie_embeddings)
    head_q8_ = ops::quantize_q8(parameter(config_.arch == Arch::GPT2 ? "transformer.wte.weight" : "model.embed_tokens.weight"));
}

// ---- KV cache ---------------------------------------------------------------------------------
KVCache::KVCache(const ModelConfig& c, int64_t batch_, int64_t capacity_, Device device, DType dtype)
    : length(static_cast<size_t>(batch_), 0), batch(batch_), capacity(capacity_) {
  LLM_CHECK(batch_ > 0 && capacity_ > 0, "KVCache: batch and capacity must be positive");
  for (int64_t l = 0; l < c.n_layers; ++l) {
    k.push_back(Tensor::zeros(Shape{batch_, capacity_, c.n_kv_heads, c.head_dim()}, dtype, device));
    v.push_back(Tensor::zeros(Shape{batch_, capacity_, c.n_kv_heads, c.head_dim()}, dtype, device));
  }
}

Device CausalLM::device() const { return parameters().front().device(); }

KVCache CausalLM::make_cache(int64_t batch, int64_t capacity) const {
  const bool bf16 = activation_dtype_ == DType::BF16 || parameters().front().dtype() == DType::BF16;
  return KVCache(config_, batch, capacity, device(), bf16 ? DType::BF16 : DType::F32);
}

Tensor CausalLM::forward_cached(const Tensor& ids, const std::vector<int32_t>& n_new, KVCache& cache) {
  LLM_CHECK(!grad_enabled(), "forward_cached: inference only; run it under NoGradGuard");
  LLM_CHECK(ids.dim() == 2 && ids.size(0) == cache.batch && static_cast<int64_t>(n_new.size()) == cache.batch,
            "forward_cached: ids ", ids.str(), " and ", n_new.size(), " lengths do not match a cache of batch ", cache.batch);
  const int64_t B = ids.size(0), T = ids.size(1);
  std::vector<int32_t> pos(static_cast<size_t>(B * T)), last(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    LLM_CHECK(n_new[b] >= 0 && n_new[b] <= T, "forward_cached: row ", b, " has ", n_new[b], " new tokens of ", T);
    LLM_CHECK(cache.length[b] + n_new[b] <= cache.capacity, "forward_cached: row ", b, " needs ",
              cache.length[b] + n_new[b], " cache slots, the cache holds ", cache.capacity);
    LLM_CHECK(cache.length[b] + n_new[b] <= config_.max_seq_len, "forward_cached: row ", b, " reaches position ",
              cache.length[b] + n_new[b], ", past the model's context of ", config_.max_seq_len);
    // Padding positions are clamped into range; their outputs are never used.
    for (int64_t t = 0; t < T; ++t)
      pos[b * T + t] = static_cast<int32_t>(std::min<int64_t>(cache.length[b] + t, config_.max_seq_len - 1));
    last[b] = static_cast<int32_t>(b * T + std::max<int32_t>(n_new[b], 1) - 1);
  }
  // Everything the blocks read goes to the device once per call (a few small uploads).
  const Device dev = device();
  const Tensor h = hidden_cached(ids.to(dev), Tensor::from_vector(pos, Shape{B, T}).to(dev),
                                 Tensor::from_vector(cache.length, Shape{B}).to(dev),
                                 Tensor::from_vector(n_new, Shape{B}).to(dev), cache);
  for (int64_t b = 0; b < B; ++b) cache.length[b] += n_new[b];
  // Only each row's last new token needs logits: gather those rows before the (large) output head.
  const int64_t C = h.size(2);
  if (T == 1) return head(h.view(Shape{B, C}));
  return head(ops::embedding(Tensor::from_vector(last, Shape{B}).to(dev), h.view(Shape{B * T, C})));
}

namespace {
// Writes the new keys and values [B, T, Hkv, hd] of each row into its cache slots after the past ones.
void append_to_cache(const Tensor& k, const Tensor& v, const Tensor& past, const Tensor& n_new, KVCache& cache,
                     size_t layer) {
  ops::kv_cache_write(k, past, n_new, cache.k[layer]);
  ops::kv_cache_write(v, past, n_new, cache.v[layer]);
}
}  // namespace

// ---- GPT-2 ----------------------------------------------------------------------------------
namespace {
class GPT2Block : public nn::Module {
 public:
  explicit GPT2Block(const ModelConfig& c)
      : ln_1(c.dim, c.norm_eps), c_attn(c.dim, 3 * c.dim, true), attn_proj(c.dim, c.dim, true),
        ln_2(c.dim, c.norm_eps), c_fc(c.dim, c.hidden_dim, true), mlp_proj(c.hidden_dim, c.dim, true),
        heads_(c.n_heads) {
    register_module("ln_1", &ln_1);
    register_module("attn.c_attn", &c_attn);
    register_module("attn.c_proj", &attn_proj);
    register_module("ln_2", &ln_2);
    register_module("mlp.c_fc", &c_fc);
    register_module("mlp.c_proj", &mlp_proj);
  }

  Tensor forward(const Tensor& x, const Tensor& doc) const {
    const int64_t B = x.size(0), T = x.size(1), C = x.size(2);
    const Tensor y = ops::attention_qkv(c_attn.forward(ln_1.forward(x)), heads_, doc);
    const Tensor h = attn_proj.forward_residual(y.view(Shape{B, T, C}), x);
    return mlp_proj.forward_residual(c_fc.forward_gelu(ln_2.forward(h)), h);
  }

  Tensor forward_cached(const Tensor& x, const Tensor& past, const Tensor& n_new, KVCache& cache, size_t layer) const {
    const int64_t B = x.size(0), T = x.size(1), C = x.size(2), hd = C / heads_;
    const std::vector<Tensor> qkv = ops::split(c_attn.forward(ln_1.forward(x)), -1, {C, C, C});
    const Shape heads{B, T, heads_, hd};
    append_to_cache(qkv[1].view(heads), qkv[2].view(heads), past, n_new, cache, layer);
    const Tensor y = ops::attention_cached(qkv[0].view(heads), cache.k[layer], cache.v[layer], past);
    const Tensor h = attn_proj.forward_residual(y.view(Shape{B, T, C}), x);
    return mlp_proj.forward_residual(c_fc.forward_gelu(ln_2.forward(h)), h);
  }

  nn::LayerNorm ln_1;
  nn::Linear c_attn, attn_proj;
  nn::LayerNorm ln_2;
  nn::Linear c_fc, mlp_proj;

 private:
  int64_t heads_;
};

class GPT2 : public CausalLM {
 public:
  explicit GPT2(const ModelConfig& c) : CausalLM(c), wte(c.vocab_size, c.dim), wpe(c.max_seq_len, c.dim), ln_f(c.dim, c.norm_eps) {
    LLM_CHECK(c.tie_embeddings, "model config: GPT-2 ties its output head to the token embedding");
    register_module("transformer.wte", &wte);
    register_module("transformer.wpe", &wpe);
    for (int64_t i = 0; i < c.n_layers; ++i) {
      blocks.push_back(std::make_unique<GPT2Block>(c));
      register_module("transformer.h." + std::to_string(i), blocks.back().get());
    }
    register_module("transformer.ln_f", &ln_f);
  }

  Tensor forward(const Tensor& ids, const ForwardOptions& options) override {
    LLM_CHECK(ids.dim() == 2, "gpt2: token ids must be [B, T], got ", ids.str());
    const int64_t T = ids.size(1);
    LLM_CHECK(T <= config_.max_seq_len, "gpt2: sequence length ", T, " exceeds the context of ", config_.max_seq_len);
    const Tensor positions = options.positions.defined() ? options.positions : default_positions(T, ids.device());
    Tensor x = activations(wte.forward(ids) + wpe.forward(positions));
    for (const auto& block : blocks) x = block->forward(x, options.doc);
    return head(x);
  }

 protected:
  Tensor hidden_cached(const Tensor& ids, const Tensor& positions, const Tensor& past, const Tensor& n_new,
                       KVCache& cache) override {
    Tensor x = activations(wte.forward(ids) + wpe.forward(positions));
    for (size_t l = 0; l < blocks.size(); ++l) x = blocks[l]->forward_cached(x, past, n_new, cache, l);
    return x;
  }
  Tensor head(const Tensor& hidden) override { return output_head(ln_f.forward(hidden), wte.weight); }

 public:

  nn::Embedding wte, wpe;
  std::vector<std::unique_ptr<GPT2Block>> blocks;
  nn::LayerNorm ln_f;
};

// ---- LLaMA ----------------------------------------------------------------------------------
class LlamaBlock : public nn::Module {
 public:
  explicit LlamaBlock(const ModelConfig& c)
      : input_layernorm(c.dim, c.norm_eps),
        q_proj(c.dim, c.n_heads * c.head_dim(), c.attention_bias),
        k_proj(c.dim, c.n_kv_heads * c.head_dim(), c.attention_bias),
        v_proj(c.dim, c.n_kv_heads * c.head_dim(), c.attention_bias),
        o_proj(c.n_heads * c.head_dim(), c.dim, false),
        post_attention_layernorm(c.dim, c.norm_eps),
        gate_proj(c.dim, c.hidden_dim, false), up_proj(c.dim, c.hidden_dim, false), down_proj(c.hidden_dim, c.dim, false),
        config_(c) {
    register_module("input_layernorm", &input_layernorm);
    register_module("self_attn.q_proj", &q_proj);
    register_module("self_attn.k_proj", &k_proj);
    register_module("self_attn.v_proj", &v_proj);
    register_module("self_attn.o_proj", &o_proj);
    if (c.qk_norm) {
      q_norm = std::make_unique<nn::RMSNorm>(c.head_dim(), c.norm_eps);
      k_norm = std::make_unique<nn::RMSNorm>(c.head_dim(), c.norm_eps);
      register_module("self_attn.q_norm", q_norm.get());
      register_module("self_attn.k_norm", k_norm.get());
    }
    register_module("post_attention_layernorm", &post_attention_layernorm);
    register_module("mlp.gate_proj", &gate_proj);
    register_module("mlp.up_proj", &up_proj);
    register_module("mlp.down_proj", &down_proj);
  }

  Tensor forward(const Tensor& x, const Tensor& positions, const Tensor& doc) const {
    const int64_t B = x.size(0), T = x.size(1), hd = config_.head_dim();
    const Tensor h = input_layernorm.forward(x);
    const Tensor q = rotated(q_proj.forward(h), q_norm.get(), config_.n_heads, positions);
    const Tensor k = rotated(k_proj.forward(h), k_norm.get(), config_.n_kv_heads, positions);
    const Tensor v = v_proj.forward(h).view(Shape{B, T, config_.n_kv_heads, hd});
    const Tensor y = ops::attention(q, k, v, doc, 0.f, config_.sliding_window).view(Shape{B, T, config_.n_heads * hd});
    const Tensor r = o_proj.forward_residual(y, x);
    const Tensor m = post_attention_layernorm.forward(r);
    return down_proj.forward_residual(ops::swiglu(gate_proj.forward(m), up_proj.forward(m)), r);
  }

  Tensor forward_cached(const Tensor& x, const Tensor& positions, const Tensor& past, const Tensor& n_new,
                        KVCache& cache, size_t layer) const {
    const int64_t B = x.size(0), T = x.size(1), hd = config_.head_dim();
    const Tensor h = input_layernorm.forward(x);
    const Tensor q = rotated(q_proj.forward(h), q_norm.get(), config_.n_heads, positions);
    const Tensor k = rotated(k_proj.forward(h), k_norm.get(), config_.n_kv_heads, positions);
    append_to_cache(k, v_proj.forward(h).view(Shape{B, T, config_.n_kv_heads, hd}), past, n_new, cache, layer);
    const Tensor y = ops::attention_cached(q, cache.k[layer], cache.v[layer], past, 0.f, config_.sliding_window);
    const Tensor r = o_proj.forward_residual(y.view(Shape{B, T, config_.n_heads * hd}), x);
    const Tensor m = post_attention_layernorm.forward(r);
    return down_proj.forward_residual(ops::swiglu(gate_proj.forward(m), up_proj.forward(m)), r);
  }

  nn::RMSNorm input_layernorm;
  nn::Linear q_proj, k_proj, v_proj, o_proj;
  std::unique_ptr<nn::RMSNorm> q_norm, k_norm;  // qk_norm only
  nn::RMSNorm post_attention_layernorm;
  nn::Linear gate_proj, up_proj, down_proj;

 private:
  // A projection [B, T, heads·hd] as heads [B, T, heads, hd], normalized per head (qk_norm), then rotated.
  Tensor rotated(const Tensor& projected, const nn::RMSNorm* norm, int64_t heads, const Tensor& positions) const {
    Tensor x = projected.view(Shape{projected.size(0), projected.size(1), heads, config_.head_dim()});
    if (norm) x = norm->forward(x);
    return ops::rope(x, positions, config_.rope());
  }

  ModelConfig config_;
};

class Llama : public CausalLM {
 public:
  explicit Llama(const ModelConfig& c)
      : CausalLM(c), embed_tokens(c.vocab_size, c.dim), norm(c.dim, c.norm_eps) {
    register_module("model.embed_tokens", &embed_tokens);
    for (int64_t i = 0; i < c.n_layers; ++i) {
      blocks.push_back(std::make_unique<LlamaBlock>(c));
      register_module("model.layers." + std::to_string(i), blocks.back().get());
    }
    register_module("model.norm", &norm);
    if (!c.tie_embeddings) {
      lm_head = std::make_unique<nn::Linear>(c.dim, c.vocab_size, false);
      register_module("lm_head", lm_head.get());
    }
  }

  Tensor forward(const Tensor& ids, const ForwardOptions& options) override {
    LLM_CHECK(ids.dim() == 2, "llama: token ids must be [B, T], got ", ids.str());
    const Tensor positions = options.positions.defined() ? options.positions : default_positions(ids.size(1), ids.device());
    Tensor x = activations(embed_tokens.forward(ids));
    for (const auto& block : blocks) x = block->forward(x, positions, options.doc);
    return head(x);
  }

 protected:
  Tensor hidden_cached(const Tensor& ids, const Tensor& positions, const Tensor& past, const Tensor& n_new,
                       KVCache& cache) override {
    Tensor x = activations(embed_tokens.forward(ids));
    for (size_t l = 0; l < blocks.size(); ++l) x = blocks[l]->forward_cached(x, positions, past, n_new, cache, l);
    return x;
  }
  Tensor head(const Tensor& hidden) override {
    return lm_head ? lm_head->forward(norm.forward(hidden)) : output_head(norm.forward(hidden), embed_tokens.weight);
  }

 public:

  nn::Embedding embed_tokens;
  std::vector<std::unique_ptr<LlamaBlock>> blocks;
  nn::RMSNorm norm;
  std::unique_ptr<nn::Linear> lm_head;  // only when untied
};
}  // namespace

std::unique_ptr<CausalLM> make_model_for_loading(const ModelConfig& config) {
  config.validate();
  nn::SkipParameterInit skip;
  if (config.arch == Arch::GPT2) return std::make_unique<GPT2>(config);
  return std::make_unique<Llama>(config);
}

std::unique_ptr<CausalLM> make_model(const ModelConfig& config, uint64_t seed) {
  std::unique_ptr<CausalLM> model = make_model_for_loading(config);
  model->init_weights(seed);
  return model;
}

}  // namespace llm::models
