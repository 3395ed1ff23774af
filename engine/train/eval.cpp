#include "engine/train/eval.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "engine/core/autograd.h"
#include "engine/core/error.h"
#include "engine/io/hdf5_file.h"
#include "engine/io/npy.h"
#include "engine/ops/ops.h"

namespace llm::train {

std::vector<EvalWindow> plan_eval_windows(int64_t n_tokens, int64_t seq_len, int64_t stride) {
  LLM_CHECK(n_tokens >= 2, "evaluation needs at least 2 tokens, got ", n_tokens);
  LLM_CHECK(seq_len >= 2, "--seq-len: must be at least 2, got ", seq_len);
  LLM_CHECK(stride >= 1 && stride <= seq_len, "--stride: must be in [1, seq-len = ", seq_len, "], got ", stride);
  std::vector<EvalWindow> windows;
  int64_t prev_end = 0;
  for (int64_t begin = 0; begin < n_tokens; begin += stride) {
    const int64_t end = std::min(begin + seq_len, n_tokens);
    windows.push_back({begin, end, std::max(prev_end, begin + 1)});
    prev_end = end;
    if (end == n_tokens) break;
  }
  return windows;
}

int64_t default_eval_seq_len(const models::ModelConfig& config) {
  return std::min<int64_t>(config.max_seq_len > 0 ? config.max_seq_len : 1024, 1024);
}

std::vector<int32_t> encode_for_eval(const data::Tokenizer& tokenizer, const std::string& text) {
  std::vector<int32_t> ids;
  if (tokenizer.bos_id() >= 0) ids.push_back(tokenizer.bos_id());
  const std::vector<int32_t> body = tokenizer.encode(text);
  ids.insert(ids.end(), body.begin(), body.end());
  return ids;
}

namespace {

void check_ids(const models::ModelConfig& config, const int32_t* ids, int64_t n, const std::string& what) {
  for (int64_t i = 0; i < n; ++i)
    LLM_CHECK(ids[i] >= 0 && ids[i] < config.vocab_size, what, ": token id ", ids[i], " at flat index ", i,
              " is outside the model's vocabulary [0, ", config.vocab_size, ")");
}

}  // namespace

PerplexityResult evaluate_perplexity(models::CausalLM& model, const std::vector<int32_t>& ids,
                                     const PerplexityOptions& options,
                                     const std::function<void(int64_t, int64_t)>& on_window) {
  const models::ModelConfig& config = model.config();
  PerplexityResult r;
  r.seq_len = options.seq_len > 0 ? options.seq_len : default_eval_seq_len(config);
  r.stride = options.stride > 0 ? options.stride : r.seq_len;
  LLM_CHECK(r.seq_len <= config.max_seq_len, "--seq-len ", r.seq_len, " exceeds the model's context of ",
            config.max_seq_len, " tokens");
  const int64_t n = static_cast<int64_t>(ids.size());
  const std::vector<EvalWindow> windows = plan_eval_windows(n, r.seq_len, r.stride);
  check_ids(config, ids.data(), n, "text");
  r.tokens = n;
  r.windows = static_cast<int64_t>(windows.size());

  NoGradGuard no_grad;
  const auto start = std::chrono::steady_clock::now();
  const int64_t V = config.vocab_size;
  for (size_t w = 0; w < windows.size(); ++w) {
    const EvalWindow& win = windows[w];
    const int64_t L = win.end - win.begin;
    const std::vector<int32_t> chunk(ids.begin() + win.begin, ids.begin() + win.end);
    // A model on the GPU sends each window's logits to the host once, as f32, for the fp64 softmax here.
    const Tensor logits =
        model.forward(Tensor::from_vector(chunk, Shape{1, L}).to(model.device())).to(Device::cpu()).to(DType::F32).contiguous();
    const float* lg = logits.data<float>();
    // Token t (absolute) is predicted by the logits at window position t - 1 - begin.
    for (int64_t t = win.score_begin; t < win.end; ++t) {
      const float* row = lg + (t - 1 - win.begin) * V;
      double mx = row[0];
      for (int64_t v = 1; v < V; ++v) mx = std::max(mx, static_cast<double>(row[v]));
      double z = 0;
      for (int64_t v = 0; v < V; ++v) z += std::exp(static_cast<double>(row[v]) - mx);
      r.nll_sum += mx + std::log(z) - static_cast<double>(row[ids[t]]);
      ++r.scored;
    }
    r.forwarded += L;
    if (on_window) on_window(static_cast<int64_t>(w) + 1, r.windows);
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  LLM_CHECK(r.scored > 0, "evaluation scored no tokens");
  r.loss = r.nll_sum / static_cast<double>(r.scored);
  r.perplexity = std::exp(r.loss);
  return r;
}

namespace {

// Shape, dtype, length and vocabulary checks for ids [B, T]; returns them contiguous.
Tensor validated_ids(const models::ModelConfig& config, const Tensor& ids, const std::string& what) {
  LLM_CHECK(ids.dtype() == DType::I32, what, ": token ids must be integers, got ", dtype_name(ids.dtype()));
  LLM_CHECK(ids.dim() == 2, what, ": token ids must have shape [B, T], got ", ids.shape().str());
  const int64_t B = ids.size(0), T = ids.size(1);
  LLM_CHECK(B >= 1 && T >= 1, what, ": empty token array ", ids.shape().str());
  LLM_CHECK(T <= config.max_seq_len, what, ": ", T, " tokens per row exceed the model's context of ", config.max_seq_len);
  Tensor c = ids.contiguous();
  check_ids(config, c.data<int32_t>(), B * T, what);
  return c;
}

}  // namespace

Tensor logits_for_ids(models::CausalLM& model, const Tensor& ids, const std::string& what) {
  const Tensor c = validated_ids(model.config(), ids, what);
  NoGradGuard no_grad;
  std::vector<Tensor> rows;
  for (int64_t b = 0; b < c.size(0); ++b) rows.push_back(model.forward(c.slice(0, b, b + 1).contiguous()));
  return (rows.size() == 1 ? rows[0] : ops::cat(rows, 0)).contiguous();
}

Shape write_logits_npy(models::CausalLM& model, const std::string& tokens_npy, const std::string& logits_npy) {
  const Tensor ids = io::read_npy(tokens_npy);
  LLM_CHECK(ids.dtype() == DType::I32, tokens_npy, ": token ids must be int32 or int64, got a float array");
  const Tensor c = validated_ids(model.config(), ids, tokens_npy);
  const int64_t B = c.size(0), T = c.size(1), V = model.config().vocab_size;
  const Shape out_shape{B, T, V};
  NoGradGuard no_grad;
  const std::string header = io::npy_header("<f4", out_shape);
  io::write_file_atomic(logits_npy, [&](std::ostream& out) {
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    for (int64_t b = 0; b < B; ++b) {
      const Tensor logits = model.forward(c.slice(0, b, b + 1).contiguous()).contiguous();
      out.write(static_cast<const char*>(logits.raw_data()), static_cast<std::streamsize>(logits.nbytes()));
    }
  });
  return out_shape;
}

}  // namespace llm::train
