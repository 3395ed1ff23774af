// Reverse-mode automatic differentiation: the graph nodes ops record, and the engine that walks them.
//
// Each differentiable op records a Node holding what its backward needs (saved tensors, sizes) and
// one Edge per input pointing at the node that produced that input (or at the AccumulateGrad of a
// leaf). backward() runs the nodes in reverse creation order once all their gradients have arrived.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/core/tensor.h"

namespace llm::autograd {

class Node;

struct Edge {
  std::shared_ptr<Node> fn;  // null: this input needs no gradient
  int input_nr = 0;          // which gradient slot of fn receives it
};

// A tensor kept for backward. It is freed after backward has used it (unless retain_graph), and it
// refuses to be read once freed or after the tensor was modified in place.
class SavedTensor {
 public:
  SavedTensor() = default;
  explicit SavedTensor(const Tensor& t);
  // `owner` names the node in error messages.
  Tensor get(const Node& owner) const;
  bool defined() const { return saved_; }
  void release() { tensor_ = Tensor(); released_ = true; }

 private:
  Tensor tensor_;  // detached: shares storage, no grad_fn (so saving an output makes no cycle)
  uint64_t version_ = 0;
  bool saved_ = false;
  bool released_ = false;
};

class Node : public std::enable_shared_from_this<Node> {
 public:
  Node();
  virtual ~Node() = default;
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  // Gradients with respect to each input, given those with respect to each output (an output nobody
  // used gets an undefined tensor). Return an undefined tensor for inputs with no gradient.
  virtual std::vector<Tensor> apply(std::vector<Tensor> grad_outputs) = 0;
  virtual std::string name() const = 0;
  // Frees what was saved for backward. Nodes that save SavedTensors list them in saved().
  void release_saved();
  virtual std::vector<SavedTensor*> saved() { return {}; }

  std::vector<Edge> next_edges;  // one per input
  int num_outputs = 1;
  uint64_t sequence_nr;          // creation order: later nodes run first in backward
  bool released = false;
};

// Gradient sink of a leaf tensor: adds into .grad, then runs the leaf's grad-ready hooks.
class AccumulateGrad final : public Node {
 public:
  explicit AccumulateGrad(std::shared_ptr<TensorImpl> leaf);
  std::vector<Tensor> apply(std::vector<Tensor> grad_outputs) override;
  std::string name() const override { return "AccumulateGrad"; }

 private:
  std::shared_ptr<TensorImpl> leaf_;
};

// The edge a gradient for `t` should flow along (empty when t does not require grad).
Edge gradient_edge(const Tensor& t);

// True when grad mode is on and any of `inputs` requires grad: the op must record a node.
bool needs_grad(const std::vector<const Tensor*>& inputs);

// Connects `node` to `inputs` and makes it the grad_fn of `outputs` (which then require grad).
void record(const std::shared_ptr<Node>& node, const std::vector<const Tensor*>& inputs,
            const std::vector<Tensor*>& outputs);

void run_backward(const Tensor& root, const Tensor& gradient, bool retain_graph);

}  // namespace llm::autograd
