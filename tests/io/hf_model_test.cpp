// Hugging Face directories, safetensors and llama2.c files: round trips of tiny random models of each
// family, f16/bf16 storage, sharded checkpoints, old GPT-2 names, and one clear error per kind of
// damage (each naming the file and the tensor or key).
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/io/hdf5_file.h"
#include "engine/io/hf_config.h"
#include "engine/io/hf_model.h"
#include "engine/io/llama2c.h"
#include "engine/io/safetensors.h"
#include "engine/train/checkpoint.h"
#include "engine/train/pretrained.h"
#include "kernels/cpu/elementwise.h"
#include "tests/data/data_test_util.h"

namespace llm::testing {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using models::Arch;
using models::ModelConfig;
using Weights = std::vector<std::pair<std::string, Tensor>>;

ModelConfig tiny_gpt2() {
  ModelConfig c;
  c.arch = Arch::GPT2;
  c.vocab_size = 37;
  c.max_seq_len = 12;
  c.dim = 16;
  c.n_layers = 2;
  c.n_heads = 2;
  c.n_kv_heads = 2;
  c.hidden_dim = 40;
  return c;
}

ModelConfig tiny_llama(bool bias = false) {
  ModelConfig c;
  c.arch = Arch::Llama;
  c.vocab_size = 41;
  c.max_seq_len = 12;
  c.dim = 24;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.hidden_dim = 36;
  c.tie_embeddings = false;
  c.attention_bias = bias;
  c.rope_theta = 500.f;
  c.norm_eps = 1e-6f;
  return c;
}

// A model whose every parameter (norm weights and biases included) is random, so that a transposed,
// permuted or swapped tensor always shows.
std::unique_ptr<models::CausalLM> random_model(const ModelConfig& c, uint64_t seed) {
  auto m = models::make_model(c, seed);
  Generator gen(seed + 100);
  NoGradGuard no_grad;
  for (auto& [name, p] : m->named_parameters()) p.copy_(Tensor::randn(p.shape(), gen, 0.f, 0.3f));
  m->set_training(false);
  return m;
}

std::vector<float> logits(models::CausalLM& m) {
  const int64_t T = 7;
  std::vector<int32_t> ids(T);
  for (int64_t t = 0; t < T; ++t) ids[t] = static_cast<int32_t>((t * 13 + 5) % m.config().vocab_size);
  NoGradGuard no_grad;
  return m.forward(Tensor::from_vector(ids, Shape{1, T})).to_vector<float>();
}

void expect_same_weights(const Weights& want, const std::map<std::string, Tensor>& got) {
  ASSERT_EQ(want.size(), got.size());
  for (const auto& [name, t] : want) {
    ASSERT_TRUE(got.count(name)) << name;
    EXPECT_EQ(got.at(name).shape(), t.shape()) << name;
    EXPECT_EQ(got.at(name).to_vector<float>(), t.to_vector<float>()) << name;
  }
}

// Runs f, which must throw llm::Error whose message contains every one of `parts`.
template <typename F>
void expect_error(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error thrown (expected one mentioning '" << parts.front() << "')";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A safetensors file from a header text and data bytes; declared_len overrides the length field.
void write_raw_safetensors(const std::string& path, const std::string& header, const std::string& data,
                           uint64_t declared_len = UINT64_MAX) {
  const uint64_t len = declared_len == UINT64_MAX ? header.size() : declared_len;
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(len >> (8 * i));
  write_bytes(path, bytes + header + data);
}

json header_of(const std::string& path) {
  const std::string bytes = data::read_file(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ((8 + n) % 8, 0u) << "header padded to 8 bytes";
  return json::parse(bytes.substr(8, n));
}

void rewrite_config(const std::string& dir, const std::function<void(json&)>& edit) {
  json j = json::parse(data::read_file(dir + "/config.json"));
  edit(j);
  write_bytes(dir + "/config.json", j.dump(2));
}

// ---- round trips ------------------------------------------------------------------------------

TEST(HfModel, Gpt2RoundTripKeepsWeightsAndLogitsAndStoresConv1D) {
  TempDir dir("hf_gpt2");
  const ModelConfig c = tiny_gpt2();
  auto m = random_model(c, 1);
  const Weights w = m->named_parameters();
  io::save_hf_directory(dir.str(), c, w, asset("gpt2"));
  for (const char* f : {"config.json", "model.safetensors", "encoder.json", "vocab.bpe", "tokenizer.json"})
    EXPECT_TRUE(fs::exists(dir / f)) << f;

  // HF's GPT2LMHeadModel layout: "transformer." names, Conv1D weights [in, out].
  const json h = header_of(dir / "model.safetensors");
  EXPECT_EQ(h["transformer.h.0.attn.c_attn.weight"]["shape"], json({16, 48}));
  EXPECT_EQ(h["transformer.h.1.attn.c_proj.weight"]["shape"], json({16, 16}));
  EXPECT_EQ(h["transformer.h.0.mlp.c_fc.weight"]["shape"], json({16, 40}));
  EXPECT_EQ(h["transformer.h.0.mlp.c_proj.weight"]["shape"], json({40, 16}));
  EXPECT_EQ(h["transformer.wte.weight"]["shape"], json({37, 16}));
  const io::SafetensorsFile file(dir / "model.safetensors");
  const Tensor stored = file.tensor("transformer.h.0.mlp.c_fc.weight");
  const Tensor ours = m->parameter("transformer.h.0.mlp.c_fc.weight");
  EXPECT_EQ(stored.to_vector<float>(), ours.transpose(0, 1).contiguous().to_vector<float>());

  const io::LoadedModel back = train::load_pretrained(dir.str());
  EXPECT_EQ(back.config.arch, Arch::GPT2);
  EXPECT_EQ(back.tokenizer, dir.str());
  expect_same_weights(w, back.weights);
  EXPECT_EQ(logits(*train::make_loaded_model(back)), logits(*m));
}

TEST(HfModel, Gpt2LoadsOldNamesWithBuffersAndATiedHead) {
  TempDir dir("hf_gpt2_old");
  const ModelConfig c = tiny_gpt2();
  auto m = random_model(c, 2);
  io::save_hf_directory(dir.str(), c, m->named_parameters(), "");
  // Rewrite the file as old GPT-2 checkpoints are: no "transformer." prefix, attention mask buffers,
  // and an lm_head tied to wte.
  const io::SafetensorsFile src(dir / "model.safetensors");
  Weights old;
  for (const std::string& name : src.names()) old.emplace_back(name.substr(std::strlen("transformer.")), src.tensor(name));
  old.emplace_back("h.0.attn.bias", Tensor::ones(Shape{1, 1, 12, 12}));
  old.emplace_back("h.1.attn.masked_bias", Tensor::full(Shape{}, -1e4));
  old.emplace_back("lm_head.weight", src.tensor("transformer.wte.weight"));
  io::write_safetensors(dir / "model.safetensors", old);
  const io::LoadedModel back = train::load_pretrained(dir.str());
  expect_same_weights(m->named_parameters(), back.weights);
}

TEST(HfModel, LlamaUntiedGqaRoundTrip) {
  TempDir dir("hf_llama");
  const ModelConfig c = tiny_llama();
  auto m = random_model(c, 3);
  io::save_hf_directory(dir.str(), c, m->named_parameters(), asset("stories260K/tok512.model"));
  EXPECT_TRUE(fs::exists(dir / "tokenizer.model"));
  const json h = header_of(dir / "model.safetensors");
  EXPECT_EQ(h["lm_head.weight"]["shape"], json({41, 24}));
  EXPECT_EQ(h["model.layers.1.self_attn.k_proj.weight"]["shape"], json({12, 24}));
  const io::LoadedModel back = train::load_pretrained(dir.str());
  EXPECT_FALSE(back.config.tie_embeddings);
  EXPECT_EQ(back.config.n_kv_heads, 2);
  EXPECT_FLOAT_EQ(back.config.rope_theta, 500.f);
  EXPECT_EQ(back.tokenizer, dir.str());
  expect_same_weights(m->named_parameters(), back.weights);
  EXPECT_EQ(logits(*train::make_loaded_model(back)), logits(*m));
}

TEST(HfModel, Qwen2AndMistralConfigsLoad) {
  TempDir dir("hf_qwen");
  const ModelConfig c = tiny_llama(/*bias=*/true);
  auto m = random_model(c, 4);
  io::save_hf_directory(dir.str(), c, m->named_parameters(), "");
  EXPECT_TRUE(header_of(dir / "model.safetensors").contains("model.layers.0.self_attn.q_proj.bias"));
  // q/k/v biases without an o_proj bias are Qwen2's layout, so that is what the directory says.
  const json config = json::parse(data::read_file(dir / "config.json"));
  EXPECT_EQ(config["model_type"], "qwen2");
  EXPECT_EQ(config["architectures"], json({"Qwen2ForCausalLM"}));
  // A stray rotary buffer is ignored.
  {
    const io::SafetensorsFile src(dir / "model.safetensors");
    Weights w;
    for (const std::string& name : src.names()) w.emplace_back(name, src.tensor(name));
    w.emplace_back("model.layers.0.self_attn.rotary_emb.inv_freq", Tensor::ones(Shape{3}));
    io::write_safetensors(dir / "model.safetensors", w);
  }
  io::LoadedModel back = train::load_pretrained(dir.str());
  EXPECT_TRUE(back.config.attention_bias);
  expect_same_weights(m->named_parameters(), back.weights);
  EXPECT_EQ(logits(*train::make_loaded_model(back)), logits(*m));

  // Mistral: a LLaMA without biases.
  TempDir dir2("hf_mistral");
  const ModelConfig c2 = tiny_llama();
  auto m2 = random_model(c2, 5);
  io::save_hf_directory(dir2.str(), c2, m2->named_parameters(), "");
  rewrite_config(dir2.str(), [](json& j) {
    j["model_type"] = "mistral";
    j["architectures"] = {"MistralForCausalLM"};
  });
  back = train::load_pretrained(dir2.str());
  EXPECT_FALSE(back.config.attention_bias);
  EXPECT_EQ(back.config.sliding_window, 0);
  EXPECT_EQ(logits(*train::make_loaded_model(back)), logits(*m2));
  // Mistral's sliding window is read (and null or wider than the context means none) and written back.
  rewrite_config(dir2.str(), [](json& j) { j["sliding_window"] = 3; });
  back = train::load_pretrained(dir2.str());
  EXPECT_EQ(back.config.sliding_window, 3);
  EXPECT_NE(io::config_to_hf_json(back.config).find("\"sliding_window\": 3"), std::string::npos);
  EXPECT_EQ(io::config_from_hf_json(io::config_to_hf_json(back.config), "x").sliding_window, 3);
  rewrite_config(dir2.str(), [](json& j) { j["sliding_window"] = nullptr; });
  EXPECT_EQ(train::load_pretrained(dir2.str()).config.sliding_window, 0);
}

// RoPE scaling (config.json's rope_scaling, Llama 3.1/3.2 and position interpolation) reaches every
// layer's attention and survives the directory round trip.
TEST(HfModel, RopeScalingReachesTheModelAndRoundTrips) {
  const ModelConfig plain = tiny_llama();
  auto m = random_model(plain, 7);
  const auto weights = m->named_parameters();
  auto with_config = [&](const ModelConfig& c) {
    auto scaled = models::make_model(c, 0);
    scaled->load_state(std::map<std::string, Tensor>(weights.begin(), weights.end()));
    scaled->set_training(false);
    return scaled;
  };
  NoGradGuard no_grad;
  const Tensor ids = Tensor::from_vector(std::vector<int32_t>{5, 18, 31, 3, 22, 9}, Shape{1, 6});
  // Linear scaling by 2 at positions 0, 2, 4, ... turns exactly as no scaling at 0, 1, 2, ...
  ModelConfig linear = plain;
  linear.rope_scaling = {RopeScalingType::kLinear, 2.f};
  models::ForwardOptions even;
  even.positions = Tensor::from_vector(std::vector<int32_t>{0, 2, 4, 6, 8, 10}, Shape{6});
  EXPECT_EQ(with_config(linear)->forward(ids, even).to_vector<float>(), m->forward(ids).to_vector<float>());

  // llama3 at this model's scale (head_dim 6, theta 500: wavelengths 6.3, 50 and 394 positions
  // against 16 and 64) keeps the first frequency, blends the second and divides the third.
  ModelConfig llama3 = plain;
  llama3.rope_scaling = {RopeScalingType::kLlama3, 8.f, 1.f, 4.f, 64.f};
  auto m3 = with_config(llama3);
  const std::vector<float> want = m3->forward(ids).to_vector<float>();
  EXPECT_NE(want, m->forward(ids).to_vector<float>());
  TempDir dir("hf_rope_scaling");
  io::save_hf_directory(dir.str(), llama3, m3->named_parameters(), "");
  const json config = json::parse(data::read_file(dir / "config.json"));
  EXPECT_EQ(config["rope_scaling"], json({{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                                          {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 64}}));
  io::LoadedModel back = train::load_pretrained(dir.str());
  EXPECT_EQ(back.config.rope_scaling.type, RopeScalingType::kLlama3);
  EXPECT_EQ(back.config.summary(), llama3.summary());
  EXPECT_EQ(train::make_loaded_model(back)->forward(ids).to_vector<float>(), want);
}

// Phi-3 (Phi3ForCausalLM) stacks q, k, v in self_attn.qkv_proj and gate, up in mlp.gate_up_proj; it is
// otherwise this LLaMA with Mistral's window. The same weights fused that way give the same logits.
TEST(HfModel, Phi3FusedProjectionsAreSplitOnLoading) {
  TempDir dir("hf_phi3");
  const ModelConfig c = tiny_llama();
  auto m = random_model(c, 11);
  io::save_hf_directory(dir.str(), c, m->named_parameters(), "");
  {
    const io::SafetensorsFile src(dir / "model.safetensors");
    std::map<std::string, Tensor> by_name;
    for (const std::string& name : src.names()) by_name[name] = src.tensor(name);
    Weights fused;
    for (const auto& [name, t] : by_name) {
      const auto strip = [&](const std::string& suffix) { return name.substr(0, name.size() - suffix.size()); };
      if (name.find("self_attn.q_proj.weight") != std::string::npos) {
        const std::string p = strip("q_proj.weight");
        fused.emplace_back(p + "qkv_proj.weight",
                           ops::cat({t, by_name.at(p + "k_proj.weight"), by_name.at(p + "v_proj.weight")}, 0));
      } else if (name.find("mlp.gate_proj.weight") != std::string::npos) {
        const std::string p = strip("gate_proj.weight");
        fused.emplace_back(p + "gate_up_proj.weight", ops::cat({t, by_name.at(p + "up_proj.weight")}, 0));
      } else if (name.find("k_proj") == std::string::npos && name.find("v_proj") == std::string::npos &&
                 name.find("up_proj") == std::string::npos) {
        fused.emplace_back(name, t);
      }
    }
    io::write_safetensors(dir / "model.safetensors", fused);
  }
  rewrite_config(dir.str(), [](json& j) {
    j["model_type"] = "phi3";
    j["architectures"] = {"Phi3ForCausalLM"};
    j["sliding_window"] = 2047;  // wider than the context: no window
  });
  const io::LoadedModel back = train::load_pretrained(dir.str());
  expect_same_weights(m->named_parameters(), back.weights);
  EXPECT_EQ(logits(*train::make_loaded_model(back)), logits(*m));
  rewrite_config(dir.str(), [](json& j) { j["partial_rotary_factor"] = 0.75; });
  EXPECT_NE(error_of([&] { train::load_pretrained(dir.str()); }).find("key 'partial_rotary_factor'"), std::string::npos);
}

TEST(HfModel, NativeCheckpointToHfAndBack) {
  TempDir dir("hf_native");
  const ModelConfig c = tiny_llama(true);
  auto m = random_model(c, 6);
  train::Checkpoint ck;
  ck.model_config = c;
  ck.weights = m->named_parameters();
  ck.tokenizer = "byte";
  train::save_checkpoint(dir / "a.h5", ck);
  const io::LoadedModel a = train::load_pretrained(dir / "a.h5");
  EXPECT_EQ(a.tokenizer, "byte");
  io::save_hf_directory(dir / "hf", a.config, Weights(a.weights.begin(), a.weights.end()), a.tokenizer);
  const io::LoadedModel hf = train::load_pretrained(dir / "hf");
  train::Checkpoint ck2;
  ck2.model_config = hf.config;
  ck2.weights = Weights(hf.weights.begin(), hf.weights.end());
  train::save_checkpoint(dir / "b.h5", ck2);
  const io::LoadedModel b = train::load_pretrained(dir / "b.h5");
  expect_same_weights(m->named_parameters(), b.weights);
  EXPECT_EQ(b.config.attention_bias, true);
  EXPECT_EQ(logits(*train::load_model(dir / "b.h5")), logits(*m));
}

// ---- storage variants ---------------------------------------------------------------------------

TEST(HfModel, F16AndBf16SafetensorsLoadAsTheirRoundedValues) {
  const ModelConfig c = tiny_llama();
  auto m = random_model(c, 7);
  const Weights w = m->named_parameters();
  for (const io::StoredType type : {io::StoredType::F16, io::StoredType::BF16}) {
    SCOPED_TRACE(io::stored_type_name(type));
    TempDir dir("hf_half");
    io::save_hf_directory(dir.str(), c, w, "");
    io::write_safetensors(dir / "model.safetensors", w, type);
    EXPECT_EQ(header_of(dir / "model.safetensors")["model.norm.weight"]["dtype"], io::stored_type_name(type));
    const io::LoadedModel back = train::load_pretrained(dir.str());
    for (const auto& [name, t] : w) {
      const std::vector<float> src = t.to_vector<float>();
      std::vector<uint16_t> half(src.size());
      std::vector<float> want(src.size());
      const auto n = static_cast<int64_t>(src.size());
      if (type == io::StoredType::F16) {
        cpu::f32_to_f16(n, src.data(), half.data());
        cpu::f16_to_f32(n, half.data(), want.data());
      } else {
        cpu::f32_to_bf16(n, src.data(), half.data());
        cpu::bf16_to_f32(n, half.data(), want.data());
      }
      EXPECT_EQ(back.weights.at(name).to_vector<float>(), want) << name;
      EXPECT_LT(max_rel_error(back.weights.at(name).to_vector<float>(), src), type == io::StoredType::F16 ? 1e-3 : 1e-2);
    }
  }
}

TEST(HfModel, ShardedCheckpointLoadsTheSame) {
  TempDir dir("hf_shards");
  const ModelConfig c = tiny_llama();
  auto m = random_model(c, 8);
  const Weights w = m->named_parameters();
  io::save_hf_directory(dir.str(), c, w, "");
  fs::remove(dir / "model.safetensors");
  Weights first(w.begin(), w.begin() + w.size() / 2), second(w.begin() + w.size() / 2, w.end());
  json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", json::object()}};
  for (const auto& kv : first) index["weight_map"][kv.first] = "model-00001-of-00002.safetensors";
  for (const auto& kv : second) index["weight_map"][kv.first] = "model-00002-of-00002.safetensors";
  io::write_safetensors(dir / "model-00001-of-00002.safetensors", first);
  io::write_safetensors(dir / "model-00002-of-00002.safetensors", second, io::StoredType::F32, {{"format", "pt"}});
  write_bytes(dir / "model.safetensors.index.json", index.dump());
  const io::LoadedModel back = train::load_pretrained(dir.str());
  expect_same_weights(w, back.weights);

  // The index names a tensor its shard does not hold.
  json bad = index;
  bad["weight_map"]["model.layers.0.extra"] = "model-00002-of-00002.safetensors";
  write_bytes(dir / "model.safetensors.index.json", bad.dump());
  expect_error([&] { train::load_pretrained(dir.str()); },
               {"model-00002-of-00002.safetensors", "missing tensor 'model.layers.0.extra'"});
  // A shard holds a tensor the index places elsewhere.
  bad = index;
  bad["weight_map"][first.front().first] = "model-00002-of-00002.safetensors";
  write_bytes(dir / "model.safetensors.index.json", bad.dump());
  expect_error([&] { train::load_pretrained(dir.str()); },
               {"model-00001-of-00002.safetensors", "unexpected tensor '" + first.front().first + "'"});
  // A shard that is not there.
  bad = index;
  bad["weight_map"][first.front().first] = "model-00009-of-00002.safetensors";
  write_bytes(dir / "model.safetensors.index.json", bad.dump());
  expect_error([&] { train::load_pretrained(dir.str()); }, {"model.safetensors.index.json", "model-00009-of-00002.safetensors", "does not exist"});
}

// Writes a tiny model in llama2.c's layout: q/k rows back in adjacent-pair order, an untied classifier.
TEST(Llama2c, UntiedSyntheticFileLoadsWithRopeRowsPermuted) {
  TempDir dir("l2c");
  ModelConfig c = tiny_llama();
  c.norm_eps = 1e-5f;
  c.rope_theta = 10000.f;
  auto m = random_model(c, 9);
  const int64_t D = c.dim, L = c.n_layers, hd = c.head_dim();
  std::vector<float> out;
  auto put = [&](const std::string& name) {
    const auto v = m->parameter(name).to_vector<float>();
    out.insert(out.end(), v.begin(), v.end());
  };
  auto put_pairs = [&](const std::string& name, int64_t heads) {  // HF rotate_half rows → llama2.c pairs
    const auto v = m->parameter(name).to_vector<float>();
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t r = 0; r < hd; ++r) {  // llama2.c row h·hd + r with r = 2i + j is HF row h·hd + j·hd/2 + i
        const int64_t src = h * hd + (r % 2) * (hd / 2) + r / 2;
        out.insert(out.end(), v.begin() + src * D, v.begin() + (src + 1) * D);
      }
  };
  auto layers = [&](const char* suffix) {
    for (int64_t i = 0; i < L; ++i) put("model.layers." + std::to_string(i) + "." + suffix);
  };
  put("model.embed_tokens.weight");
  layers("input_layernorm.weight");
  for (int64_t i = 0; i < L; ++i) put_pairs("model.layers." + std::to_string(i) + ".self_attn.q_proj.weight", c.n_heads);
  for (int64_t i = 0; i < L; ++i) put_pairs("model.layers." + std::to_string(i) + ".self_attn.k_proj.weight", c.n_kv_heads);
  layers("self_attn.v_proj.weight");
  layers("self_attn.o_proj.weight");
  layers("post_attention_layernorm.weight");
  layers("mlp.gate_proj.weight");
  layers("mlp.down_proj.weight");
  layers("mlp.up_proj.weight");
  put("model.norm.weight");
  out.insert(out.end(), static_cast<size_t>(c.max_seq_len * hd), 0.5f);  // the legacy freq_cis tables
  put("lm_head.weight");
  const int32_t header[7] = {24, 36, 2, 4, 2, -41, 12};
  std::string bytes(reinterpret_cast<const char*>(header), sizeof(header));
  bytes.append(reinterpret_cast<const char*>(out.data()), out.size() * sizeof(float));
  write_bytes(dir / "tiny.bin", bytes);

  EXPECT_TRUE(io::is_llama2c_file(dir / "tiny.bin"));
  const io::LoadedModel back = train::load_pretrained(dir / "tiny.bin");
  EXPECT_FALSE(back.config.tie_embeddings);
  EXPECT_EQ(back.tokenizer, "");
  expect_same_weights(m->named_parameters(), back.weights);
  EXPECT_EQ(logits(*train::make_loaded_model(back)), logits(*m));
}

// ---- errors ------------------------------------------------------------------------------------

class HfErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    m_ = random_model(config_, 10);
    weights_ = m_->named_parameters();
    io::save_hf_directory(dir_.str(), config_, weights_, "");
  }
  std::string st() const { return dir_ / "model.safetensors"; }
  void rewrite(const std::function<void(Weights&)>& edit) {
    Weights w = weights_;
    edit(w);
    io::write_safetensors(st(), w);
  }
  TempDir dir_{"hf_err"};
  ModelConfig config_ = tiny_llama();
  std::unique_ptr<models::CausalLM> m_;
  Weights weights_;
};

TEST_F(HfErrors, TruncatedSafetensors) {
  const std::string bytes = data::read_file(st());
  write_bytes(st(), bytes.substr(0, bytes.size() - 10));
  // The tensor stored last is the one that runs past the end.
  expect_error([&] { train::load_pretrained(dir_.str()); }, {st(), "tensor '" + weights_.back().first + "'", "past the end"});
  write_bytes(st(), bytes.substr(0, 5));
  expect_error([&] { io::SafetensorsFile f(st()); }, {st(), "truncated"});
}

TEST_F(HfErrors, HeaderLengthBeyondTheFile) {
  write_raw_safetensors(st(), "{}", "", 1000);
  expect_error([&] { train::load_pretrained(dir_.str()); }, {st(), "header length 1000", "past the end of the file"});
}

TEST_F(HfErrors, UnknownDtypeOverlapAndBadHeader) {
  write_raw_safetensors(st(), R"({"w": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}})", std::string(8, '\0'));
  expect_error([&] { io::SafetensorsFile f(st()); }, {st(), "tensor 'w'", "dtype F64 is not supported"});
  write_raw_safetensors(st(), R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                  "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                        std::string(12, '\0'));
  expect_error([&] { io::SafetensorsFile f(st()); }, {st(), "'a' and 'b' overlap"});
  write_raw_safetensors(st(), R"({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", std::string(8, '\0'));
  expect_error([&] { io::SafetensorsFile f(st()); }, {st(), "tensor 'a'", "holds 8 bytes"});
  write_raw_safetensors(st(), "{not json", "");
  expect_error([&] { io::SafetensorsFile f(st()); }, {st(), "not valid JSON"});
}

TEST_F(HfErrors, MissingTensor) {
  rewrite([](Weights& w) { w.erase(std::remove_if(w.begin(), w.end(), [](auto& kv) { return kv.first == "model.norm.weight"; }), w.end()); });
  expect_error([&] { train::load_pretrained(dir_.str()); }, {st(), "missing tensor 'model.norm.weight'"});
}

TEST_F(HfErrors, UnexpectedTensor) {
  rewrite([](Weights& w) { w.emplace_back("model.layers.0.mlp.extra.weight", Tensor::ones(Shape{2})); });
  expect_error([&] { train::load_pretrained(dir_.str()); }, {st(), "unexpected tensor 'model.layers.0.mlp.extra.weight'"});
}

TEST_F(HfErrors, MisShapedTensor) {
  rewrite([](Weights& w) {
    for (auto& kv : w)
      if (kv.first == "model.layers.1.mlp.up_proj.weight") kv.second = Tensor::ones(Shape{24, 36});
  });
  expect_error([&] { train::load_pretrained(dir_.str()); },
               {st(), "tensor 'model.layers.1.mlp.up_proj.weight' has shape [24, 36], expected [36, 24]"});
}

TEST_F(HfErrors, LlamaAttentionBiasIsRefused) {
  // LLaMA's attention_bias also biases o_proj, which our model does not have.
  rewrite_config(dir_.str(), [](json& j) { j["attention_bias"] = true; });
  expect_error([&] { train::load_pretrained(dir_.str()); }, {dir_ / "config.json", "key 'attention_bias'", "qwen2"});
}

TEST_F(HfErrors, UnsupportedOrIncompleteRopeScaling) {
  rewrite_config(dir_.str(), [](json& j) { j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}}; });
  expect_error([&] { train::load_pretrained(dir_.str()); },
               {dir_ / "config.json", "key 'rope_scaling': rope_type 'yarn' is not supported (linear and llama3 are)"});
  rewrite_config(dir_.str(), [](json& j) { j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}}; });
  expect_error([&] { train::load_pretrained(dir_.str()); },
               {dir_ / "config.json", "key 'rope_scaling': missing key 'low_freq_factor'"});
  rewrite_config(dir_.str(), [](json& j) { j["rope_scaling"] = {{"type", "linear"}, {"factor", 0.0}}; });
  expect_error([&] { train::load_pretrained(dir_.str()); },
               {dir_ / "config.json", "rope_scaling factor must be positive, got 0"});
  rewrite_config(dir_.str(), [](json& j) { j["rope_scaling"] = "llama3"; });
  expect_error([&] { train::load_pretrained(dir_.str()); },
               {dir_ / "config.json", "key 'rope_scaling': expected an object, got \"llama3\""});
  // "default" (and null) mean no scaling.
  rewrite_config(dir_.str(), [](json& j) { j["rope_scaling"] = {{"rope_type", "default"}}; });
  EXPECT_EQ(train::load_pretrained(dir_.str()).config.rope_scaling.type, RopeScalingType::kNone);
}

TEST_F(HfErrors, UnknownModelTypeAndMissingFiles) {
  rewrite_config(dir_.str(), [](json& j) { j["model_type"] = "bert"; });
  expect_error([&] { train::load_pretrained(dir_.str()); }, {dir_ / "config.json", "unknown architecture 'bert'"});
  fs::remove(dir_ / "config.json");
  expect_error([&] { train::load_pretrained(dir_.str()); }, {dir_.str(), "no config.json"});
  expect_error([&] { train::load_pretrained(dir_ / "nothing"); }, {dir_ / "nothing", "no such model"});
  write_bytes(dir_ / "x.txt", "hello");
  expect_error([&] { train::load_pretrained(dir_ / "x.txt"); }, {dir_ / "x.txt", "not a model"});
}

// A corrupt layer count is refused at once; it used to list a billion expected parameter names
// (minutes of work and gigabytes) before any message.
TEST_F(HfErrors, AbsurdLayerCountIsAnErrorNotAHang) {
  rewrite_config(dir_.str(), [](json& j) { j["num_hidden_layers"] = 1000000000; });
  expect_error([&] { train::load_pretrained(dir_.str()); },
               {st(), dir_ / "config.json", "1000000000 layers cannot fit in the"});
}

// A bad tokenizer source fails before anything is written: it used to leave config.json and
// model.safetensors behind in a directory without a tokenizer (llm-convert --tokenizer typo).
TEST(HfModel, BadTokenizerSourceWritesNothing) {
  TempDir dir("hf_badtok");
  const ModelConfig c = tiny_llama();
  const Weights w = random_model(c, 4)->named_parameters();
  write_bytes(dir / "notes.txt", "not a tokenizer");
  for (const std::string& source : {dir / "missing.model", dir / "notes.txt"}) {
    expect_error([&] { io::save_hf_directory(dir / "out", c, w, source); }, {source});
    EXPECT_FALSE(fs::exists(dir / "out")) << source;
  }
}

// A truncated or corrupt checkpoint says so; it used to be reported as "not an llm checkpoint".
TEST(CheckpointErrors, TruncatedCheckpointIsNamedAsSuch) {
  TempDir dir("ckpt_err");
  train::Checkpoint ck;
  ck.model_config = tiny_llama();
  ck.weights = random_model(ck.model_config, 3)->named_parameters();
  train::save_checkpoint(dir / "a.h5", ck);
  const std::string bytes = data::read_file(dir / "a.h5");
  write_bytes(dir / "cut.h5", bytes.substr(0, bytes.size() / 2));
  expect_error([&] { train::load_pretrained(dir / "cut.h5"); }, {dir / "cut.h5", "truncated or corrupted"});
  write_bytes(dir / "sig.h5", bytes.substr(0, 8));  // the signature alone
  expect_error([&] { train::load_pretrained(dir / "sig.h5"); }, {dir / "sig.h5", "truncated or corrupted"});
  {
    io::H5File other = io::H5File::create_atomic(dir / "other.h5");  // HDF5, but not a checkpoint
    other.set_attr("/", "format", "something-else");
    other.commit();
  }
  expect_error([&] { train::load_pretrained(dir / "other.h5"); }, {dir / "other.h5", "not an llm checkpoint"});
}

TEST(Llama2cErrors, TruncatedAndInconsistentFiles) {
  TempDir dir("l2c_err");
  const std::string bin = data::read_file(std::string(LLM_SOURCE_DIR) + "/tests/fixtures/stories260K/stories260K.bin");
  write_bytes(dir / "cut.bin", bin.substr(0, bin.size() - 100));
  expect_error([&] { train::load_pretrained(dir / "cut.bin"); },
               {dir / "cut.bin", "needs 1056540 bytes but the file has 1056440", "truncated"});
  write_bytes(dir / "tiny.bin", bin.substr(0, 20));
  expect_error([&] { train::load_pretrained(dir / "tiny.bin"); }, {dir / "tiny.bin", "truncated"});
  std::string edited = bin;
  const int32_t seq_len = 256;  // the file holds freq_cis tables for 512 positions
  std::memcpy(&edited[6 * 4], &seq_len, 4);
  write_bytes(dir / "seq.bin", edited);
  expect_error([&] { train::load_pretrained(dir / "seq.bin"); }, {dir / "seq.bin", "seq_len 256", "inconsistent header"});
  EXPECT_FALSE(io::is_llama2c_file(dir / "seq.bin"));
  const int32_t heads = 7;  // 64 is not a multiple of 7
  edited = bin;
  std::memcpy(&edited[3 * 4], &heads, 4);
  write_bytes(dir / "heads.bin", edited);
  expect_error([&] { train::load_pretrained(dir / "heads.bin"); }, {dir / "heads.bin", "not a multiple of n_heads 7"});
}

}  // namespace
}  // namespace llm::testing
