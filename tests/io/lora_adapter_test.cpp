// LoRA adapters on disk (engine/io/lora_adapter.h): PEFT-layout fixtures (scripts/make_lora_fixtures.py)
// on the tiny HF models give PyTorch's float64 logits, before and after merging; save → load round
// trips; every kind of bad adapter gives one clear error and leaves the model as it was.
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "engine/io/hdf5_file.h"
#include "engine/io/lora_adapter.h"
#include "engine/io/safetensors.h"
#include "engine/train/pretrained.h"
#include "tests/data/data_test_util.h"

namespace llm::testing {
namespace {

using json = nlohmann::json;
using models::Arch;
using models::ModelConfig;

std::string fixture(const std::string& kind, const std::string& name) {
  return std::string(LLM_SOURCE_DIR) + "/tests/fixtures/" + kind + "/" + name;
}

class LoraFixture : public ::testing::TestWithParam<std::string> {};

// |got - want| relative to the largest |want| (the fixtures' tolerance, as hf_fixture_test).
double rel_error(const std::vector<float>& got, const std::vector<double>& want) {
  double max_ref = 0, max_err = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    max_ref = std::max(max_ref, std::fabs(want[i]));
    max_err = std::max(max_err, std::fabs(got[i] - want[i]));
  }
  return got.size() == want.size() ? max_err / max_ref : INFINITY;
}

TEST_P(LoraFixture, BasePlusAdapterAndMergedMatchPyTorch) {
  const std::string adapter_dir = fixture("lora", GetParam());
  const json ref = json::parse(data::read_file(adapter_dir + "/expected_logits.json"));
  const auto ids = ref["input_ids"].get<std::vector<std::vector<int32_t>>>();
  const auto want = ref["logits"]["data"].get<std::vector<double>>();
  std::vector<int32_t> flat;
  for (const auto& row : ids) flat.insert(flat.end(), row.begin(), row.end());
  const Tensor batch = Tensor::from_vector(flat, Shape{int64_t(ids.size()), int64_t(ids[0].size())});

  auto model = train::load_model(fixture("hf", GetParam()));
  const io::LoraAdapterInfo info = io::load_lora_adapter(adapter_dir, *model);
  EXPECT_EQ(info.modules.size(), 6u);
  EXPECT_EQ(info.base_model, "tests/fixtures/hf/" + GetParam());
  EXPECT_FLOAT_EQ(info.config.dropout, 0.05f);
  NoGradGuard no_grad;
  const std::vector<float> adapted = model->forward(batch).to_vector<float>();
  EXPECT_LT(rel_error(adapted, want), 1e-4);
  nn::merge_lora(*model);
  const std::vector<float> merged = model->forward(batch).to_vector<float>();
  EXPECT_LT(rel_error(merged, want), 1e-4);
  EXPECT_REL_NEAR(merged, adapted, 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Models, LoraFixture, ::testing::Values("llama_tiny", "gpt2_tiny"));

ModelConfig tiny_llama() {
  ModelConfig c;
  c.arch = Arch::Llama;
  c.vocab_size = 29;
  c.max_seq_len = 8;
  c.dim = 16;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.hidden_dim = 24;
  c.tie_embeddings = false;
  return c;
}

std::vector<float> logits(models::CausalLM& m) {
  NoGradGuard no_grad;
  return m.forward(Tensor::from_vector(random_ints(6, 4, 0, 29), Shape{1, 6})).to_vector<float>();
}

// A model with an adapter on every projection (random A and B), saved to dir.
std::unique_ptr<models::CausalLM> adapted_model(const std::string& dir, std::vector<std::string> targets = {"all-linear"}) {
  auto m = models::make_model(tiny_llama(), 1);
  m->set_training(false);
  nn::LoraConfig c;
  c.rank = 4;
  c.alpha = 6;
  c.dropout = 0.1f;
  c.targets = std::move(targets);
  nn::apply_lora(*m, c, 2);
  {
    NoGradGuard no_grad;
    Generator gen(3);
    for (auto& [name, p] : nn::lora_parameters(*m)) p.copy_(Tensor::randn(p.shape(), gen, 0.f, 0.3f));
  }
  io::save_lora_adapter(dir, *m, c, "my/base-model");
  return m;
}

TEST(LoraAdapter, SaveLoadRoundTripInPeftLayout) {
  TempDir dir("lora_roundtrip");
  auto saved = adapted_model(dir.str());
  const json config = json::parse(data::read_file(dir / "adapter_config.json"));
  EXPECT_EQ(config["peft_type"], "LORA");
  EXPECT_EQ(config["task_type"], "CAUSAL_LM");
  EXPECT_EQ(config["r"], 4);
  EXPECT_EQ(config["lora_alpha"], 6.0);
  EXPECT_EQ(config["bias"], "none");
  EXPECT_EQ(config["base_model_name_or_path"], "my/base-model");
  EXPECT_EQ(config["target_modules"], json({"down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"}))
      << "all-linear is saved as the names it matched, as PEFT does";
  const io::SafetensorsFile file(dir / "adapter_model.safetensors");
  EXPECT_EQ(file.names().size(), 28u);
  EXPECT_EQ(file.entry("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight").shape, (std::vector<int64_t>{16, 4}));

  auto loaded = models::make_model(tiny_llama(), 1);
  loaded->set_training(false);
  const io::LoraAdapterInfo info = io::load_lora_adapter(dir.str(), *loaded);
  EXPECT_EQ(info.modules.size(), 14u);
  EXPECT_EQ(info.config.rank, 4);
  EXPECT_FLOAT_EQ(info.config.alpha, 6.f);
  const auto want = nn::lora_parameters(*saved), got = nn::lora_parameters(*loaded);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got[i].first, want[i].first);
    EXPECT_EQ(got[i].second.to_vector<float>(), want[i].second.to_vector<float>()) << want[i].first;
    EXPECT_TRUE(got[i].second.requires_grad()) << "a loaded adapter trains on";
  }
  EXPECT_EQ(nn::trainable_parameters(*loaded).size(), 28u);
  EXPECT_EQ(logits(*loaded), logits(*saved));
}

TEST(LoraAdapter, SavingWithoutAdaptersIsAnError) {
  TempDir dir("lora_none");
  auto m = models::make_model(tiny_llama(), 1);
  EXPECT_NE(error_of([&] { io::save_lora_adapter(dir.str(), *m, nn::LoraConfig(), ""); }).find("the model has no LoRA adapters"),
            std::string::npos);
}

// Saves a good adapter, lets `damage` spoil it, and returns the error of loading it, after checking
// that the model was left without adapters and fully trainable.
std::string load_error(const std::function<void(const std::string& dir)>& damage) {
  TempDir dir("lora_bad");
  adapted_model(dir.str(), {"q_proj", "v_proj"});
  damage(dir.str());
  auto m = models::make_model(tiny_llama(), 1);
  const std::string error = error_of([&] { io::load_lora_adapter(dir.str(), *m); });
  EXPECT_TRUE(nn::lora_parameters(*m).empty()) << "a failed load left adapters: " << error;
  EXPECT_EQ(nn::trainable_parameters(*m).size(), m->named_parameters().size()) << "a failed load froze the model";
  return error;
}

void edit_config(const std::string& dir, const std::function<void(json&)>& edit) {
  json j = json::parse(data::read_file(dir + "/adapter_config.json"));
  edit(j);
  io::write_file_atomic(dir + "/adapter_config.json", j.dump());
}

void edit_tensors(const std::string& dir, const std::function<void(std::map<std::string, Tensor>&)>& edit) {
  std::map<std::string, Tensor> t = io::read_safetensors(dir + "/adapter_model.safetensors");
  for (auto& [name, v] : t) v = v.clone();  // off the mapping before it is replaced
  edit(t);
  io::write_safetensors(dir + "/adapter_model.safetensors", {t.begin(), t.end()});
}

#define EXPECT_HAS(text, part) EXPECT_NE((text).find(part), std::string::npos) << (text)

TEST(LoraAdapter, BadFilesGiveClearErrors) {
  const std::string key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
  EXPECT_HAS(load_error([](const std::string& d) { std::filesystem::remove(d + "/adapter_config.json"); }),
             "adapter_config.json: cannot read");
  EXPECT_HAS(load_error([](const std::string& d) { std::filesystem::remove(d + "/adapter_model.safetensors"); }),
             "adapter_model.safetensors: no such file");
  EXPECT_HAS(load_error([&](const std::string& d) { edit_tensors(d, [&](auto& t) { t.erase(key); }); }),
             "adapter_model.safetensors: missing tensor '" + key + "'");
  EXPECT_HAS(load_error([&](const std::string& d) {
               edit_tensors(d, [&](auto& t) { t[key] = Tensor::zeros(Shape{4, 15}); });
             }),
             "tensor '" + key + "' has shape [4, 15], but the model expects [4, 16]");
  EXPECT_HAS(load_error([](const std::string& d) { edit_config(d, [](json& j) { j["r"] = 3; }); }),
             "tensor '" + key + "' has shape [4, 16], but the model expects [3, 16] (r = 3 in ");
  EXPECT_HAS(load_error([&](const std::string& d) {
               edit_tensors(d, [&](auto& t) { t["base_model.model.model.layers.0.mlp.up_proj.lora_A.weight"] = t[key]; });
             }),
             "unexpected tensor 'base_model.model.model.layers.0.mlp.up_proj.lora_A.weight'");
  EXPECT_HAS(load_error([](const std::string& d) { edit_config(d, [](json& j) { j["target_modules"] = {"q_proj", "wq"}; }); }),
             "adapter_config.json: lora: target module 'wq' matches no Linear layer");
  EXPECT_HAS(load_error([](const std::string& d) { edit_config(d, [](json& j) { j["target_modules"] = ".*q_proj"; }); }),
             "key 'target_modules': a regular expression");
  EXPECT_HAS(load_error([](const std::string& d) { edit_config(d, [](json& j) { j["peft_type"] = "PREFIX_TUNING"; }); }),
             "key 'peft_type': expected \"LORA\", got \"PREFIX_TUNING\"");
  EXPECT_HAS(load_error([](const std::string& d) { edit_config(d, [](json& j) { j["r"] = "eight"; }); }),
             "key 'r': expected a positive integer, got \"eight\"");
  EXPECT_HAS(load_error([](const std::string& d) { edit_config(d, [](json& j) { j["bias"] = "all"; }); }),
             "key 'bias': \"all\" is not supported");
  EXPECT_HAS(load_error([](const std::string& d) { edit_config(d, [](json& j) { j["use_dora"] = true; }); }),
             "key 'use_dora': true is not supported");
  EXPECT_HAS(load_error([](const std::string& d) { edit_config(d, [](json& j) { j["lora_dropout"] = 1.5; }); }),
             "adapter_config.json: lora: dropout must be in [0, 1)");
  EXPECT_HAS(load_error([](const std::string& d) { io::write_file_atomic(d + "/adapter_config.json", "{\"r\": 4,"); }),
             "adapter_config.json: not valid JSON");
}

}  // namespace
}  // namespace llm::testing
