#include "engine/core/shape.h"

#include "engine/core/error.h"

namespace llm {

Shape::Shape(std::initializer_list<int64_t> dims) : Shape(std::vector<int64_t>(dims)) {}

Shape::Shape(const std::vector<int64_t>& dims) {
  LLM_CHECK(dims.size() <= static_cast<size_t>(kMaxDims), "tensors have at most ", kMaxDims,
            " dimensions, got ", dims.size());
  ndim_ = static_cast<int>(dims.size());
  for (int i = 0; i < ndim_; ++i) {
    // -1 is allowed here as "infer this dimension" (view/reshape); storage creation rejects it.
    LLM_CHECK(dims[i] >= -1, "negative dimension ", dims[i], " in shape");
    dims_[i] = dims[i];
  }
}

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int i = 0; i < ndim_; ++i) n *= dims_[i];
  return n;
}

bool Shape::operator==(const Shape& o) const {
  if (ndim_ != o.ndim_) return false;
  for (int i = 0; i < ndim_; ++i)
    if (dims_[i] != o.dims_[i]) return false;
  return true;
}

std::string Shape::str() const {
  std::string s = "[";
  for (int i = 0; i < ndim_; ++i) s += (i ? ", " : "") + std::to_string(dims_[i]);
  return s + "]";
}

Shape Shape::contiguous_strides() const {
  Shape s = *this;
  int64_t stride = 1;
  for (int i = ndim_ - 1; i >= 0; --i) {
    s.dims_[i] = stride;
    stride *= dims_[i];
  }
  return s;
}

int Shape::wrap_dim(int d) const {
  const int w = d < 0 ? d + ndim_ : d;
  LLM_CHECK(w >= 0 && w < ndim_, "dimension ", d, " out of range for a tensor of shape ", str());
  return w;
}

}  // namespace llm
