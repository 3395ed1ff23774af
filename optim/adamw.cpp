#include "optim/adamw.h"

#include <cmath>
#include <map>

#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/fused.h"

#ifdef LLM_HAVE_CUDA
#include "engine/core/cuda_context.h"
#include "kernels/cuda/fused.h"
#endif

namespace llm::optim {

bool uses_weight_decay(const AdamWConfig& config, const std::string& name, const Tensor& param) {
  return config.decay_filter ? config.decay_filter(name, param) : param.dim() >= 2;
}

AdamW::AdamW(std::vector<std::pair<std::string, Tensor>> named_params, AdamWConfig config) : config_(std::move(config)) {
  for (auto& [name, p] : named_params) {
    check_dtype(p, DType::F32, "AdamW", name.c_str());
    LLM_CHECK(p.is_contiguous(), "AdamW: parameter '", name, "' must be contiguous");
    LLM_CHECK(slots_.empty() || p.device() == slots_.front().param.device(), "AdamW: parameter '", name, "' is on ",
              p.device().str(), ", the others on ", slots_.front().param.device().str());
    slots_.push_back({name, p, Tensor::zeros(p.shape(), DType::F32, p.device()),
                      Tensor::zeros(p.shape(), DType::F32, p.device()), uses_weight_decay(config_, name, p)});
  }
}

void AdamW::step(float lr, float grad_scale) {
  ++step_;
  NoGradGuard no_grad;
  if (!slots_.empty() && slots_.front().param.device().is_cuda()) {
    step_cuda(lr, grad_scale);
    return;
  }
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

// Every parameter with a gradient in one launch of the fused kernel, moments on the device.
void AdamW::step_cuda(float lr, float grad_scale) {
#ifdef LLM_HAVE_CUDA
  std::vector<cuda::AdamWTensor> tensors;
  std::vector<Tensor> grads;  // keeps contiguous copies alive until the launch
  for (Slot& s : slots_) {
    const Tensor g = s.param.grad();
    if (!g.defined()) continue;
    check_dtype(g, DType::F32, "AdamW", (s.name + ".grad").c_str());
    grads.push_back(g.contiguous());
    tensors.push_back({s.param.data<float>(), grads.back().data<float>(), s.m.data<float>(), s.v.data<float>(), nullptr,
                       s.param.numel(), s.decay});
    s.param.storage()->bump_version();
  }
  if (tensors.empty()) return;
  const cpu::AdamWHyper h{lr, config_.beta1, config_.beta2, config_.eps, config_.weight_decay, step_, grad_scale};
  cuda::adamw_update(tensors.data(), static_cast<int>(tensors.size()), h, nullptr,
                     cuda_context::stream(slots_.front().param.device()));
#else
  (void)lr;
  (void)grad_scale;
#endif
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
  std::vector<Tensor> device_grads;
  for (const Tensor& p : params) {
    const Tensor g = p.grad();
    if (!g.defined()) continue;
    check_dtype(g, DType::F32, "grad_norm", "grad");
    const Tensor gc = g.contiguous();
    if (gc.device().is_cuda()) device_grads.push_back(gc);
    else total += cpu::sum_squares(gc.numel(), gc.data<float>());
  }
  if (!device_grads.empty()) {
#ifdef LLM_HAVE_CUDA
    // One deterministic reduction over every gradient on the device, read back once.
    const Device device = device_grads.front().device();
    std::vector<const float*> ptrs;
    std::vector<int64_t> sizes;
    for (const Tensor& g : device_grads) {
      check_same_device(g, device_grads.front(), "grad_norm");
      ptrs.push_back(g.data<float>());
      sizes.push_back(g.numel());
    }
    Tensor sumsq = Tensor::empty(Shape{}, DType::F32, device);
    cuda::sum_of_squares(ptrs.data(), sizes.data(), static_cast<int>(ptrs.size()), sumsq.data<float>(),
                         cuda_context::stream(device));
    total += sumsq.item();
#endif
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
