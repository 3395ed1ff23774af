#include "optim/adamw.h"

#include <cmath>
#include <map>

#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/fused.h"

namespace llm::optim {

bool uses_weight_decay(const AdamWConfig& config, const std::string& name, const Tensor& param) {
  return config.decay_filter ? config.decay_filter(name, param) : param.dim() >= 2;
}

AdamW::AdamW(std::vector<std::pair<std::string, Tensor>> named_params, AdamWConfig config) : config_(std::move(config)) {
  for (auto& [name, p] : named_params) {
    check_dtype(p, DType::F32, "AdamW", name.c_str());
    LLM_CHECK(p.is_contiguous() && p.device().is_cpu(), "AdamW: parameter '", name, "' must be a contiguous CPU tensor");
    slots_.push_back({name, p, Tensor::zeros(p.shape()), Tensor::zeros(p.shape()), uses_weight_decay(config_, name, p)});
  }
}

void AdamW::step(float lr, float grad_scale) {
  ++step_;
  NoGradGuard no_grad;
  for (Slot& s : slots_) {
    const Tensor g = s.param.grad();
    if (!g.defined()) continue;
    const Tensor gc = g.contiguous();
    const cpu::AdamWHyper h{lr, config_.beta1, config_.beta2, config_.eps, s.decay ? config_.weight_decay : 0.f, step_,
                            grad_scale};
    cpu::adamw_update(s.param.numel(), s.param.data<float>(), gc.data<float>(), s.m.data<float>(), s.v.data<float>(), h);
    s.param.storage()->bump_version();
  }
}

void AdamW::zero_grad() {
  for (Slot& s : slots_) s.param.zero_grad();
}

std::vector<std::string> AdamW::decayed() const {
  std::vector<std::string> out;
  for (const Slot& s : slots_)
    if (s.decay) out.push_back(s.name);
  return out;
}

AdamW::State AdamW::state() const {
  State st;
  st.step = step_;
  for (const Slot& s : slots_) {
    st.m.emplace_back(s.name, s.m);
    st.v.emplace_back(s.name, s.v);
  }
  return st;
}

void AdamW::set_state(const State& st) {
  // Matched by name: a checkpoint may store the tensors in any order.
  std::map<std::string, const Tensor*> m, v;
  for (const auto& [name, t] : st.m) m[name] = &t;
  for (const auto& [name, t] : st.v) v[name] = &t;
  LLM_CHECK(m.size() == slots_.size() && v.size() == slots_.size(), "optimizer state has ", m.size(),
            " tensors, the model has ", slots_.size(), " parameters");
  NoGradGuard no_grad;
  for (Slot& s : slots_) {
    auto mi = m.find(s.name), vi = v.find(s.name);
    LLM_CHECK(mi != m.end() && vi != v.end(), "optimizer state: no moments for parameter '", s.name, "'");
    check_shape(*mi->second, s.param.shape(), "optimizer state", s.name.c_str());
    check_shape(*vi->second, s.param.shape(), "optimizer state", s.name.c_str());
    s.m.copy_(*mi->second);
    s.v.copy_(*vi->second);
  }
  step_ = st.step;
}

double grad_norm(const std::vector<Tensor>& params) {
  double total = 0;
  for (const Tensor& p : params) {
    const Tensor g = p.grad();
    if (!g.defined()) continue;
    const Tensor gc = g.contiguous();
    total += cpu::sum_squares(gc.numel(), gc.data<float>());
  }
  return std::sqrt(total);
}

float clip_scale(double norm, double max_norm) {
  if (max_norm <= 0 || !(norm > max_norm)) return 1.f;
  return static_cast<float>(max_norm / (norm + 1e-6));
}

float Schedule::at(int64_t step) const {
  if (warmup_steps > 0 && step < warmup_steps) return lr * static_cast<float>(step + 1) / static_cast<float>(warmup_steps);
  if (kind == Kind::Constant || total_steps <= warmup_steps) return lr;
  const double progress = std::min(1.0, static_cast<double>(step - warmup_steps) / static_cast<double>(total_steps - warmup_steps));
  const double factor = kind == Kind::Cosine ? 0.5 * (1.0 + std::cos(M_PI * progress)) : 1.0 - progress;
  return static_cast<float>(min_lr + (lr - min_lr) * factor);
}

Schedule::Kind Schedule::parse(const std::string& name) {
  if (name == "constant") return Kind::Constant;
  if (name == "cosine") return Kind::Cosine;
  if (name == "linear") return Kind::Linear;
  throw Error("unknown learning-rate schedule '" + name + "' (expected constant, cosine or linear)");
}

}  // namespace llm::optim
