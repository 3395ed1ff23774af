#include "optim/zero.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/fused.h"

#ifdef LLM_HAVE_CUDA
#include "engine/core/cuda_context.h"
#include "kernels/cuda/fused.h"
#endif

namespace llm::optim {

namespace {
// Elements [begin, end) of a contiguous tensor, as a flat view of its storage.
Tensor flat_range(const Tensor& t, int64_t begin, int64_t end) { return t.view(Shape{t.numel()}).slice(0, begin, end); }
}  // namespace

ZeroAdamW::ZeroAdamW(std::vector<std::pair<std::string, Tensor>> named_params, AdamWConfig config, dist::Communicator& comm)
    : config_(std::move(config)), comm_(comm) {
  for (auto& [name, p] : named_params) {
    check_dtype(p, DType::F32, "ZeroAdamW", name.c_str());
    LLM_CHECK(p.is_contiguous(), "ZeroAdamW: parameter '", name, "' must be contiguous");
    if (params_.empty()) device_ = p.device();
    LLM_CHECK(p.device() == device_, "ZeroAdamW: parameter '", name, "' is on ", p.device().str(), ", the first on ",
              device_.str());
    params_.push_back({name, p, total_, uses_weight_decay(config_, name, p)});
    total_ += p.numel();
  }
  LLM_CHECK(device_.is_cpu() || comm_.backend() == "nccl", "ZeroAdamW: parameters on ", device_.str(),
            " need the nccl communicator, not ", comm_.backend());
  const int world = comm_.world_size();
  shard_ = (total_ + world - 1) / world;
  shard_begin_ = comm_.rank() * shard_;
  flat_ = Tensor::zeros(Shape{shard_ * world}, DType::F32, device_);
  grad_ = Tensor::zeros(Shape{shard_}, DType::F32, device_);
  m_ = Tensor::zeros(Shape{shard_}, DType::F32, device_);
  v_ = Tensor::zeros(Shape{shard_}, DType::F32, device_);
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
    Tensor dst = flat_range(flat_, p.offset, p.offset + p.param.numel()).view(p.param.shape());
    const Tensor g = p.param.grad();
    if (g.defined()) dst.copy_(g);
    else dst.zero_();
  }
  if (flat_.numel() > total_) flat_range(flat_, total_, flat_.numel()).zero_();  // the padding
  // On the GPU the copies above are queued on the engine's stream, which the collective waits for.
  comm_.reduce_scatter(flat_.raw_data(), grad_.raw_data(), shard_, dist::Elem::F32, dist::ReduceOp::Average);
  return std::sqrt(comm_.all_reduce_value(shard_sum_squares(), dist::ReduceOp::Sum));
}

double ZeroAdamW::shard_sum_squares() const {
  if (device_.is_cpu()) return cpu::sum_squares(shard_, grad_.data<float>());
#ifdef LLM_HAVE_CUDA
  // Per parameter piece, as grad_norm reduces per gradient: one process sums in the same order.
  std::vector<const float*> ptrs;
  std::vector<int64_t> sizes;
  for_each_in_shard([&](const Param&, int64_t b, int64_t e) {
    ptrs.push_back(grad_.data<float>() + (b - shard_begin_));
    sizes.push_back(e - b);
  });
  if (ptrs.empty()) return 0;
  Tensor sumsq = Tensor::empty(Shape{}, DType::F32, device_);
  cuda::sum_of_squares(ptrs.data(), sizes.data(), static_cast<int>(ptrs.size()), sumsq.data<float>(),
                       cuda_context::stream(device_));
  return sumsq.item();
#else
  return 0;
#endif
}

void ZeroAdamW::update_shard(float lr, float grad_scale) {
  if (device_.is_cpu()) {
    for_each_in_shard([&](const Param& p, int64_t b, int64_t e) {
      const int64_t s = b - shard_begin_;
      const cpu::AdamWHyper h{lr, config_.beta1, config_.beta2, config_.eps, p.decay ? config_.weight_decay : 0.f, step_,
                              grad_scale};
      cpu::adamw_update(e - b, p.param.data<float>() + (b - p.offset), grad_.data<float>() + s, m_.data<float>() + s,
                        v_.data<float>() + s, h);
    });
    return;
  }
#ifdef LLM_HAVE_CUDA
  // Every piece of the shard in one launch, as AdamW::step_cuda updates every tensor.
  std::vector<cuda::AdamWTensor> pieces;
  for_each_in_shard([&](const Param& p, int64_t b, int64_t e) {
    const int64_t s = b - shard_begin_;
    pieces.push_back({p.param.data<float>() + (b - p.offset), grad_.data<float>() + s, m_.data<float>() + s,
                      v_.data<float>() + s, nullptr, e - b, p.decay});
  });
  if (pieces.empty()) return;
  const cpu::AdamWHyper h{lr, config_.beta1, config_.beta2, config_.eps, config_.weight_decay, step_, grad_scale};
  cuda::adamw_update(pieces.data(), static_cast<int>(pieces.size()), h, nullptr, cuda_context::stream(device_));
#endif
}

void ZeroAdamW::step(float lr, float grad_scale) {
  ++step_;
  NoGradGuard no_grad;
  update_shard(lr, grad_scale);
  // The gradient is spent: its buffer carries this rank's new parameters to the others.
  for_each_in_shard([&](const Param& p, int64_t b, int64_t e) {
    flat_range(grad_, b - shard_begin_, e - shard_begin_).copy_(flat_range(p.param, b - p.offset, e - p.offset));
  });
  comm_.all_gather(grad_.raw_data(), flat_.raw_data(), shard_, dist::Elem::F32);
  for (Param& p : params_)
    flat_range(p.param, 0, p.param.numel()).copy_(flat_range(flat_, p.offset, p.offset + p.param.numel()));
}

AdamW::State ZeroAdamW::state() const {
  NoGradGuard no_grad;
  AdamW::State st;
  st.step = step_;
  Tensor full = Tensor::empty(Shape{shard_ * comm_.world_size()}, DType::F32, device_);
  for (const Tensor* moment : {&m_, &v_}) {
    comm_.all_gather(moment->raw_data(), full.raw_data(), shard_, dist::Elem::F32);
    auto& out = moment == &m_ ? st.m : st.v;
    for (const Param& p : params_) {
      Tensor t = Tensor::empty(p.param.shape());  // on the host: checkpoints do not depend on the device either
      t.copy_(flat_range(full, p.offset, p.offset + p.param.numel()).view(p.param.shape()));
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
  NoGradGuard no_grad;
  for_each_in_shard([&](const Param& p, int64_t b, int64_t e) {
    const int64_t s = b - shard_begin_;
    flat_range(m_, s, s + (e - b)).copy_(flat_range(m[p.name]->contiguous(), b - p.offset, e - p.offset));
    flat_range(v_, s, s + (e - b)).copy_(flat_range(v[p.name]->contiguous(), b - p.offset, e - p.offset));
  });
  step_ = st.step;
}

}  // namespace llm::optim
