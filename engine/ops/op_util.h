// Helpers shared by the op implementations (not part of the public API).
#pragma once
#include <memory>
#include <vector>

#include "engine/core/autograd.h"
#include "engine/core/tensor.h"

namespace llm::ops::detail {

// The f32 CPU tensor an op's kernel reads: checks dtype and device, and makes it contiguous.
Tensor cpu_f32(const Tensor& t, const char* op, const char* arg);
// The same for integer index tensors (ids, targets, positions, document ids): i32 on the CPU.
Tensor cpu_i32(const Tensor& t, const char* op, const char* arg);

// Records a node of type NodeT for the op when any input requires grad: `init` fills the node's
// saved state, then the node is connected to `inputs` and becomes the grad_fn of `outputs`.
template <class NodeT, class Init>
void record_op(const std::vector<const Tensor*>& inputs, const std::vector<Tensor*>& outputs, Init&& init) {
  if (!autograd::needs_grad(inputs)) return;
  auto node = std::make_shared<NodeT>();
  init(*node);
  autograd::record(node, inputs, outputs);
}

// A new tensor sharing x's storage with the given geometry.
Tensor make_view(const Tensor& x, const Shape& shape, const Shape& strides, int64_t offset);

}  // namespace llm::ops::detail
