// LoRA on Linear layers (engine/nn/lora.h): the adapter's forward against a double reference, its
// gradients by finite differences (none for the frozen base), targets by name, merging (same logits as
// base + adapter on a tiny LLaMA and GPT-2), training that changes only the adapters, and Q8.
#include <cmath>
#include <set>

#include "engine/models/transformer.h"
#include "engine/nn/lora.h"
#include "optim/adamw.h"
#include "tests/common/gradcheck.h"
#include "tests/common/testing.h"

namespace llm::testing {
namespace {

using models::Arch;
using models::ModelConfig;

// One Linear at path "fc", with random weight and bias.
struct OneLinear : nn::Module {
  OneLinear(int64_t in, int64_t out) : fc(in, out, true) {
    register_module("fc", &fc);
    NoGradGuard no_grad;
    fc.weight.copy_(param(fc.weight.shape(), 1));
    fc.bias.copy_(param(fc.bias.shape(), 2));
  }
  nn::Linear fc;
};

nn::LoraConfig lora_config(std::vector<std::string> targets, int64_t rank = 3, float alpha = 5.f, float dropout = 0.f) {
  nn::LoraConfig c;
  c.rank = rank;
  c.alpha = alpha;
  c.dropout = dropout;
  c.targets = std::move(targets);
  return c;
}

// B starts at zero, which would hide A's effect and gradient: give every adapter random values.
void randomize_adapters(nn::Module& m, uint64_t seed) {
  NoGradGuard no_grad;
  Generator gen(seed);
  for (auto& [name, p] : nn::lora_parameters(m)) p.copy_(Tensor::randn(p.shape(), gen, 0.f, 0.2f));
}

ModelConfig tiny(Arch arch) {
  ModelConfig c;
  c.arch = arch;
  c.vocab_size = 37;
  c.max_seq_len = 12;
  c.dim = 32;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = arch == Arch::GPT2 ? 4 : 2;
  c.hidden_dim = 64;
  c.tie_embeddings = arch == Arch::GPT2;
  return c;
}

std::vector<float> logits(models::CausalLM& m, uint64_t seed = 3) {
  const int64_t B = 2, T = 9;
  NoGradGuard no_grad;
  const Tensor ids = Tensor::from_vector(random_ints(B * T, seed, 0, int32_t(m.config().vocab_size)), Shape{B, T});
  return m.forward(ids).to_vector<float>();
}

std::map<std::string, std::vector<float>> snapshot(const nn::Module& m) {
  std::map<std::string, std::vector<float>> out;
  for (const auto& [name, p] : m.named_parameters()) out[name] = p.to_vector<float>();
  return out;
}

TEST(Lora, ForwardMatchesDoubleReference) {
  const int64_t N = 5, in = 7, out = 6, r = 3;
  OneLinear net(in, out);
  const nn::LoraConfig config = lora_config({"fc"}, r, 5.f);
  EXPECT_EQ(nn::apply_lora(net, config, 11), std::vector<std::string>{"fc"});
  randomize_adapters(net, 4);
  const Tensor x = param(Shape{N, in}, 3);
  const std::vector<float> y = net.fc.forward(x).to_vector<float>();
  const auto X = x.to_vector<float>(), W = net.fc.weight.to_vector<float>(), b = net.fc.bias.to_vector<float>(),
             A = net.fc.lora.A.to_vector<float>(), Bm = net.fc.lora.B.to_vector<float>();
  std::vector<double> want(N * out);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < out; ++o) {
      double base = b[o], low = 0;
      for (int64_t i = 0; i < in; ++i) base += double(X[n * in + i]) * W[o * in + i];
      for (int64_t k = 0; k < r; ++k) {
        double xa = 0;
        for (int64_t i = 0; i < in; ++i) xa += double(X[n * in + i]) * A[k * in + i];
        low += xa * Bm[o * r + k];
      }
      want[n * out + o] = base + 5.0 / r * low;
    }
  EXPECT_REL_NEAR(y, want, 1e-5);
}

TEST(Lora, GradientsOfAdapterOnlyByFiniteDifferences) {
  for (const float dropout : {0.f, 0.4f}) {
    OneLinear net(9, 5);
    nn::apply_lora(net, lora_config({"fc"}, 2, 3.f, dropout), 5);
    randomize_adapters(net, 6);
    EXPECT_FALSE(net.fc.weight.requires_grad());
    EXPECT_FALSE(net.fc.bias.requires_grad());
    const Tensor x = param(Shape{4, 9}, 7);
    nn::Linear& fc = net.fc;
    // Same dropout mask in every evaluation: rewind the adapter's call counter.
    auto f = [&](const std::vector<Tensor>& in) {
      fc.lora.calls = 0;
      return fc.forward(in[0]);
    };
    gradcheck(f, {x, fc.lora.A, fc.lora.B, fc.weight, fc.bias});
    EXPECT_FALSE(fc.weight.grad().defined()) << "the frozen weight received a gradient";
    EXPECT_FALSE(fc.bias.grad().defined()) << "the frozen bias received a gradient";
  }
}

TEST(Lora, DropoutOnlyWhileTrainingAndDeterministicFromSeed) {
  auto outputs = [](bool training, uint64_t seed) {
    OneLinear net(64, 8);
    nn::apply_lora(net, lora_config({"fc"}, 4, 8.f, 0.5f), seed);
    randomize_adapters(net, 1);
    net.set_training(training);
    const Tensor x = param(Shape{3, 64}, 2);
    NoGradGuard no_grad;
    return std::vector<std::vector<float>>{net.fc.forward(x).to_vector<float>(), net.fc.forward(x).to_vector<float>()};
  };
  const auto train = outputs(true, 9), again = outputs(true, 9), other_seed = outputs(true, 10), eval = outputs(false, 9);
  EXPECT_EQ(train, again) << "the same seed must give the same masks";
  EXPECT_NE(train[0], train[1]) << "each forward call draws a new mask";
  EXPECT_NE(train[0], other_seed[0]);
  EXPECT_EQ(eval[0], eval[1]);
  EXPECT_NE(eval[0], train[0]);

  // Evaluation in between does not move the mask sequence on.
  OneLinear net(64, 8);
  nn::apply_lora(net, lora_config({"fc"}, 4, 8.f, 0.5f), 9);
  randomize_adapters(net, 1);
  const Tensor x = param(Shape{3, 64}, 2);
  NoGradGuard no_grad;
  EXPECT_EQ(net.fc.forward(x).to_vector<float>(), train[0]);
  net.set_training(false);
  net.fc.forward(x);
  net.set_training(true);
  EXPECT_EQ(net.fc.forward(x).to_vector<float>(), train[1]);
}

TEST(Lora, TargetsByNameAndFreezing) {
  auto llama = models::make_model(tiny(Arch::Llama), 1);
  const std::vector<std::string> adapted = nn::apply_lora(*llama, lora_config({"q_proj", "self_attn.v_proj"}), 2);
  EXPECT_EQ(adapted, (std::vector<std::string>{"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                                               "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"}));
  std::vector<std::string> trainable;
  for (const auto& [name, p] : nn::trainable_parameters(*llama)) trainable.push_back(name);
  EXPECT_EQ(trainable.size(), 8u);
  EXPECT_EQ(trainable[0], "model.layers.0.self_attn.q_proj.lora_A.weight");
  EXPECT_EQ(trainable[1], "model.layers.0.self_attn.q_proj.lora_B.weight");
  for (const auto& name : trainable) EXPECT_TRUE(nn::is_lora_parameter(name)) << name;
  EXPECT_EQ(llama->parameter("model.layers.1.self_attn.v_proj.lora_A.weight").shape(), (Shape{3, 32}));
  EXPECT_EQ(llama->parameter("model.layers.1.self_attn.v_proj.lora_B.weight").shape(), (Shape{16, 3}));

  // all-linear: every projection, not the output head; the head only when named.
  auto untied = models::make_model(tiny(Arch::Llama), 1);
  EXPECT_EQ(nn::apply_lora(*untied, lora_config({"all-linear"}), 2).size(), 14u);
  EXPECT_EQ(nn::lora_layers(*untied).size(), 14u);
  auto head = models::make_model(tiny(Arch::Llama), 1);
  EXPECT_EQ(nn::apply_lora(*head, lora_config({"lm_head"}), 2), std::vector<std::string>{"lm_head"});

  // GPT-2: HF's names; c_proj is both the attention and the MLP output.
  auto gpt2 = models::make_model(tiny(Arch::GPT2), 1);
  EXPECT_EQ(nn::apply_lora(*gpt2, lora_config({"c_attn", "c_proj"}), 2).size(), 6u);
  EXPECT_EQ(gpt2->parameter("transformer.h.1.attn.c_attn.lora_B.weight").shape(), (Shape{96, 3}));
  auto gpt2_attn = models::make_model(tiny(Arch::GPT2), 1);
  EXPECT_EQ(nn::apply_lora(*gpt2_attn, lora_config({"attn.c_proj"}), 2),
            (std::vector<std::string>{"transformer.h.0.attn.c_proj", "transformer.h.1.attn.c_proj"}));
}

TEST(Lora, ClearErrorsAndNoChangeOnThem) {
  auto m = models::make_model(tiny(Arch::Llama), 1);
  const std::string typo = error_of([&] { nn::apply_lora(*m, lora_config({"q_proj", "qproj"}), 1); });
  EXPECT_NE(typo.find("target module 'qproj' matches no Linear layer"), std::string::npos) << typo;
  EXPECT_NE(typo.find("(its Linear layers: model.layers.N.self_attn.q_proj, model.layers.N.self_attn.k_proj, "), std::string::npos) << typo;
  EXPECT_TRUE(nn::lora_parameters(*m).empty());
  EXPECT_TRUE(m->parameter("model.norm.weight").requires_grad()) << "a failed apply_lora froze the model";
  EXPECT_NE(error_of([&] { nn::apply_lora(*m, lora_config({"q_proj"}, 0), 1); }).find("rank must be positive"), std::string::npos);
  EXPECT_NE(error_of([&] { nn::apply_lora(*m, lora_config({"q_proj"}, 2, 4.f, 1.f), 1); }).find("dropout must be in [0, 1)"),
            std::string::npos);
  EXPECT_NE(error_of([&] { nn::apply_lora(*m, lora_config({}), 1); }).find("no target modules"), std::string::npos);
  nn::apply_lora(*m, lora_config({"q_proj"}), 1);
  EXPECT_NE(error_of([&] { nn::apply_lora(*m, lora_config({"self_attn.q_proj"}), 1); }).find("already has a LoRA adapter"),
            std::string::npos);
}

// Merged weights give the logits of base + adapter, and a fresh adapter leaves the logits unchanged.
void check_merge(Arch arch, const std::vector<std::string>& targets) {
  auto m = models::make_model(tiny(arch), 5);
  m->set_training(false);
  const std::vector<float> base = logits(*m);
  const size_t n_params = m->named_parameters().size();
  const auto adapted = nn::apply_lora(*m, lora_config(targets, 4, 8.f, 0.1f), 6);
  EXPECT_EQ(logits(*m), base) << "B = 0 must leave the output unchanged";
  randomize_adapters(*m, 7);
  const std::vector<float> adapter = logits(*m);
  EXPECT_GT(max_rel_error(adapter, base), 1e-2) << "the adapter should change the logits";
  EXPECT_EQ(nn::merge_lora(*m), adapted);
  EXPECT_EQ(m->named_parameters().size(), n_params) << "adapters are gone after merging";
  EXPECT_TRUE(nn::lora_layers(*m).empty());
  EXPECT_REL_NEAR(logits(*m), adapter, 1e-5);
}

TEST(Lora, MergedLogitsEqualBasePlusAdapterLlama) { check_merge(Arch::Llama, {"all-linear"}); }
TEST(Lora, MergedLogitsEqualBasePlusAdapterGpt2) { check_merge(Arch::GPT2, {"c_attn", "c_proj", "c_fc"}); }

TEST(Lora, TrainingChangesOnlyAdapters) {
  auto m = models::make_model(tiny(Arch::Llama), 8);
  nn::apply_lora(*m, lora_config({"q_proj", "v_proj", "down_proj"}, 4, 8.f, 0.1f), 9);
  const auto before = snapshot(*m);
  // Every parameter goes to the optimizer: the frozen ones must stay put because they get no gradient.
  optim::AdamWConfig oc;
  oc.lr = 1e-2f;
  optim::AdamW opt(m->named_parameters(), oc);
  const Tensor ids = Tensor::from_vector(random_ints(2 * 9, 1, 0, 37), Shape{2, 9});
  const Tensor targets = Tensor::from_vector(random_ints(2 * 9, 2, 0, 37), Shape{2, 9});
  float first = 0, last = 0;
  for (int step = 0; step < 4; ++step) {
    opt.zero_grad();
    Tensor loss = ops::cross_entropy(m->forward(ids), targets);
    loss.backward();
    opt.step(oc.lr);
    (step == 0 ? first : last) = loss.item();
  }
  EXPECT_LT(last, first);
  for (const auto& [name, p] : m->named_parameters()) {
    if (nn::is_lora_parameter(name))
      EXPECT_NE(p.to_vector<float>(), before.at(name)) << name << " did not train";
    else
      EXPECT_EQ(p.to_vector<float>(), before.at(name)) << name << " is frozen but changed";
  }
}

TEST(Lora, Q8KeepsTheAdapterAndMergeRequantizes) {
  auto fp32 = models::make_model(tiny(Arch::Llama), 5);
  fp32->set_training(false);
  nn::apply_lora(*fp32, lora_config({"q_proj", "up_proj"}), 6);
  randomize_adapters(*fp32, 7);
  const std::vector<float> want = logits(*fp32);
  auto q8 = models::make_model(tiny(Arch::Llama), 5);
  q8->set_training(false);
  nn::apply_lora(*q8, lora_config({"q_proj", "up_proj"}), 6);
  randomize_adapters(*q8, 7);
  q8->quantize_q8();
  EXPECT_REL_NEAR(logits(*q8), want, 2e-2);
  auto base_q8 = models::make_model(tiny(Arch::Llama), 5);
  base_q8->set_training(false);
  base_q8->quantize_q8();
  EXPECT_GT(max_rel_error(logits(*q8), logits(*base_q8)), 1e-2) << "the adapter is ignored under Q8";

  // Merging a quantized model re-quantizes the merged weights: the same as merging, then quantizing.
  nn::merge_lora(*q8);
  nn::merge_lora(*fp32);
  fp32->quantize_q8();
  EXPECT_EQ(logits(*q8), logits(*fp32));
}

}  // namespace
}  // namespace llm::testing
