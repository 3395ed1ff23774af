#include "engine/core/autograd.h"

#include <atomic>
#include <queue>
#include <unordered_map>

#include "engine/core/profile.h"
#include "kernels/cpu/elementwise.h"

namespace llm::autograd {

namespace {
std::atomic<uint64_t> next_sequence_nr{0};

const char* kFreedMessage =
    "backward through a graph a second time, or after its saved tensors were freed: pass "
    "retain_graph=true to the first backward if you need to backward twice";

// a + b for gradients (a fresh tensor: neither input may be written, other nodes may hold them).
Tensor sum_gradients(const Tensor& a, const Tensor& b) {
  LLM_CHECK(a.shape() == b.shape(), "internal: gradient shapes differ: ", a.shape().str(), " vs ", b.shape().str());
  check_same_device(a, b, "gradient accumulation");
  if (a.device().is_cuda()) {  // f32 or bf16 (add_ checks), on the device's stream
    Tensor out = a.clone();
    out.add_(b);
    return out;
  }
  Tensor ac = a.contiguous(), bc = b.contiguous();
  Tensor out = Tensor::empty(a.shape(), a.dtype(), a.device());
  cpu::add(out.numel(), ac.data<float>(), bc.data<float>(), out.data<float>());
  return out;
}

// A node's op for the profile: "Linear fwd" for LinearBackward's forward, "Linear bwd" for the node.
void mark_op(const Node& node, const char* direction) {
  if (!profile::running()) return;
  std::string name = node.name();
  const std::string suffix = "Backward";
  if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
    name.resize(name.size() - suffix.size());
  profile::mark(name + direction);
}

// True when nothing else refers to t or its memory, so it can become .grad without a copy.
bool exclusively_owned(const Tensor& t) {
  return t.impl_ptr().use_count() == 1 && t.is_contiguous() && t.storage().use_count() == 1 && t.offset() == 0;
}
}  // namespace

SavedTensor::SavedTensor(const Tensor& t) : saved_(t.defined()) {
  if (saved_) {
    tensor_ = t.detach();
    version_ = t.storage()->version();
  }
}

Tensor SavedTensor::get(const Node& owner) const {
  LLM_CHECK(!released_, owner.name(), ": ", kFreedMessage);
  LLM_CHECK(saved_, "internal: ", owner.name(), " read a tensor it never saved");
  LLM_CHECK(tensor_.storage()->version() == version_, owner.name(),
            ": a tensor saved for backward was modified in place after it was saved (version ",
            tensor_.storage()->version(), ", expected ", version_, ")");
  return tensor_;
}

Node::Node() : sequence_nr(next_sequence_nr++) {}

void Node::release_saved() {
  const std::vector<SavedTensor*> saved_tensors = saved();
  for (SavedTensor* s : saved_tensors) s->release();
  released = !saved_tensors.empty();  // a node that saved nothing can run again
}

AccumulateGrad::AccumulateGrad(std::shared_ptr<TensorImpl> leaf) : leaf_(std::move(leaf)) {
  sequence_nr = UINT64_MAX;  // a leaf's gradient is complete as soon as it is ready: run it first
}

std::vector<Tensor> AccumulateGrad::apply(std::vector<Tensor> grad_outputs) {
  Tensor& g = grad_outputs[0];
  if (!g.defined()) return {};
  if (!leaf_->grad) {
    // Backward runs without grad mode, so g has no history; take it over when nothing else uses it.
    leaf_->grad = exclusively_owned(g) ? g.impl_ptr() : g.clone().impl_ptr();
  } else {
    Tensor(leaf_->grad).add_(g);
  }
  const Tensor leaf(leaf_);
  for (const GradHook& hook : leaf_->grad_ready_hooks) hook(leaf);
  return {};
}

Edge gradient_edge(const Tensor& t) {
  if (!t.defined() || !t.requires_grad()) return {};
  TensorImpl* impl = t.unsafe_impl();
  if (impl->grad_fn) return {impl->grad_fn, impl->output_nr};
  std::shared_ptr<AccumulateGrad> acc = impl->grad_accumulator.lock();
  if (!acc) {
    // The accumulator owns the leaf; the leaf remembers it weakly (no reference cycle), so every use
    // of the leaf in one graph shares one accumulator and its hooks see the complete gradient.
    acc = std::make_shared<AccumulateGrad>(t.impl_ptr());
    impl->grad_accumulator = acc;
  }
  return {acc, 0};
}

bool needs_grad(const std::vector<const Tensor*>& inputs) {
  if (!grad_enabled()) return false;
  for (const Tensor* t : inputs)
    if (t && t->defined() && t->requires_grad()) return true;
  return false;
}

void record(const std::shared_ptr<Node>& node, const std::vector<const Tensor*>& inputs,
            const std::vector<Tensor*>& outputs) {
  node->next_edges.clear();
  for (const Tensor* t : inputs) node->next_edges.push_back(t ? gradient_edge(*t) : Edge{});
  node->num_outputs = static_cast<int>(outputs.size());
  for (size_t i = 0; i < outputs.size(); ++i) {
    TensorImpl* impl = outputs[i]->unsafe_impl();
    impl->requires_grad = true;
    impl->grad_fn = node;
    impl->output_nr = static_cast<int>(i);
  }
  mark_op(*node, " fwd");
}

void run_backward(const Tensor& root, const Tensor& gradient, bool retain_graph) {
  check_defined(root, "backward", "self");
  LLM_CHECK(root.requires_grad(), "backward: the tensor does not require grad and has no grad_fn "
            "(no input of the computation had requires_grad set, or it ran under NoGradGuard)");
  Tensor seed = gradient;
  if (!seed.defined()) {
    LLM_CHECK(root.numel() == 1, "backward: gradient can be implied only for a scalar output; this one has shape ",
              root.shape().str(), ", so pass a gradient of that shape");
    seed = Tensor::ones(root.shape(), root.dtype(), root.device());
  } else {
    check_shape(seed, root.shape(), "backward", "gradient");
    check_same_device(seed, root, "backward");
  }
  const Edge root_edge = gradient_edge(root);

  // Count, for every node reachable from the root, how many edges lead into it.
  std::unordered_map<Node*, int> dependencies;
  {
    std::vector<Node*> stack{root_edge.fn.get()};
    dependencies[root_edge.fn.get()] = 0;
    while (!stack.empty()) {
      Node* n = stack.back();
      stack.pop_back();
      for (const Edge& e : n->next_edges) {
        if (!e.fn) continue;
        auto [it, inserted] = dependencies.try_emplace(e.fn.get(), 0);
        it->second++;
        if (inserted) stack.push_back(e.fn.get());
      }
    }
  }

  NoGradGuard no_grad;  // backward computations are not recorded (no higher-order gradients)
  std::unordered_map<Node*, std::vector<Tensor>> pending;  // gradients received so far, per node
  auto deliver = [&](const Edge& e, Tensor g) {
    std::vector<Tensor>& slots = pending[e.fn.get()];
    if (slots.empty()) slots.resize(e.fn->num_outputs);
    Tensor& slot = slots[e.input_nr];
    slot = slot.defined() ? sum_gradients(slot, g) : std::move(g);
  };
  auto later_first = [](const std::shared_ptr<Node>& a, const std::shared_ptr<Node>& b) {
    return a->sequence_nr < b->sequence_nr;
  };
  std::priority_queue<std::shared_ptr<Node>, std::vector<std::shared_ptr<Node>>, decltype(later_first)> ready(later_first);

  deliver(root_edge, seed);
  ready.push(root_edge.fn);
  while (!ready.empty()) {
    std::shared_ptr<Node> node = ready.top();
    ready.pop();
    LLM_CHECK(!node->released, node->name(), ": ", kFreedMessage);
    std::vector<Tensor> grads_in;
    if (auto it = pending.find(node.get()); it != pending.end()) {
      grads_in = std::move(it->second);
      pending.erase(it);
    }
    bool any_gradient = false;
    for (const Tensor& g : grads_in) any_gradient |= g.defined();
    // A node reached only through inputs that produced no gradient still runs its bookkeeping, so
    // the nodes below it see their dependency counts fall to zero.
    std::vector<Tensor> grads_out;
    if (any_gradient) {
      grads_out = node->apply(std::move(grads_in));
      mark_op(*node, " bwd");
      LLM_CHECK(grads_out.empty() || grads_out.size() == node->next_edges.size(), "internal: ", node->name(),
                " returned ", grads_out.size(), " gradients for ", node->next_edges.size(), " inputs");
    }
    if (!retain_graph) node->release_saved();
    for (size_t i = 0; i < node->next_edges.size(); ++i) {
      const Edge& e = node->next_edges[i];
      if (!e.fn) continue;
      if (i < grads_out.size() && grads_out[i].defined()) deliver(e, std::move(grads_out[i]));
      if (--dependencies[e.fn.get()] == 0) ready.push(e.fn);
    }
  }
}

}  // namespace llm::autograd
