// Views and copies: view, reshape, transpose, permute, slice, select, (un)squeeze, clone, cat.
#include "engine/ops/op_util.h"
#include "engine/ops/ops.h"

namespace llm::ops {

using autograd::Node;
using detail::make_view;
using detail::record_op;

namespace detail {
Tensor make_view(const Tensor& x, const Shape& shape, const Shape& strides, int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = x.storage();
  impl->offset = offset;
  impl->shape = shape;
  impl->strides = strides;
  impl->dtype = x.dtype();
  return Tensor(std::move(impl));
}

Tensor cpu_f32(const Tensor& t, const char* op, const char* arg) {
  check_dtype(t, DType::F32, op, arg);
  LLM_CHECK(t.device().is_cpu(), op, ": argument '", arg, "' is on ", t.device().str(),
            ", and this op has no CUDA kernel in this build (move it to the CPU)");
  return t.contiguous();
}

Tensor float_input(const Tensor& t, const char* op, const char* arg) {
  check_defined(t, op, arg);
  if (t.device().is_cpu()) return cpu_f32(t, op, arg);
  LLM_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::BF16, op, ": argument '", arg,
            "' must be f32 or bf16 on ", t.device().str(), ", got ", t.str());
  return t.contiguous();
}

Tensor index_input(const Tensor& t, const char* op, const char* arg) {
  check_dtype(t, DType::I32, op, arg);
  return t.contiguous();
}

std::vector<Tensor> promote(const std::vector<Tensor>& inputs, const char* op) {
  bool any_bf16 = false, any_cuda = false;
  for (const Tensor& t : inputs) {
    if (!t.defined()) continue;
    any_bf16 |= t.dtype() == DType::BF16;
    any_cuda |= t.device().is_cuda();
  }
  for (const Tensor& t : inputs)
    if (t.defined()) check_same_device(t, inputs[0].defined() ? inputs[0] : t, op);
  if (!any_cuda || !any_bf16) return inputs;
  std::vector<Tensor> out;
  for (const Tensor& t : inputs) out.push_back(t.defined() && t.dtype() == DType::F32 ? cast(t, DType::BF16) : t);
  return out;
}

Tensor cpu_i32(const Tensor& t, const char* op, const char* arg) {
  check_dtype(t, DType::I32, op, arg);
  LLM_CHECK(t.device().is_cpu(), op, ": argument '", arg, "' is on ", t.device().str(),
            ", and this op has no CUDA kernel in this build (move it to the CPU)");
  return t.contiguous();
}
}  // namespace detail

namespace {
// Resolves a single -1 in `shape` against numel.
Shape infer_shape(const Shape& shape, int64_t numel, const char* op, const Shape& from) {
  Shape out = shape;
  int infer = -1;
  int64_t known = 1;
  for (int i = 0; i < shape.ndim(); ++i) {
    if (shape[i] == -1) {
      LLM_CHECK(infer < 0, op, ": only one dimension can be -1, got ", shape.str());
      infer = i;
    } else {
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    LLM_CHECK(known > 0 && numel % known == 0, op, ": cannot infer -1 in ", shape.str(), " for ", numel, " elements");
    out[infer] = numel / known;
  }
  LLM_CHECK(out.numel() == numel, op, ": shape ", shape.str(), " has ", out.numel(), " elements, but the tensor ",
            from.str(), " has ", numel);
  return out;
}

// Gradient of any op that only changed the geometry: reshape it back.
struct ReshapeBackward : Node {
  Shape input_shape;
  std::vector<Tensor> apply(std::vector<Tensor> g) override { return {g[0].reshape(input_shape)}; }
  std::string name() const override { return "ReshapeBackward"; }
};
}  // namespace

// Shape::Shape rejects negative sizes, so -1 travels through a vector and is resolved here.
Tensor view(const Tensor& x, const Shape& shape) {
  check_defined(x, "view", "x");
  LLM_CHECK(x.is_contiguous(), "view: the tensor ", x.str(), " is not contiguous; use reshape()");
  const Shape out_shape = infer_shape(shape, x.numel(), "view", x.shape());
  Tensor out = make_view(x, out_shape, out_shape.contiguous_strides(), x.offset());
  record_op<ReshapeBackward>({&x}, {&out}, [&](ReshapeBackward& n) { n.input_shape = x.shape(); });
  return out;
}

Tensor reshape(const Tensor& x, const Shape& shape) {
  check_defined(x, "reshape", "x");
  return x.is_contiguous() ? view(x, shape) : view(clone(x), shape);
}

namespace {
struct PermuteBackward : Node {
  std::vector<int> inverse;
  std::vector<Tensor> apply(std::vector<Tensor> g) override { return {permute(g[0], inverse)}; }
  std::string name() const override { return "PermuteBackward"; }
};
}  // namespace

Tensor permute(const Tensor& x, const std::vector<int>& dims) {
  check_defined(x, "permute", "x");
  LLM_CHECK(static_cast<int>(dims.size()) == x.dim(), "permute: ", dims.size(), " dimensions given for ", x.str());
  Shape shape = x.shape(), strides = x.strides();
  std::vector<int> inverse(dims.size(), -1);
  for (int i = 0; i < x.dim(); ++i) {
    const int d = x.shape().wrap_dim(dims[i]);
    LLM_CHECK(inverse[d] < 0, "permute: dimension ", d, " repeated");
    inverse[d] = i;
    shape[i] = x.shape()[d];
    strides[i] = x.strides()[d];
  }
  Tensor out = make_view(x, shape, strides, x.offset());
  record_op<PermuteBackward>({&x}, {&out}, [&](PermuteBackward& n) { n.inverse = inverse; });
  return out;
}

Tensor transpose(const Tensor& x, int d0, int d1) {
  check_defined(x, "transpose", "x");
  std::vector<int> dims(x.dim());
  for (int i = 0; i < x.dim(); ++i) dims[i] = i;
  std::swap(dims[x.shape().wrap_dim(d0)], dims[x.shape().wrap_dim(d1)]);
  return permute(x, dims);
}

namespace {
struct SliceBackward : Node {
  Shape input_shape;
  int dim = 0;
  int64_t start = 0;
  std::vector<Tensor> apply(std::vector<Tensor> g) override {
    Tensor dx = Tensor::zeros(input_shape, g[0].dtype(), g[0].device());
    dx.slice(dim, start, start + g[0].size(dim)).copy_(g[0]);
    return {dx};
  }
  std::string name() const override { return "SliceBackward"; }
};
}  // namespace

Tensor slice(const Tensor& x, int dim, int64_t start, int64_t end) {
  check_defined(x, "slice", "x");
  const int d = x.shape().wrap_dim(dim);
  const int64_t n = x.shape()[d];
  LLM_CHECK(0 <= start && start <= end && end <= n, "slice: range [", start, ", ", end, ") out of bounds for dimension ",
            d, " of size ", n, " in ", x.str());
  Shape shape = x.shape();
  shape[d] = end - start;
  Tensor out = make_view(x, shape, x.strides(), x.offset() + start * x.strides()[d]);
  record_op<SliceBackward>({&x}, {&out}, [&](SliceBackward& node) {
    node.input_shape = x.shape();
    node.dim = d;
    node.start = start;
  });
  return out;
}

Tensor unsqueeze(const Tensor& x, int dim) {
  check_defined(x, "unsqueeze", "x");
  const int d = dim < 0 ? dim + x.dim() + 1 : dim;
  LLM_CHECK(d >= 0 && d <= x.dim() && x.dim() < kMaxDims, "unsqueeze: dimension ", dim, " invalid for ", x.str());
  std::vector<int64_t> shape = x.shape().vec(), strides = x.strides().vec();
  shape.insert(shape.begin() + d, 1);
  strides.insert(strides.begin() + d, d < x.dim() ? x.strides()[d] * x.shape()[d] : 1);
  Tensor out = make_view(x, Shape(shape), Shape(strides), x.offset());
  record_op<ReshapeBackward>({&x}, {&out}, [&](ReshapeBackward& n) { n.input_shape = x.shape(); });
  return out;
}

Tensor squeeze(const Tensor& x, int dim) {
  check_defined(x, "squeeze", "x");
  const int d = x.shape().wrap_dim(dim);
  LLM_CHECK(x.shape()[d] == 1, "squeeze: dimension ", d, " of ", x.str(), " has size ", x.shape()[d], ", not 1");
  std::vector<int64_t> shape = x.shape().vec(), strides = x.strides().vec();
  shape.erase(shape.begin() + d);
  strides.erase(strides.begin() + d);
  Tensor out = make_view(x, Shape(shape), Shape(strides), x.offset());
  record_op<ReshapeBackward>({&x}, {&out}, [&](ReshapeBackward& n) { n.input_shape = x.shape(); });
  return out;
}

Tensor select(const Tensor& x, int dim, int64_t index) {
  check_defined(x, "select", "x");
  const int d = x.shape().wrap_dim(dim);
  const int64_t i = index < 0 ? index + x.shape()[d] : index;
  LLM_CHECK(i >= 0 && i < x.shape()[d], "select: index ", index, " out of range for dimension ", d, " of ", x.str());
  return squeeze(slice(x, d, i, i + 1), d);
}

namespace {
struct CloneBackward : Node {
  std::vector<Tensor> apply(std::vector<Tensor> g) override { return {g[0]}; }
  std::string name() const override { return "CloneBackward"; }
};
}  // namespace

Tensor clone(const Tensor& x) {
  check_defined(x, "clone", "x");
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  copy_strided(x, out);
  record_op<CloneBackward>({&x}, {&out}, [](CloneBackward&) {});
  return out;
}

namespace {
struct CastBackward : Node {
  DType input_dtype = DType::F32;
  std::vector<Tensor> apply(std::vector<Tensor> g) override { return {g[0].to(input_dtype)}; }
  std::string name() const override { return "CastBackward"; }
};
}  // namespace

Tensor cast(const Tensor& x, DType dtype) {
  check_defined(x, "cast", "x");
  LLM_CHECK(is_floating(x.dtype()) && is_floating(dtype), "cast: only between floating-point dtypes, got ", x.str(),
            " to ", dtype_name(dtype));
  if (x.dtype() == dtype) return x;
  Tensor out = x.detach().to(dtype);
  record_op<CastBackward>({&x}, {&out}, [&](CastBackward& n) { n.input_dtype = x.dtype(); });
  return out;
}

namespace {
struct CatBackward : Node {
  int dim = 0;
  std::vector<int64_t> sizes;
  std::vector<Tensor> apply(std::vector<Tensor> g) override {
    std::vector<Tensor> out;
    int64_t start = 0;
    for (int64_t s : sizes) {
      out.push_back(g[0].slice(dim, start, start + s));
      start += s;
    }
    return out;
  }
  std::string name() const override { return "CatBackward"; }
};
}  // namespace

Tensor cat(const std::vector<Tensor>& given, int dim) {
  LLM_CHECK(!given.empty(), "cat: no tensors given");
  const std::vector<Tensor> xs = detail::promote(given, "cat");  // bf16 with f32 on CUDA: the mixed-precision rule
  check_defined(xs[0], "cat", "xs[0]");
  const int d = xs[0].shape().wrap_dim(dim);
  Shape shape = xs[0].shape();
  shape[d] = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    check_defined(xs[i], "cat", "xs[i]");
    LLM_CHECK(xs[i].dim() == xs[0].dim() && xs[i].dtype() == xs[0].dtype(), "cat: tensor ", i, " (", xs[i].str(),
              ") does not match tensor 0 (", xs[0].str(), ")");
    check_same_device(xs[i], xs[0], "cat");
    for (int k = 0; k < xs[0].dim(); ++k)
      LLM_CHECK(k == d || xs[i].shape()[k] == xs[0].shape()[k], "cat: tensor ", i, " has shape ", xs[i].shape().str(),
                ", expected ", xs[0].shape().str(), " except in dimension ", d);
    shape[d] += xs[i].shape()[d];
  }
  Tensor out = Tensor::empty(shape, xs[0].dtype(), xs[0].device());
  {
    NoGradGuard no_grad;
    int64_t start = 0;
    for (const Tensor& x : xs) {
      out.slice(d, start, start + x.shape()[d]).copy_(x);
      start += x.shape()[d];
    }
  }
  std::vector<const Tensor*> inputs;
  for (const Tensor& x : xs) inputs.push_back(&x);
  record_op<CatBackward>(inputs, {&out}, [&](CatBackward& n) {
    n.dim = d;
    for (const Tensor& x : xs) n.sizes.push_back(x.shape()[d]);
  });
  return out;
}

namespace {
struct SplitBackward : Node {
  int dim = 0;
  std::vector<Shape> shapes;
  DType dtype = DType::F32;
  Device device;
  std::vector<Tensor> apply(std::vector<Tensor> g) override {
    std::vector<Tensor> parts;
    for (size_t i = 0; i < shapes.size(); ++i)
      parts.push_back(g[i].defined() ? g[i] : Tensor::zeros(shapes[i], dtype, device));  // an unused piece: zero
    return {cat(parts, dim)};
  }
  std::string name() const override { return "SplitBackward"; }
};
}  // namespace

std::vector<Tensor> split(const Tensor& x, int dim, const std::vector<int64_t>& sizes) {
  check_defined(x, "split", "x");
  const int d = x.shape().wrap_dim(dim);
  int64_t total = 0;
  for (int64_t s : sizes) total += s;
  LLM_CHECK(total == x.shape()[d], "split: sizes add up to ", total, ", but dimension ", d, " of ", x.str(), " has ",
            x.shape()[d]);
  std::vector<Tensor> out;
  {
    NoGradGuard no_grad;
    int64_t start = 0;
    for (int64_t s : sizes) {
      out.push_back(clone(slice(x, d, start, start + s)));
      start += s;
    }
  }
  std::vector<Tensor*> outputs;
  for (Tensor& t : out) outputs.push_back(&t);
  record_op<SplitBackward>({&x}, outputs, [&](SplitBackward& n) {
    n.dim = d;
    n.dtype = x.dtype();
    n.device = x.device();
    for (const Tensor& t : out) n.shapes.push_back(t.shape());
  });
  return out;
}

}  // namespace llm::ops
