#include "optim/zero.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>

#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/fused.h"

namespace llm::optim {

ZeroAdamW::ZeroAdamW(std::vector<std::pair<std::string, Tensor>> named_params, AdamWConfig config, dist::Communicator& comm)
    : config_(std::move(config)), comm_(comm) {
  for (auto& [name, p] : named_params) {
    check_dtype(p, DType::F32, "ZeroAdamW", name.c_str());
    LLM_CHECK(p.is_contiguous() && p.device().is_cpu(), "ZeroAdamW: parameter '", name, "' must be a contiguous CPU tensor");
    params_.push_back({name, p, total_, uses_weight_decay(config_, name, p)});
    total_ += p.numel();
  }
  const int world = comm_.world_size();
  shard_ = (total_ + world - 1) / world;
  shard_begin_ = comm_.rank() * shard_;
  flat_.assign(static_cast<size_t>(shard_ * world), 0.f);
  grad_.assign(static_cast<size_t>(shard_), 0.f);
  m_.assign(static_cast<size_t>(shard_), 0.f);
  v_.assign(static_cast<size_t>(shard_), 0.f);
}

template <typename Fn>
void ZeroAdamW::for_each_in_shard(Fn fn) const {
  const int64_t end = shard_begin_ + shard_;
  for (const Param& p : params_) {
    const int64_t b = std::max(p.offset, shard_begin_), e = std::min(p.offset + p.param.numel(), end);
    if (b < e) fn(p, b, e);
  }
}

void ZeroAdamW::zero_grad() {
  for (Param& p : params_) p.param.zero_grad();
}

double ZeroAdamW::sync_gradients() {
  NoGradGuard no_grad;
  for (const Param& p : params_) {
    float* dst = flat_.data() + p.offset;
    const Tensor g = p.param.grad();
    if (!g.defined()) {
      std::fill(dst, dst + p.param.numel(), 0.f);
      continue;
    }
    const Tensor gc = g.contiguous();
    std::memcpy(dst, gc.data<float>(), sizeof(float) * static_cast<size_t>(gc.numel()));
  }
  std::fill(flat_.begin() + total_, flat_.end(), 0.f);  // the padding
  comm_.reduce_scatter(flat_.data(), grad_.data(), shard_, dist::Elem::F32, dist::ReduceOp::Average);
  const double local = cpu::sum_squares(shard_, grad_.data());
  return std::sqrt(comm_.all_reduce_value(local, dist::ReduceOp::Sum));
}

void ZeroAdamW::step(float lr, float grad_scale) {
  ++step_;
  NoGradGuard no_grad;
  float* send = grad_.data();  // the gradient is spent: its buffer carries this rank's new parameters
  for_each_in_shard([&](const Param& p, int64_t b, int64_t e) {
    const int64_t s = b - shard_begin_;
    float* w = p.param.data<float>() + (b - p.offset);
    const cpu::AdamWHyper h{lr, config_.beta1, config_.beta2, config_.eps, p.decay ? config_.weight_decay : 0.f, step_,
                            grad_scale};
    cpu::adamw_update(e - b, w, grad_.data() + s, m_.data() + s, v_.data() + s, h);
    std::memcpy(send + s, w, sizeof(float) * static_cast<size_t>(e - b));
  });
  comm_.all_gather(send, flat_.data(), shard_, dist::Elem::F32);
  for (Param& p : params_) {
    std::memcpy(p.param.data<float>(), flat_.data() + p.offset, sizeof(float) * static_cast<size_t>(p.param.numel()));
    p.param.storage()->bump_version();
  }
}

AdamW::State ZeroAdamW::state() const {
  AdamW::State st;
  st.step = step_;
  std::vector<float> full(static_cast<size_t>(shard_ * comm_.world_size()));
  for (const std::vector<float>* moment : {&m_, &v_}) {
    comm_.all_gather(moment->data(), full.data(), shard_, dist::Elem::F32);
    auto& out = moment == &m_ ? st.m : st.v;
    for (const Param& p : params_) {
      Tensor t = Tensor::empty(p.param.shape());
      std::memcpy(t.data<float>(), full.data() + p.offset, sizeof(float) * static_cast<size_t>(p.param.numel()));
      out.emplace_back(p.name, t);
    }
  }
  return st;
}

void ZeroAdamW::set_state(const AdamW::State& st) {
  std::map<std::string, const Tensor*> m, v;
  for (const auto& [name, t] : st.m) m[name] = &t;
  for (const auto& [name, t] : st.v) v[name] = &t;
  LLM_CHECK(m.size() == params_.size() && v.size() == params_.size(), "optimizer state has ", m.size(),
            " tensors, the model has ", params_.size(), " parameters");
  for (const Param& p : params_) {
    auto mi = m.find(p.name), vi = v.find(p.name);
    LLM_CHECK(mi != m.end() && vi != v.end(), "optimizer state: no moments for parameter '", p.name, "'");
    check_shape(*mi->second, p.param.shape(), "optimizer state", p.name.c_str());
    check_shape(*vi->second, p.param.shape(), "optimizer state", p.name.c_str());
  }
  for_each_in_shard([&](const Param& p, int64_t b, int64_t e) {
    const Tensor mc = m[p.name]->contiguous(), vc = v[p.name]->contiguous();
    const size_t bytes = sizeof(float) * static_cast<size_t>(e - b);
    std::memcpy(m_.data() + (b - shard_begin_), mc.data<float>() + (b - p.offset), bytes);
    std::memcpy(v_.data() + (b - shard_begin_), vc.data<float>() + (b - p.offset), bytes);
  });
  step_ = st.step;
}

}  // namespace llm::optim
