#include "engine/dist/data_parallel.h"

#include <algorithm>
#include <chrono>

#include "engine/core/autograd.h"

namespace llm::dist {

struct DataParallel::State {
  struct Bucket {
    std::vector<size_t> params;  // indices into State::params
    std::vector<int64_t> offsets;  // each parameter's first element in `flat`
    Tensor flat;                   // the bucket's gradients, contiguous, on the parameters' device; lives
                                   // as long as the bucket, so an all-reduce in flight never sees it reused
    int pending = 0;               // parameters whose gradient is not final yet this step
    std::unique_ptr<Request> request;
  };
  Communicator* comm = nullptr;
  std::vector<Tensor> params;
  std::vector<int> bucket_of;  // per parameter
  std::vector<Bucket> buckets;
  bool armed = false;
  double last_wait_s = 0;
  size_t next_to_start = 0;  // buckets start strictly in index order: the same order on every rank

  void start(Bucket& b) {
    NoGradGuard no_grad;
    for (size_t i = 0; i < b.params.size(); ++i) {
      const Tensor& p = params[b.params[i]];
      Tensor dst = b.flat.slice(0, b.offsets[i], b.offsets[i] + p.numel()).view(p.shape());
      const Tensor g = p.grad();
      if (g.defined()) dst.copy_(g);
      else dst.zero_();
    }
    b.request = comm->all_reduce_async(b.flat.raw_data(), b.flat.numel(), Elem::F32, ReduceOp::Average);
  }

  // Starts every ready bucket that is next in line; lets the ones in flight progress.
  void start_ready() {
    while (next_to_start < buckets.size() && buckets[next_to_start].pending == 0) start(buckets[next_to_start++]);
    for (size_t i = 0; i < next_to_start; ++i)
      if (buckets[i].request) buckets[i].request->test();
  }

  void on_grad_ready(size_t param_index) {
    if (!armed) return;
    Bucket& b = buckets[static_cast<size_t>(bucket_of[param_index])];
    if (b.pending > 0) --b.pending;
    start_ready();
  }
};

DataParallel::DataParallel(Communicator& comm, const std::vector<std::pair<std::string, Tensor>>& named_params,
                           double bucket_mb)
    : comm_(comm), state_(std::make_shared<State>()) {
  LLM_CHECK(bucket_mb > 0, "dist.bucket_mb: must be positive, got ", bucket_mb);
  State& s = *state_;
  s.comm = &comm;
  for (const auto& [name, p] : named_params) {
    LLM_CHECK(p.dtype() == DType::F32, "DataParallel: parameter '", name, "' is ", dtype_name(p.dtype()), ", expected f32");
    LLM_CHECK(p.device() == named_params.front().second.device(), "DataParallel: parameter '", name,
              "' is on another device than the first parameter");
    s.params.push_back(p);
  }
  if (comm.backend() == "single" || s.params.empty()) return;
  const Device device = s.params.front().device();
  LLM_CHECK(device.is_cpu() == (comm.backend() == "mpi"), "DataParallel: the ", comm.backend(),
            " communicator cannot average gradients of parameters on ", device.str());

  // Reverse registration order: the output end of the model finishes its gradients first.
  const int64_t bucket_elems = std::max<int64_t>(1, static_cast<int64_t>(bucket_mb * 1024 * 1024 / sizeof(float)));
  s.bucket_of.assign(s.params.size(), -1);
  int64_t filled = 0;
  for (size_t k = s.params.size(); k-- > 0;) {
    if (s.buckets.empty() || (filled > 0 && filled + s.params[k].numel() > bucket_elems)) {
      s.buckets.emplace_back();
      filled = 0;
    }
    State::Bucket& b = s.buckets.back();
    b.params.push_back(k);
    b.offsets.push_back(filled);
    filled += s.params[k].numel();
    s.bucket_of[k] = static_cast<int>(s.buckets.size() - 1);
  }
  for (State::Bucket& b : s.buckets) {
    int64_t n = 0;
    for (size_t i : b.params) n += s.params[i].numel();
    b.flat = Tensor::empty({n}, DType::F32, device);
  }
  const std::weak_ptr<State> weak = state_;
  for (size_t k = 0; k < s.params.size(); ++k)
    s.params[k].register_grad_ready_hook([weak, k](const Tensor&) {
      if (auto st = weak.lock()) st->on_grad_ready(k);
    });
}

DataParallel::~DataParallel() = default;

int DataParallel::num_buckets() const { return static_cast<int>(state_->buckets.size()); }

double DataParallel::last_wait_seconds() const { return state_->last_wait_s; }

void DataParallel::sync_next_backward() {
  State& s = *state_;
  if (s.buckets.empty()) return;
  LLM_CHECK(s.next_to_start == 0, "DataParallel: sync_next_backward() twice without finish()");
  for (State::Bucket& b : s.buckets) b.pending = static_cast<int>(b.params.size());
  s.armed = true;
}

void DataParallel::finish() {
  State& s = *state_;
  if (s.buckets.empty()) return;
  LLM_CHECK(s.armed, "DataParallel: finish() without sync_next_backward() before the last backward");
  s.armed = false;
  // Parameters that got no gradient this step never fired their hook: their buckets start now.
  for (State::Bucket& b : s.buckets) b.pending = 0;
  s.start_ready();
  NoGradGuard no_grad;
  s.last_wait_s = 0;
  for (State::Bucket& b : s.buckets) {
    const auto t0 = std::chrono::steady_clock::now();
    b.request->wait();
    s.last_wait_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    b.request.reset();
    for (size_t i = 0; i < b.params.size(); ++i) {
      Tensor& p = s.params[b.params[i]];
      const Tensor avg = b.flat.slice(0, b.offsets[i], b.offsets[i] + p.numel()).view(p.shape());
      Tensor g = p.grad();
      if (g.defined()) g.copy_(avg);
      else p.set_grad(avg.clone());
    }
  }
  s.next_to_start = 0;
}

void broadcast_parameters(Communicator& comm, const std::vector<Tensor>& params, int root) {
  if (comm.world_size() == 1) return;
  NoGradGuard no_grad;
  for (const Tensor& p : params) {
    LLM_CHECK(p.is_contiguous(), "broadcast_parameters: parameters must be contiguous");
    comm.broadcast(p.raw_data(), p.numel(), elem_of(p.dtype()), root);
    p.storage()->bump_version();
  }
}

}  // namespace llm::dist
