// Helpers shared by the op implementations (not part of the public API).
#pragma once
#include <memory>
#include <vector>

#include "engine/core/autograd.h"
#include "engine/core/tensor.h"

#ifdef LLM_HAVE_CUDA
#include "engine/core/cuda_context.h"
#include "kernels/cuda/runtime.h"
#endif

namespace llm::ops::detail {

// The f32 CPU tensor an op's kernel reads: checks dtype and device, and makes it contiguous.
Tensor cpu_f32(const Tensor& t, const char* op, const char* arg);
// The same for integer index tensors (ids, targets, positions, document ids): i32 on the CPU.
Tensor cpu_i32(const Tensor& t, const char* op, const char* arg);

// The floating-point tensor an op's kernel reads, contiguous: f32 on the CPU; f32 or bf16 on CUDA.
Tensor float_input(const Tensor& t, const char* op, const char* arg);
// The i32 index tensor (ids, targets, positions, document ids) on the tensor's device, contiguous.
Tensor index_input(const Tensor& t, const char* op, const char* arg);

// The mixed-precision rule (ops.h): on CUDA, when the floating inputs mix bf16 and f32, the f32 ones
// are cast to bf16 through ops::cast (differentiable, so their gradients come back f32). The op then
// records its node against the returned tensors. Elsewhere the inputs come back unchanged.
std::vector<Tensor> promote(const std::vector<Tensor>& inputs, const char* op);

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

#ifdef LLM_HAVE_CUDA
inline cudaStream_t stream_of(const Tensor& t) { return cuda_context::stream(t.device()); }
template <class T>
T* ptr(const Tensor& t) {
  return static_cast<T*>(t.raw_data());
}
// The bf16 operand a tensor-core kernel reads: t itself, or a contiguous bf16 copy (no graph node:
// the op computes its gradients in t's dtype itself).
inline Tensor bf16_operand(const Tensor& t) { return t.detach().contiguous().to(DType::BF16); }
// Calls f with a value of the element type of a floating CUDA tensor (float or cuda::bf16).
template <class F>
void with_float_type(DType dtype, F&& f) {
  if (dtype == DType::BF16) f(cuda::bf16{});
  else f(float{});
}
#endif

}  // namespace llm::ops::detail
