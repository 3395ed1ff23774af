// A tour of the engine in one file: a two-layer, byte-level, LLaMA-style language model (RMSNorm,
// RoPE attention, SwiGLU MLP, tied embeddings) built from the differentiable ops, trained with the
// fused AdamW kernel on Tiny Shakespeare (or a built-in paragraph when ../shared is absent), then
// sampled. The real trainer (llm-train) comes with models/ and optim/; this shows the core works.
//
//   tiny_lm [--steps N] [--data FILE] [--threads N] [--seed S] [--expect-loss X]
// --expect-loss makes it exit 1 unless the final training loss is below X (used as a test).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "engine/core/tensor.h"
#include "engine/ops/ops.h"
#include "kernels/cpu/fused.h"
#include "kernels/cpu/parallel.h"

using namespace llm;

namespace {

const char* kBuiltinText =
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\n"
    "First Citizen:\nFirst, you know Caius Marcius is chief enemy to the people.\n\nAll:\nWe know't, we know't.\n\n"
    "First Citizen:\nLet us kill him, and we'll have corn at our own price.\nIs't a verdict?\n\n"
    "All:\nNo more talking on't; let it be done: away, away!\n\n";

struct Config {
  int64_t vocab = 256, dim = 64, heads = 4, kv_heads = 2, hidden = 172, layers = 2;
  int64_t batch = 8, seq = 64;
};

struct Layer {
  Tensor attn_norm, wq, wk, wv, wo, mlp_norm, w_gate, w_up, w_down;
};

struct Model {
  Config cfg;
  Tensor embed, final_norm;
  std::vector<Layer> layers;

  std::vector<Tensor*> parameters() {
    std::vector<Tensor*> ps{&embed, &final_norm};
    for (Layer& l : layers)
      for (Tensor* t : {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.mlp_norm, &l.w_gate, &l.w_up, &l.w_down})
        ps.push_back(t);
    return ps;
  }
};

Tensor init(const Shape& s, Generator& g, float std) { return Tensor::randn(s, g, 0.f, std).set_requires_grad(true); }
Tensor ones(int64_t n) { return Tensor::ones(Shape{n}).set_requires_grad(true); }

Model make_model(const Config& c, Generator& g) {
  Model m;
  m.cfg = c;
  const int64_t hd = c.dim / c.heads;
  const float std = 0.02f, resid = 0.02f / std::sqrt(2.f * c.layers);
  m.embed = init(Shape{c.vocab, c.dim}, g, std);
  m.final_norm = ones(c.dim);
  for (int64_t i = 0; i < c.layers; ++i)
    m.layers.push_back({ones(c.dim), init(Shape{c.heads * hd, c.dim}, g, std), init(Shape{c.kv_heads * hd, c.dim}, g, std),
                        init(Shape{c.kv_heads * hd, c.dim}, g, std), init(Shape{c.dim, c.heads * hd}, g, resid),
                        ones(c.dim), init(Shape{c.hidden, c.dim}, g, std), init(Shape{c.hidden, c.dim}, g, std),
                        init(Shape{c.dim, c.hidden}, g, resid)});
  return m;
}

// tokens [B, T] → logits [B, T, vocab]
Tensor forward(Model& m, const Tensor& tokens) {
  const Config& c = m.cfg;
  const int64_t B = tokens.size(0), T = tokens.size(1), hd = c.dim / c.heads;
  std::vector<int32_t> pos(T);
  for (int64_t t = 0; t < T; ++t) pos[t] = static_cast<int32_t>(t);
  const Tensor positions = Tensor::from_vector(pos, Shape{T});
  Tensor x = ops::embedding(tokens, m.embed);
  for (Layer& l : m.layers) {
    Tensor h = ops::rms_norm(x, l.attn_norm);
    Tensor q = ops::rope(ops::linear(h, l.wq).view(Shape{B, T, c.heads, hd}), positions, 10000.f);
    Tensor k = ops::rope(ops::linear(h, l.wk).view(Shape{B, T, c.kv_heads, hd}), positions, 10000.f);
    Tensor v = ops::linear(h, l.wv).view(Shape{B, T, c.kv_heads, hd});
    x = x + ops::linear(ops::attention(q, k, v).view(Shape{B, T, c.dim}), l.wo);
    h = ops::rms_norm(x, l.mlp_norm);
    x = x + ops::linear(ops::swiglu(ops::linear(h, l.w_gate), ops::linear(h, l.w_up)), l.w_down);
  }
  return ops::linear(ops::rms_norm(x, m.final_norm), m.embed);  // tied output head
}

struct AdamW {
  std::vector<Tensor> m, v;
  int64_t step = 0;
  void update(const std::vector<Tensor*>& params, float lr) {
    if (m.empty())
      for (Tensor* p : params) {
        m.push_back(Tensor::zeros(p->shape()));
        v.push_back(Tensor::zeros(p->shape()));
      }
    ++step;
    NoGradGuard no_grad;
    for (size_t i = 0; i < params.size(); ++i) {
      Tensor& p = *params[i];
      const float wd = p.dim() >= 2 ? 0.1f : 0.f;  // decay matrices, not norm weights
      cpu::adamw_update(p.numel(), p.data<float>(), p.grad().data<float>(), m[i].data<float>(), v[i].data<float>(),
                        {lr, 0.9f, 0.95f, 1e-8f, wd, step, 1.f});
      p.storage()->bump_version();
      p.zero_grad();
    }
  }
};

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

int main(int argc, char** argv) {
  int steps = 600, threads = 0;
  uint64_t seed = 1337;
  double expect_loss = -1;
  std::string data_path = std::string(LLM_SOURCE_DIR) + "/../shared/data/tinyshakespeare/input.txt";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* flag) -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "error: tiny_lm: %s needs a value\n", flag);
        std::exit(2);
      }
      return argv[++i];
    };
    try {
      if (a == "--steps") steps = std::stoi(value("--steps"));
      else if (a == "--threads") threads = std::stoi(value("--threads"));
      else if (a == "--seed") seed = std::stoull(value("--seed"));
      else if (a == "--data") data_path = value("--data");
      else if (a == "--expect-loss") expect_loss = std::stod(value("--expect-loss"));
      else {
        std::fprintf(stderr, "error: tiny_lm: unknown argument '%s'\n", a.c_str());
        return 2;
      }
    } catch (const std::exception&) {
      std::fprintf(stderr, "error: tiny_lm: %s: expected a number\n", a.c_str());
      return 2;
    }
  }
  cpu::set_num_threads(threads);

  std::string text = read_text(data_path);
  const char* source = data_path.c_str();
  if (text.size() < 1000) {
    text = kBuiltinText;
    source = "the built-in paragraph (shared data not found)";
  }
  std::printf("tiny_lm: training on %s (%zu bytes), %d threads\n", source, text.size(), cpu::num_threads());

  Generator gen(seed);
  Config cfg;
  Model model = make_model(cfg, gen);
  int64_t n_params = 0;
  for (Tensor* p : model.parameters()) n_params += p->numel();
  std::printf("model: %lld parameters, %lld layers, dim %lld, %lld/%lld heads\n", (long long)n_params,
              (long long)cfg.layers, (long long)cfg.dim, (long long)cfg.heads, (long long)cfg.kv_heads);

  AdamW opt;
  const int64_t B = cfg.batch, T = cfg.seq;
  std::vector<int32_t> inputs(B * T), targets(B * T);
  float loss_avg = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int step = 1; step <= steps; ++step) {
    for (int64_t b = 0; b < B; ++b) {
      const size_t off = gen.next_u64() % (text.size() - T - 1);
      for (int64_t t = 0; t < T; ++t) {
        inputs[b * T + t] = static_cast<unsigned char>(text[off + t]);
        targets[b * T + t] = static_cast<unsigned char>(text[off + t + 1]);
      }
    }
    Tensor logits = forward(model, Tensor::from_vector(inputs, Shape{B, T}));
    Tensor loss = ops::cross_entropy(logits, Tensor::from_vector(targets, Shape{B, T}));
    loss.backward();
    const float lr = 1e-2f * std::min(1.f, step / 20.f);
    opt.update(model.parameters(), lr);
    const float l = loss.item();
    loss_avg = step == 1 ? l : 0.9f * loss_avg + 0.1f * l;
    if (step % 25 == 0 || step == 1 || step == steps) {
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::printf("step %4d/%d  loss %.4f  (avg %.4f)  %.0f tokens/s\n", step, steps, l, loss_avg,
                  step * B * T / secs);
    }
  }

  // Sample 200 bytes (temperature 0.8), re-running the whole window each step (no KV cache yet).
  std::string out = "\n";
  {
    NoGradGuard no_grad;
    for (int i = 0; i < 200; ++i) {
      const size_t n = std::min<size_t>(out.size(), T);
      std::vector<int32_t> ctx(n);
      for (size_t j = 0; j < n; ++j) ctx[j] = static_cast<unsigned char>(out[out.size() - n + j]);
      const std::vector<float> logits = forward(model, Tensor::from_vector(ctx, Shape{1, int64_t(n)})).to_vector<float>();
      const float* last = logits.data() + (n - 1) * cfg.vocab;
      std::vector<double> p(cfg.vocab);
      double mx = -1e30, z = 0;
      for (int64_t v = 0; v < cfg.vocab; ++v) mx = std::max(mx, double(last[v]) / 0.8);
      for (int64_t v = 0; v < cfg.vocab; ++v) z += p[v] = std::exp(double(last[v]) / 0.8 - mx);
      double u = gen.uniform() * z;
      int64_t pick = 0;
      while (pick < cfg.vocab - 1 && (u -= p[pick]) > 0) ++pick;
      out += static_cast<char>(pick);
    }
  }
  std::printf("\nsample:%s\n", out.c_str());
  if (expect_loss > 0 && !(loss_avg < expect_loss)) {
    std::fprintf(stderr, "error: tiny_lm: final average loss %.4f is not below %.4f\n", loss_avg, expect_loss);
    return 1;
  }
  return 0;
}
