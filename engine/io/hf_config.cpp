#include "engine/io/hf_config.h"

#include <nlohmann/json.hpp>

#include "engine/core/error.h"
#include "engine/io/json_brief.h"

namespace llm::io {

using json = nlohmann::json;
using models::Arch;
using models::ModelConfig;

namespace {
// Typed access to config keys with errors that name the file and key.
class Keys {
 public:
  Keys(const json& j, const std::string& source) : j_(j), source_(source) {}

  bool has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }

  int64_t integer(const char* key) const {
    LLM_CHECK(has(key), source_, ": missing key '", key, "'");
    return integer_or(key, 0);
  }
  int64_t integer_or(const char* key, int64_t fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_[key];
    LLM_CHECK(v.is_number_integer(), source_, ": key '", key, "': expected an integer, got ", json_brief(v));
    return v.get<int64_t>();
  }
  double number_or(const char* key, double fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_[key];
    LLM_CHECK(v.is_number(), source_, ": key '", key, "': expected a number, got ", json_brief(v));
    return v.get<double>();
  }
  bool boolean_or(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_[key];
    LLM_CHECK(v.is_boolean(), source_, ": key '", key, "': expected true or false, got ", json_brief(v));
    return v.get<bool>();
  }
  std::string string(const char* key) const {
    LLM_CHECK(has(key) && j_[key].is_string(), source_, ": key '", key, "': expected a string");
    return j_[key].get<std::string>();
  }

 private:
  const json& j_;
  const std::string& source_;
};
// HF's rope_scaling object: {"rope_type" (or the older "type"): "linear" | "llama3" | "default", "factor",
// and for llama3 "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}.
RopeScaling rope_scaling_from(const json& j, const std::string& source) {
  LLM_CHECK(j.is_object(), source, ": key 'rope_scaling': expected an object, got ", json_brief(j));
  const std::string where = source + ": key 'rope_scaling'";
  const Keys k(j, where);
  const std::string type = k.has("rope_type") ? k.string("rope_type") : k.has("type") ? k.string("type") : "";
  LLM_CHECK(!type.empty(), where, ": missing key 'rope_type'");
  RopeScaling s;
  if (type == "default") return s;
  auto number = [&](const char* key) {
    LLM_CHECK(k.has(key), where, ": missing key '", key, "'");
    return static_cast<float>(k.number_or(key, 0));
  };
  if (type == "linear") {
    s.type = RopeScalingType::kLinear;
    s.factor = number("factor");
  } else if (type == "llama3") {
    s.type = RopeScalingType::kLlama3;
    s.factor = number("factor");
    s.low_freq_factor = number("low_freq_factor");
    s.high_freq_factor = number("high_freq_factor");
    s.original_max_position = number("original_max_position_embeddings");
  } else {
    throw Error(where + ": rope_type '" + type + "' is not supported (linear and llama3 are)");
  }
  return s;
}
}  // namespace

ModelConfig config_from_hf_json(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    throw Error(source + ": not valid JSON: " + e.what());
  }
  LLM_CHECK(j.is_object(), source, ": expected a JSON object");
  const Keys k(j, source);
  const std::string type = k.string("model_type");
  ModelConfig c;
  if (type == "gpt2") {
    c.arch = Arch::GPT2;
    c.vocab_size = k.integer("vocab_size");
    c.max_seq_len = k.has("n_positions") ? k.integer("n_positions") : k.integer("n_ctx");
    c.dim = k.integer("n_embd");
    c.n_layers = k.integer("n_layer");
    c.n_heads = k.integer("n_head");
    c.n_kv_heads = c.n_heads;
    c.hidden_dim = k.integer_or("n_inner", 4 * c.dim);
    c.norm_eps = static_cast<float>(k.number_or("layer_norm_epsilon", 1e-5));
    c.tie_embeddings = k.boolean_or("tie_word_embeddings", true);
    if (k.has("activation_function")) {
      const std::string act = k.string("activation_function");
      LLM_CHECK(act == "gelu_new" || act == "gelu_pytorch_tanh", source, ": key 'activation_function': '", act,
                "' is not supported (the tanh-approximate GELU is)");
    }
  } else if (type == "llama" || type == "mistral" || type == "qwen2" || type == "qwen3" || type == "phi3") {
    c.arch = Arch::Llama;
    c.vocab_size = k.integer("vocab_size");
    c.max_seq_len = k.integer("max_position_embeddings");
    c.dim = k.integer("hidden_size");
    c.n_layers = k.integer("num_hidden_layers");
    c.n_heads = k.integer("num_attention_heads");
    c.n_kv_heads = k.integer_or("num_key_value_heads", c.n_heads);
    c.hidden_dim = k.integer("intermediate_size");
    c.norm_eps = static_cast<float>(k.number_or("rms_norm_eps", 1e-6));
    c.rope_theta = static_cast<float>(k.number_or("rope_theta", 10000.0));
    c.tie_embeddings = k.boolean_or("tie_word_embeddings", false);
    c.attention_bias = type == "qwen2";
    c.qk_norm = type == "qwen3";
    LLM_CHECK(type == "qwen2" || !k.boolean_or("attention_bias", false), source,
              ": key 'attention_bias': true (biases on q/k/v and o_proj) is not supported for ", type,
              "; q/k/v biases are supported as model_type qwen2");
    if (k.has("head_dim") && (c.n_heads <= 0 || k.integer("head_dim") != c.dim / c.n_heads))
      c.explicit_head_dim = k.integer("head_dim");
    if (k.has("rope_scaling")) c.rope_scaling = rope_scaling_from(j["rope_scaling"], source);
    // Phi-3 is LLaMA with fused q/k/v and gate/up projections (split on loading) and Mistral's window.
    LLM_CHECK(type != "phi3" || k.number_or("partial_rotary_factor", 1.0) == 1.0, source,
              ": key 'partial_rotary_factor': RoPE on part of each head is not supported");
    if ((type == "mistral" || type == "phi3") && j.contains("sliding_window") && !j["sliding_window"].is_null()) {
      c.sliding_window = k.integer("sliding_window");
      if (c.sliding_window >= c.max_seq_len) c.sliding_window = 0;  // never narrower than the context: no window
    }
    LLM_CHECK((type != "qwen2" && type != "qwen3") || !k.boolean_or("use_sliding_window", false), source,
              ": key 'use_sliding_window': true is not supported for ", type, " (its per-layer windows)");
    if (k.has("hidden_act"))
      LLM_CHECK(k.string("hidden_act") == "silu", source, ": key 'hidden_act': '", k.string("hidden_act"),
                "' is not supported (silu is)");
  } else {
    throw Error(source + ": key 'model_type': unknown architecture '" + type +
                "' (supported: gpt2, llama, mistral, qwen2, qwen3, phi3)");
  }
  try {
    c.validate();
  } catch (const Error& e) {
    throw Error(source + ": " + e.what());
  }
  return c;
}

std::string config_to_hf_json(const ModelConfig& c) {
  json j;
  if (c.arch == Arch::GPT2) {
    j = {{"architectures", {"GPT2LMHeadModel"}}, {"model_type", "gpt2"}, {"vocab_size", c.vocab_size},
         {"n_positions", c.max_seq_len}, {"n_ctx", c.max_seq_len}, {"n_embd", c.dim}, {"n_layer", c.n_layers},
         {"n_head", c.n_heads}, {"n_inner", c.hidden_dim}, {"layer_norm_epsilon", c.norm_eps},
         {"activation_function", "gelu_new"}, {"tie_word_embeddings", true}};
  } else {
    // q/k/v biases without an o_proj bias is Qwen2's layout (LLaMA's attention_bias also biases o_proj),
    // q/k norms Qwen3's.
    const bool qwen2 = c.attention_bias, qwen3 = c.qk_norm, mistral = c.sliding_window > 0;  // one at most (validate)
    const char* type = qwen3 ? "qwen3" : qwen2 ? "qwen2" : mistral ? "mistral" : "llama";
    const char* model_class = qwen3   ? "Qwen3ForCausalLM"
                              : qwen2 ? "Qwen2ForCausalLM"
                              : mistral ? "MistralForCausalLM"
                                        : "LlamaForCausalLM";
    j = {{"architectures", {model_class}}, {"model_type", type},
         {"vocab_size", c.vocab_size},
         {"max_position_embeddings", c.max_seq_len}, {"hidden_size", c.dim}, {"num_hidden_layers", c.n_layers},
         {"num_attention_heads", c.n_heads}, {"num_key_value_heads", c.n_kv_heads},
         {"intermediate_size", c.hidden_dim}, {"rms_norm_eps", c.norm_eps}, {"rope_theta", c.rope_theta},
         {"tie_word_embeddings", c.tie_embeddings}, {"hidden_act", "silu"}};
    if (qwen2 || qwen3) j["use_sliding_window"] = false;
    if (!qwen2) j["attention_bias"] = false;
    j["head_dim"] = c.head_dim();
    if (mistral) j["sliding_window"] = c.sliding_window;
    const RopeScaling& s = c.rope_scaling;
    if (s.type == RopeScalingType::kLinear) j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", s.factor}};
    if (s.type == RopeScalingType::kLlama3)
      j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", s.factor}, {"low_freq_factor", s.low_freq_factor},
                           {"high_freq_factor", s.high_freq_factor},
                           {"original_max_position_embeddings", static_cast<int64_t>(s.original_max_position)}};
  }
  j["torch_dtype"] = "float32";
  return j.dump(2) + "\n";
}

}  // namespace llm::io
