#include "engine/train/grpo.h"

#include <algorithm>
#include <cmath>

#include "engine/core/autograd.h"
#include "engine/generate/generate.h"

namespace llm::train {

namespace {
struct PolicyObjectiveBackward : autograd::Node {
  std::vector<float> dloss_dlogprob;  // computed with the value in the forward pass
  Shape shape;
  std::vector<Tensor> apply(std::vector<Tensor> g) override {
    const float scale = g[0].item();
    Tensor d = Tensor::empty(shape);
    for (size_t i = 0; i < dloss_dlogprob.size(); ++i) d.data<float>()[i] = scale * dloss_dlogprob[i];
    return {d};
  }
  std::string name() const override { return "PolicyObjectiveBackward"; }
};
}  // namespace

Tensor policy_objective(const Tensor& logprobs_in, const PolicyTerms& t) {
  const Tensor lp = logprobs_in.contiguous();
  const size_t N = static_cast<size_t>(lp.numel());
  LLM_CHECK(t.old_logprobs.size() == N && t.ref_logprobs.size() == N && t.advantages.size() == N && t.weights.size() == N,
            "policy_objective: ", N, " log-probabilities but terms for ", t.weights.size());
  const float* l = lp.data<float>();
  auto node = std::make_shared<PolicyObjectiveBackward>();
  node->shape = lp.shape();
  node->dloss_dlogprob.assign(N, 0.f);
  double total = 0;
  for (size_t i = 0; i < N; ++i) {
    const double w = t.weights[i];
    if (w == 0) continue;
    const double a = t.advantages[i], ratio = std::exp(static_cast<double>(l[i]) - t.old_logprobs[i]);
    const double clipped = std::clamp(ratio, 1.0 - t.clip_eps, 1.0 + t.clip_eps);
    // The pessimistic (smaller) of the two surrogates; the clipped one has no gradient.
    const bool unclipped_wins = ratio * a <= clipped * a;
    double value = -std::min(ratio * a, clipped * a), grad = unclipped_wins ? -ratio * a : 0.0;
    if (t.kl_beta != 0) {
      const double diff = static_cast<double>(t.ref_logprobs[i]) - l[i];  // log(ref / policy)
      value += t.kl_beta * (std::exp(diff) - diff - 1.0);
      grad += t.kl_beta * (1.0 - std::exp(diff));
    }
    total += w * value;
    node->dloss_dlogprob[i] = static_cast<float>(w * grad);
  }
  Tensor loss = Tensor::full(Shape{}, total);
  if (autograd::needs_grad({&logprobs_in})) autograd::record(node, {&logprobs_in}, {&loss});
  return loss;
}

struct PolicyTrainer::Sampled {
  std::vector<std::vector<int32_t>> prompt, completion;  // per sequence; completion ends with EOS when it stopped there
  std::vector<double> rewards;
};

PolicyTrainer::PolicyTrainer(GrpoOptions options, models::CausalLM& policy, std::unique_ptr<models::CausalLM> reference,
                             const data::Tokenizer& tokenizer, PromptEncoder encode, const Reward& reward,
                             std::vector<std::string> stop_strings)
    : opt_(options), policy_(policy), reference_(std::move(reference)), tokenizer_(tokenizer), encode_(std::move(encode)),
      reward_(reward), stop_(std::move(stop_strings)) {
  LLM_CHECK(opt_.group_size >= 1, "grpo.group_size: must be at least 1, got ", opt_.group_size);
  LLM_CHECK(opt_.group_size >= 2 || opt_.reinforce, "grpo.group_size: GRPO compares completions within a group, so it needs at least 2");
  LLM_CHECK(opt_.iterations >= 1, "grpo.iterations: must be at least 1, got ", opt_.iterations);
  LLM_CHECK(opt_.max_new_tokens >= 1, "grpo.max_new_tokens: must be at least 1, got ", opt_.max_new_tokens);
  LLM_CHECK(opt_.temperature > 0, "grpo.temperature: must be positive, got ", opt_.temperature);
  LLM_CHECK(opt_.kl_beta == 0 || reference_, "grpo.kl_beta > 0 needs a reference model");
}

PolicyTrainer::Sampled PolicyTrainer::sample(const std::vector<const Record*>& prompts, int64_t per_prompt, float temperature,
                                             uint64_t seed, uint64_t first_stream) {
  Sampled s;
  for (const Record* r : prompts) {
    const std::vector<int32_t> ids = encode_(*r);
    for (int64_t g = 0; g < per_prompt; ++g) s.prompt.push_back(ids);
  }
  generate::GenerateOptions go;
  go.max_new_tokens = opt_.max_new_tokens;
  go.sampling.temperature = temperature;  // plain sampling: the distribution the objective's log-probabilities describe
  go.sampling.top_k = 0;
  go.sampling.top_p = temperature > 0 ? opt_.top_p : 1.f;
  go.sampling.min_p = 0;
  go.sampling.seed = seed;
  go.first_stream = first_stream;
  go.stop = stop_;
  const bool was_training = policy_.training();
  policy_.set_training(false);
  const std::vector<generate::Generation> gens = generate::generate(policy_, tokenizer_, s.prompt, go);
  policy_.set_training(was_training);

  std::vector<Completion> batch;
  for (size_t i = 0; i < gens.size(); ++i) {
    std::vector<int32_t> c = gens[i].tokens;
    if (gens[i].finish_reason == "eos") c.push_back(tokenizer_.eot_id());  // the model is rewarded for stopping, too
    s.completion.push_back(std::move(c));
    batch.push_back({&prompts[i / static_cast<size_t>(per_prompt)]->fields, tokenizer_.decode(s.prompt[i]), gens[i].text,
                     static_cast<int64_t>(gens[i].tokens.size())});
  }
  s.rewards = reward_.score(batch);
  return s;
}

double PolicyTrainer::evaluate(const std::vector<const Record*>& prompts, float temperature, int64_t samples, uint64_t seed) {
  if (prompts.empty()) return 0;
  const Sampled s = sample(prompts, temperature > 0 ? samples : 1, temperature, seed);
  double sum = 0;
  for (double r : s.rewards) sum += r;
  return sum / static_cast<double>(s.rewards.size());
}

RlStats PolicyTrainer::step(optim::AdamW& optimizer, const std::vector<const Record*>& prompts, float lr, uint64_t seed,
                            uint64_t first_stream) {
  const int64_t G = opt_.group_size;
  const Sampled s = sample(prompts, G, opt_.temperature, seed, first_stream);
  const size_t n_seq = s.rewards.size();
  RlStats st;

  // Advantages within each group of G completions of one prompt.
  std::vector<double> advantage(n_seq);
  for (size_t p = 0; p < prompts.size(); ++p) {
    double mean = 0, var = 0;
    for (int64_t g = 0; g < G; ++g) mean += s.rewards[p * G + g];
    mean /= static_cast<double>(G);
    for (int64_t g = 0; g < G; ++g) var += std::pow(s.rewards[p * G + g] - mean, 2);
    const double sd = G > 1 ? std::sqrt(var / static_cast<double>(G - 1)) : 0.0;  // unbiased, as torch.std
    for (int64_t g = 0; g < G; ++g)
      advantage[p * G + g] = opt_.reinforce ? s.rewards[p * G + g] - mean : (s.rewards[p * G + g] - mean) / (sd + 1e-4);
  }
  double square = 0;
  for (double r : s.rewards) {
    st.reward_mean += r / static_cast<double>(n_seq);
    square += r * r / static_cast<double>(n_seq);
  }
  if (dp_) {  // every rank scores as many completions
    st.reward_mean = dp_->communicator().all_reduce_value(st.reward_mean, dist::ReduceOp::Average);
    square = dp_->communicator().all_reduce_value(square, dist::ReduceOp::Average);
  }
  st.reward_std = std::sqrt(std::max(0.0, square - st.reward_mean * st.reward_mean));

  // Micro-batches of sequences (prompt + completion), targets only on completion tokens.
  struct Chunk {
    Tensor inputs, targets;
    PolicyTerms terms;
    bool have_old = false;
  };
  std::vector<Chunk> chunks;
  int64_t total_tokens = 0;
  for (size_t i = 0; i < n_seq; ++i) total_tokens += static_cast<int64_t>(s.completion[i].size());
  st.completion_length = static_cast<double>(total_tokens) / static_cast<double>(n_seq);
  if (dp_) st.completion_length = dp_->communicator().all_reduce_value(st.completion_length, dist::ReduceOp::Average);
  for (size_t first = 0; first < n_seq; first += static_cast<size_t>(opt_.micro_batch)) {
    const size_t last = std::min(n_seq, first + static_cast<size_t>(opt_.micro_batch));
    int64_t T = 1;
    for (size_t i = first; i < last; ++i)
      T = std::max<int64_t>(T, static_cast<int64_t>(s.prompt[i].size() + s.completion[i].size()) - 1);
    const int64_t B = static_cast<int64_t>(last - first);
    std::vector<int32_t> in(static_cast<size_t>(B * T), 0), tg(static_cast<size_t>(B * T), -100);
    Chunk c;
    c.terms.clip_eps = opt_.clip_eps;
    c.terms.kl_beta = opt_.kl_beta;
    c.terms.advantages.assign(static_cast<size_t>(B * T), 0.f);
    c.terms.weights.assign(static_cast<size_t>(B * T), 0.f);
    for (size_t i = first; i < last; ++i) {
      std::vector<int32_t> seq = s.prompt[i];
      seq.insert(seq.end(), s.completion[i].begin(), s.completion[i].end());
      const size_t row = (i - first) * static_cast<size_t>(T), P = s.prompt[i].size(), n = s.completion[i].size();
      for (size_t j = 0; j + 1 < seq.size(); ++j) {
        in[row + j] = seq[j];
        if (j + 1 >= P) {  // predicts a completion token
          tg[row + j] = seq[j + 1];
          c.terms.advantages[row + j] = static_cast<float>(advantage[i]);
          c.terms.weights[row + j] = static_cast<float>(1.0 / (static_cast<double>(n) * static_cast<double>(n_seq)));
        }
      }
    }
    c.inputs = Tensor::from_vector(in, Shape{B, T});
    c.targets = Tensor::from_vector(tg, Shape{B, T});
    chunks.push_back(std::move(c));
  }

  // Token log-probabilities of the sampling distribution (logits / temperature), as TRL.
  auto logprobs_of = [&](models::CausalLM& model, const Chunk& c) {
    Tensor logits = model.forward(c.inputs);
    if (opt_.temperature != 1.f) logits = ops::scale(logits, 1.f / opt_.temperature);
    return std::make_pair(ops::token_logprobs(logits, c.targets), logits);
  };
  const std::vector<Tensor> params = policy_.parameters();
  for (int64_t it = 0; it < opt_.iterations; ++it) {
    optimizer.zero_grad();
    double loss = 0, kl = 0, clipped = 0, entropy = 0;
    for (Chunk& c : chunks) {
      if (dp_ && &c == &chunks.back()) dp_->sync_next_backward();  // average as the last backward finishes
      auto [lp, logits] = logprobs_of(policy_, c);
      const std::vector<float> lpv = lp.to_vector<float>();
      if (!c.have_old) {
        // The policy has not moved since it sampled: its current log-probabilities are the old ones.
        c.terms.old_logprobs = lpv;
        c.terms.ref_logprobs.assign(lpv.size(), 0.f);
        if (reference_ && opt_.kl_beta != 0) {
          NoGradGuard no_grad;
          c.terms.ref_logprobs = logprobs_of(*reference_, c).first.to_vector<float>();
        }
        c.have_old = true;
      }
      const Tensor objective = policy_objective(lp.view(Shape{lp.numel()}), c.terms);
      objective.backward();
      loss += objective.item();
      // Diagnostics over completion tokens, weighted like the objective.
      const float* lg = logits.data<float>();
      const int64_t V = logits.size(-1);
      for (size_t i = 0; i < lpv.size(); ++i) {
        const double w = c.terms.weights[i];
        if (w == 0) continue;
        const double diff = static_cast<double>(c.terms.ref_logprobs[i]) - lpv[i];
        if (opt_.kl_beta != 0) kl += w * (std::exp(diff) - diff - 1.0);
        const double ratio = std::exp(static_cast<double>(lpv[i]) - c.terms.old_logprobs[i]), a = c.terms.advantages[i];
        if (ratio * a > std::clamp(ratio, 1.0 - opt_.clip_eps, 1.0 + opt_.clip_eps) * a) clipped += w;
        if (it == 0) {
          const float* row = lg + i * static_cast<size_t>(V);
          const float mx = *std::max_element(row, row + V);
          double z = 0, ez = 0;
          for (int64_t v = 0; v < V; ++v) {
            const double e = std::exp(static_cast<double>(row[v]) - mx);
            z += e;
            ez += e * (row[v] - mx);
          }
          entropy += w * (std::log(z) - ez / z);
        }
      }
    }
    if (dp_) {
      dp_->finish();
      dist::Communicator& comm = dp_->communicator();
      loss = comm.all_reduce_value(loss, dist::ReduceOp::Average);
      kl = comm.all_reduce_value(kl, dist::ReduceOp::Average);
      clipped = comm.all_reduce_value(clipped, dist::ReduceOp::Average);
      entropy = comm.all_reduce_value(entropy, dist::ReduceOp::Average);
    }
    LLM_CHECK(std::isfinite(loss), "the policy loss is ", loss, "; stopping (the last checkpoint is kept as it was)");
    const double norm = optim::grad_norm(params);
    LLM_CHECK(std::isfinite(norm), "the gradient norm is ", norm, "; stopping (the last checkpoint is kept as it was)");
    optimizer.step(lr, optim::clip_scale(norm, opt_.grad_clip));
    const double k = static_cast<double>(opt_.iterations);
    st.loss += loss / k;
    st.kl += kl / k;
    st.clip_fraction += clipped / k;
    st.grad_norm += norm / k;
    if (it == 0) st.entropy = entropy;
  }
  return st;
}

}  // namespace llm::train
