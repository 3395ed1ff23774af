// Tensor: a shape, strides and dtype over shared storage on a device, plus the autograd fields.
// Copies of a Tensor are handles to the same tensor (like torch.Tensor); views share storage.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/core/allocator.h"
#include "engine/core/dtype.h"
#include "engine/core/error.h"
#include "engine/core/shape.h"

namespace llm {

class Tensor;
class Generator;
namespace autograd {
class Node;
class AccumulateGrad;
}  // namespace autograd

using GradHook = std::function<void(const Tensor& param)>;

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  int64_t offset = 0;  // in elements
  Shape shape;
  Shape strides;
  DType dtype = DType::F32;

  // autograd
  bool requires_grad = false;
  std::shared_ptr<TensorImpl> grad;
  std::shared_ptr<autograd::Node> grad_fn;         // null for leaves
  int output_nr = 0;                                // which output of grad_fn this is
  std::weak_ptr<autograd::AccumulateGrad> grad_accumulator;  // leaves: shared by every use in a graph
  std::vector<GradHook> grad_ready_hooks;           // leaves: run when .grad is final in a backward
  std::string name;                                 // optional, for messages
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // ---- creation ---------------------------------------------------------------------------
  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor ones(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor full(const Shape& shape, double value, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor scalar(float value) { return full(Shape{}, value); }
  // Copies `values` (numel(shape) of them) into a new CPU tensor of the matching dtype.
  template <typename T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape);
  // Normal(mean, std) or uniform [lo, hi) f32 values from a seeded generator.
  static Tensor randn(const Shape& shape, Generator& gen, float mean = 0.f, float std = 1.f);
  static Tensor rand(const Shape& shape, Generator& gen, float lo = 0.f, float hi = 1.f);
  // Wraps memory owned elsewhere (e.g. a memory-mapped file); keep_alive is released with the tensor.
  static Tensor from_blob(void* data, const Shape& shape, DType dtype, Device device, std::shared_ptr<void> keep_alive);

  // ---- properties ---------------------------------------------------------------------------
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl().shape; }
  const Shape& strides() const { return impl().strides; }
  int dim() const { return shape().ndim(); }
  int64_t size(int d) const { return shape()[shape().wrap_dim(d)]; }
  int64_t stride(int d) const { return strides()[shape().wrap_dim(d)]; }
  int64_t numel() const { return shape().numel(); }
  DType dtype() const { return impl().dtype; }
  Device device() const { return impl().storage->device(); }
  int64_t offset() const { return impl().offset; }
  bool is_contiguous() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype()); }
  const std::shared_ptr<Storage>& storage() const { return impl().storage; }
  TensorImpl* unsafe_impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool same(const Tensor& o) const { return impl_ == o.impl_; }
  const std::string& name() const { return impl().name; }
  Tensor& set_name(std::string name);
  std::string str() const;  // "f32[2, 3] cpu" (+ name)

  // Pointer to the first element; T must match the dtype (uint16_t for u16, bf16 and f16).
  template <typename T> T* data() const;
  void* raw_data() const;
  // The single value of a one-element tensor, as float (CPU or CUDA).
  float item() const;
  // All elements in logical (row-major) order, converted to T; copies from CUDA if needed.
  template <typename T> std::vector<T> to_vector() const;

  // ---- views (share storage) and copies ----------------------------------------------------
  Tensor view(const Shape& shape) const;      // contiguous only; one dimension may be -1
  Tensor reshape(const Shape& shape) const;   // view when possible, else a copy
  Tensor transpose(int d0, int d1) const;
  Tensor permute(const std::vector<int>& dims) const;
  Tensor slice(int dim, int64_t start, int64_t end) const;  // [start, end) along dim
  Tensor select(int dim, int64_t index) const;              // drops dim
  Tensor unsqueeze(int dim) const;
  Tensor squeeze(int dim) const;
  Tensor contiguous() const;                  // itself when already contiguous
  Tensor clone() const;                       // always a copy, contiguous, in the graph
  Tensor detach() const;                      // same storage, out of the graph
  Tensor to(DType dtype) const;
  Tensor to(Device device) const;

  // ---- in-place (for optimizers and initialization; refused on tensors autograd tracks) ----
  Tensor& fill_(double value);
  Tensor& copy_(const Tensor& src);               // same shape; converts dtype, crosses devices
  Tensor& add_(const Tensor& other, float alpha = 1.f);  // this += alpha * other
  Tensor& mul_(float factor);
  Tensor& zero_() { return fill_(0.0); }

  // ---- autograd ----------------------------------------------------------------------------
  bool requires_grad() const { return impl().requires_grad; }
  Tensor& set_requires_grad(bool on = true);
  bool is_leaf() const { return impl().grad_fn == nullptr; }
  const std::shared_ptr<autograd::Node>& grad_fn() const { return impl().grad_fn; }
  Tensor grad() const { return impl().grad ? Tensor(impl().grad) : Tensor(); }
  void set_grad(const Tensor& g);
  void zero_grad() const { impl().grad.reset(); }
  // Reverse-mode differentiation from this tensor. A scalar gets gradient 1; anything else needs
  // `gradient` of the same shape. retain_graph keeps saved activations for a second backward.
  void backward(const Tensor& gradient = Tensor(), bool retain_graph = false) const;
  // Called once per backward when this leaf's gradient is complete (data parallelism starts the
  // all-reduce of that gradient from here).
  void register_grad_ready_hook(GradHook hook);

 private:
  TensorImpl& impl() const;
  std::shared_ptr<TensorImpl> impl_;
};

// A seeded random generator (xoshiro256**), explicit so runs are reproducible.
class Generator {
 public:
  explicit Generator(uint64_t seed = 0) { manual_seed(seed); }
  void manual_seed(uint64_t seed);
  uint64_t next_u64();
  float uniform();  // [0, 1)
  float normal();   // standard normal (Box-Muller, both values used)
  // The full state, for checkpoints.
  std::vector<uint64_t> state() const;
  void set_state(const std::vector<uint64_t>& state);

 private:
  uint64_t s_[4]{};
  bool has_spare_ = false;
  float spare_ = 0.f;
};

// Gradient mode: autograd records ops only while enabled (per thread).
bool grad_enabled();
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

// Copies src into dst element by element: same shape, dtype and device, any strides.
void copy_strided(const Tensor& src, const Tensor& dst);

// Checks shared by ops; each throws llm::Error naming `op` and the offending tensor.
void check_defined(const Tensor& t, const char* op, const char* arg);
void check_dtype(const Tensor& t, DType dtype, const char* op, const char* arg);
void check_same_device(const Tensor& a, const Tensor& b, const char* op);
void check_shape(const Tensor& t, const Shape& shape, const char* op, const char* arg);

}  // namespace llm
