#include "engine/core/tensor.h"

#include <cmath>
#include <cstring>
#include <sstream>

#include "engine/core/autograd.h"
#include "engine/ops/ops.h"
#include "kernels/cpu/elementwise.h"

#ifdef LLM_HAVE_CUDA
#include "engine/core/cuda_context.h"
#include "kernels/cuda/elementwise.h"
#endif

namespace llm {

namespace {
thread_local bool tls_grad_enabled = true;

std::shared_ptr<TensorImpl> make_impl(std::shared_ptr<Storage> storage, int64_t offset, const Shape& shape,
                                      const Shape& strides, DType dtype) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::move(storage);
  impl->offset = offset;
  impl->shape = shape;
  impl->strides = strides;
  impl->dtype = dtype;
  return impl;
}

// Call f with the typed element pointer of an integer dtype (for reading, and for writing).
template <typename F>
void visit_integer(DType t, const void* p, F&& f) {
  switch (t) {
    case DType::I32: f(static_cast<const int32_t*>(p)); break;
    case DType::I64: f(static_cast<const int64_t*>(p)); break;
    case DType::U16: f(static_cast<const uint16_t*>(p)); break;
    case DType::U32: f(static_cast<const uint32_t*>(p)); break;
    case DType::U8: f(static_cast<const uint8_t*>(p)); break;
    default: break;
  }
}
template <typename F>
void visit_integer(DType t, void* p, F&& f) {
  switch (t) {
    case DType::I32: f(static_cast<int32_t*>(p)); break;
    case DType::I64: f(static_cast<int64_t*>(p)); break;
    case DType::U16: f(static_cast<uint16_t*>(p)); break;
    case DType::U32: f(static_cast<uint32_t*>(p)); break;
    case DType::U8: f(static_cast<uint8_t*>(p)); break;
    default: break;
  }
}

// Converts n contiguous CPU elements between dtypes: integers to integers exactly through int64,
// everything else through f32 (floats to integers round to nearest).
void convert_elements(const void* src, DType from, void* dst, DType to, int64_t n) {
  if (from == to) {
    std::memcpy(dst, src, n * dtype_size(from));
    return;
  }
  if (!is_floating(from) && !is_floating(to)) {
    std::vector<int64_t> wide(n);
    visit_integer(from, src, [&](auto* p) { for (int64_t i = 0; i < n; ++i) wide[i] = static_cast<int64_t>(p[i]); });
    visit_integer(to, dst, [&](auto* p) {
      for (int64_t i = 0; i < n; ++i) p[i] = static_cast<std::remove_pointer_t<decltype(p)>>(wide[i]);
    });
    return;
  }
  std::vector<float> f(n);
  switch (from) {
    case DType::F32: std::memcpy(f.data(), src, n * sizeof(float)); break;
    case DType::BF16: cpu::bf16_to_f32(n, static_cast<const uint16_t*>(src), f.data()); break;
    case DType::F16: cpu::f16_to_f32(n, static_cast<const uint16_t*>(src), f.data()); break;
    default: visit_integer(from, src, [&](auto* p) { for (int64_t i = 0; i < n; ++i) f[i] = static_cast<float>(p[i]); });
  }
  switch (to) {
    case DType::F32: std::memcpy(dst, f.data(), n * sizeof(float)); break;
    case DType::BF16: cpu::f32_to_bf16(n, f.data(), static_cast<uint16_t*>(dst)); break;
    case DType::F16: cpu::f32_to_f16(n, f.data(), static_cast<uint16_t*>(dst)); break;
    default: visit_integer(to, dst, [&](auto* p) {
      for (int64_t i = 0; i < n; ++i) p[i] = static_cast<std::remove_pointer_t<decltype(p)>>(std::llround(f[i]));
    });
  }
}

// In-place writes are refused on tensors autograd tracks: they would silently corrupt gradients.
void check_inplace_allowed(const Tensor& t, const char* op) {
  LLM_CHECK(!(grad_enabled() && t.requires_grad()), op, ": in-place operation on a tensor that requires grad (",
            t.str(), "); wrap it in NoGradGuard (as optimizers do) or work on a copy");
}
}  // namespace

void copy_strided(const Tensor& src, const Tensor& dst) {
  LLM_CHECK(src.shape() == dst.shape() && src.dtype() == dst.dtype() && src.device() == dst.device(),
            "internal: copy_strided(", src.str(), " -> ", dst.str(), ")");
  const int64_t n = src.numel();
  if (n == 0) return;
  const int64_t esize = static_cast<int64_t>(dtype_size(src.dtype()));
  if (src.is_contiguous() && dst.is_contiguous()) {
    copy_bytes(dst.raw_data(), dst.device(), src.raw_data(), src.device(), static_cast<size_t>(n * esize));
    return;
  }
  if (src.device().is_cuda()) {
#ifdef LLM_HAVE_CUDA
    cuda::StridedCopy layout;
    layout.ndim = src.dim();
    for (int d = 0; d < src.dim(); ++d) {
      layout.shape[d] = src.shape()[d];
      layout.src_strides[d] = src.strides()[d];
      layout.dst_strides[d] = dst.strides()[d];
    }
    cuda::copy_strided(layout, static_cast<int>(esize), src.raw_data(), dst.raw_data(), cuda_context::stream(src.device()));
#endif
    return;
  }
  const char* in = static_cast<const char*>(src.raw_data());
  char* out = static_cast<char*>(dst.raw_data());
  const int nd = src.dim();
  // An odometer over all dimensions but the last; the last is one run when both sides are unit-stride.
  const int64_t inner = nd ? src.shape()[nd - 1] : 1;
  const int64_t in_step = nd ? src.strides()[nd - 1] : 1, out_step = nd ? dst.strides()[nd - 1] : 1;
  int64_t idx[kMaxDims] = {0};
  for (int64_t row = 0; row < n / inner; ++row) {
    int64_t in_off = 0, out_off = 0;
    for (int d = 0; d < nd - 1; ++d) {
      in_off += idx[d] * src.strides()[d];
      out_off += idx[d] * dst.strides()[d];
    }
    if (in_step == 1 && out_step == 1) {
      std::memcpy(out + out_off * esize, in + in_off * esize, inner * esize);
    } else {
      for (int64_t i = 0; i < inner; ++i)
        std::memcpy(out + (out_off + i * out_step) * esize, in + (in_off + i * in_step) * esize, esize);
    }
    for (int d = nd - 2; d >= 0; --d) {
      if (++idx[d] < src.shape()[d]) break;
      idx[d] = 0;
    }
  }
}

// ---- grad mode ------------------------------------------------------------------------------
bool grad_enabled() { return tls_grad_enabled; }
NoGradGuard::NoGradGuard() : previous_(tls_grad_enabled) { tls_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { tls_grad_enabled = previous_; }

// ---- checks ---------------------------------------------------------------------------------
void check_defined(const Tensor& t, const char* op, const char* arg) {
  LLM_CHECK(t.defined(), op, ": argument '", arg, "' is an undefined tensor");
}
void check_dtype(const Tensor& t, DType dtype, const char* op, const char* arg) {
  check_defined(t, op, arg);
  LLM_CHECK(t.dtype() == dtype, op, ": argument '", arg, "' must be ", dtype_name(dtype), ", got ", t.str());
}
void check_same_device(const Tensor& a, const Tensor& b, const char* op) {
  LLM_CHECK(a.device() == b.device(), op, ": tensors are on different devices (", a.device().str(), " and ",
            b.device().str(), ")");
}
void check_shape(const Tensor& t, const Shape& shape, const char* op, const char* arg) {
  check_defined(t, op, arg);
  LLM_CHECK(t.shape() == shape, op, ": argument '", arg, "' must have shape ", shape.str(), ", got ", t.shape().str());
}

// ---- creation -------------------------------------------------------------------------------
Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) LLM_CHECK(d >= 0, "cannot create a tensor of shape ", shape.str());
  auto storage = std::make_shared<Storage>(static_cast<size_t>(shape.numel()) * dtype_size(dtype), device);
  return Tensor(make_impl(std::move(storage), 0, shape, shape.contiguous_strides(), dtype));
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) { return full(shape, 0.0, dtype, device); }
Tensor Tensor::ones(const Shape& shape, DType dtype, Device device) { return full(shape, 1.0, dtype, device); }

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  NoGradGuard no_grad;
  t.fill_(value);
  return t;
}

template <typename T>
Tensor Tensor::from_vector(const std::vector<T>& values, const Shape& shape) {
  LLM_CHECK(static_cast<int64_t>(values.size()) == shape.numel(), "from_vector: ", values.size(),
            " values for shape ", shape.str(), " (", shape.numel(), " elements)");
  Tensor t = empty(shape, dtype_of<T>::value);
  if (!values.empty()) std::memcpy(t.raw_data(), values.data(), values.size() * sizeof(T));
  return t;
}
template Tensor Tensor::from_vector(const std::vector<float>&, const Shape&);
template Tensor Tensor::from_vector(const std::vector<int32_t>&, const Shape&);
template Tensor Tensor::from_vector(const std::vector<int64_t>&, const Shape&);
template Tensor Tensor::from_vector(const std::vector<uint16_t>&, const Shape&);
template Tensor Tensor::from_vector(const std::vector<uint32_t>&, const Shape&);
template Tensor Tensor::from_vector(const std::vector<uint8_t>&, const Shape&);

Tensor Tensor::randn(const Shape& shape, Generator& gen, float mean, float std) {
  Tensor t = empty(shape);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = mean + std * gen.normal();
  return t;
}

Tensor Tensor::rand(const Shape& shape, Generator& gen, float lo, float hi) {
  Tensor t = empty(shape);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = lo + (hi - lo) * gen.uniform();
  return t;
}

Tensor Tensor::from_blob(void* data, const Shape& shape, DType dtype, Device device, std::shared_ptr<void> keep_alive) {
  auto storage = std::make_shared<Storage>(data, static_cast<size_t>(shape.numel()) * dtype_size(dtype), device,
                                           keep_alive ? std::move(keep_alive) : std::make_shared<int>(0));
  return Tensor(make_impl(std::move(storage), 0, shape, shape.contiguous_strides(), dtype));
}

// ---- properties -----------------------------------------------------------------------------
TensorImpl& Tensor::impl() const {
  LLM_CHECK(impl_, "use of an undefined tensor");
  return *impl_;
}

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (int d = dim() - 1; d >= 0; --d) {
    if (shape()[d] != 1 && strides()[d] != expected) return false;
    expected *= shape()[d];
  }
  return true;
}

Tensor& Tensor::set_name(std::string name) {
  impl().name = std::move(name);
  return *this;
}

std::string Tensor::str() const {
  if (!defined()) return "undefined tensor";
  std::string s = std::string(dtype_name(dtype())) + shape().str() + " " + device().str();
  if (!name().empty()) s += " '" + name() + "'";
  return s;
}

void* Tensor::raw_data() const {
  return static_cast<char*>(storage()->data()) + offset() * static_cast<int64_t>(dtype_size(dtype()));
}

template <typename T>
T* Tensor::data() const {
  constexpr DType want = dtype_of<T>::value;
  const bool ok = dtype() == want || (want == DType::U16 && (dtype() == DType::BF16 || dtype() == DType::F16));
  LLM_CHECK(ok, "data<", dtype_name(want), ">() on a tensor of dtype ", dtype_name(dtype()));
  return static_cast<T*>(raw_data());
}
template float* Tensor::data<float>() const;
template int32_t* Tensor::data<int32_t>() const;
template int64_t* Tensor::data<int64_t>() const;
template uint16_t* Tensor::data<uint16_t>() const;
template uint32_t* Tensor::data<uint32_t>() const;
template uint8_t* Tensor::data<uint8_t>() const;

float Tensor::item() const {
  LLM_CHECK(numel() == 1, "item() needs a tensor with one element, got shape ", shape().str());
  return to_vector<float>()[0];
}

template <typename T>
std::vector<T> Tensor::to_vector() const {
  // Reading values is not a differentiable op: a device tensor that requires grad is copied detached.
  Tensor host = detach().to(Device::cpu()).contiguous().to(dtype_of<T>::value);
  std::vector<T> out(numel());
  if (!out.empty()) std::memcpy(out.data(), host.raw_data(), out.size() * sizeof(T));
  return out;
}
template std::vector<float> Tensor::to_vector() const;
template std::vector<int32_t> Tensor::to_vector() const;
template std::vector<int64_t> Tensor::to_vector() const;
template std::vector<uint16_t> Tensor::to_vector() const;
template std::vector<uint32_t> Tensor::to_vector() const;
template std::vector<uint8_t> Tensor::to_vector() const;

// ---- views ----------------------------------------------------------------------------------
// The differentiable views (view, reshape, transpose, permute, slice, select, unsqueeze, squeeze,
// contiguous, clone) are ops: their backward lives in engine/ops/shape_ops.cpp.
Tensor Tensor::view(const Shape& shape) const { return ops::view(*this, shape); }
Tensor Tensor::reshape(const Shape& shape) const { return ops::reshape(*this, shape); }
Tensor Tensor::transpose(int d0, int d1) const { return ops::transpose(*this, d0, d1); }
Tensor Tensor::permute(const std::vector<int>& dims) const { return ops::permute(*this, dims); }
Tensor Tensor::slice(int d, int64_t start, int64_t end) const { return ops::slice(*this, d, start, end); }
Tensor Tensor::select(int d, int64_t index) const { return ops::select(*this, d, index); }
Tensor Tensor::unsqueeze(int d) const { return ops::unsqueeze(*this, d); }
Tensor Tensor::squeeze(int d) const { return ops::squeeze(*this, d); }
Tensor Tensor::contiguous() const { return is_contiguous() ? *this : ops::clone(*this); }
Tensor Tensor::clone() const { return ops::clone(*this); }

Tensor Tensor::detach() const {
  const TensorImpl& i = impl();
  return Tensor(make_impl(i.storage, i.offset, i.shape, i.strides, i.dtype));
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == this->dtype()) return *this;
  LLM_CHECK(!(requires_grad() && grad_enabled()), "to(", dtype_name(dtype), "): conversion of a tensor that requires "
            "grad is not differentiable; detach() it first (or use ops::cast)");
  Tensor src = contiguous();
  if (device().is_cuda()) {
#ifdef LLM_HAVE_CUDA
    const bool f32_bf16 = this->dtype() == DType::F32 && dtype == DType::BF16;
    const bool bf16_f32 = this->dtype() == DType::BF16 && dtype == DType::F32;
    if (!f32_bf16 && !bf16_f32) return src.to(Device::cpu()).to(dtype).to(device());  // rare: through the host
    Tensor out = empty(shape(), dtype, device());
    if (f32_bf16) cuda::f32_to_bf16(numel(), static_cast<const float*>(src.raw_data()),
                                    static_cast<cuda::bf16*>(out.raw_data()), cuda_context::stream(device()));
    else cuda::bf16_to_f32(numel(), static_cast<const cuda::bf16*>(src.raw_data()), static_cast<float*>(out.raw_data()),
                           cuda_context::stream(device()));
    return out;
#endif
  }
  Tensor out = empty(shape(), dtype);
  convert_elements(src.raw_data(), src.dtype(), out.raw_data(), dtype, numel());
  return out;
}

Tensor Tensor::to(Device device) const {
  if (device == this->device()) return *this;
  LLM_CHECK(!(requires_grad() && grad_enabled()), "to(", device.str(), "): device moves of tensors that require grad "
            "are not recorded by autograd; detach() first");
  Tensor src = contiguous();
  Tensor out = empty(shape(), dtype(), device);
  copy_bytes(out.raw_data(), device, src.raw_data(), src.device(), nbytes());
  return out;
}

// ---- in-place -------------------------------------------------------------------------------
Tensor& Tensor::fill_(double value) {
  check_inplace_allowed(*this, "fill_");
  if (dtype() == DType::F32 && is_contiguous() && device().is_cpu()) {
    cpu::fill(numel(), static_cast<float>(value), data<float>());
    storage()->bump_version();
#ifdef LLM_HAVE_CUDA
  } else if (device().is_cuda() && is_contiguous() &&
             (dtype() == DType::F32 || dtype() == DType::BF16 || dtype() == DType::I32)) {
    cudaStream_t stream = cuda_context::stream(device());
    if (dtype() == DType::F32) cuda::fill(numel(), static_cast<float>(value), static_cast<float*>(raw_data()), stream);
    else if (dtype() == DType::BF16) cuda::fill(numel(), static_cast<float>(value), static_cast<cuda::bf16*>(raw_data()), stream);
    else cuda::fill(numel(), static_cast<int32_t>(value), static_cast<int32_t*>(raw_data()), stream);
    storage()->bump_version();
#endif
  } else if (is_floating(dtype())) {  // other layouts, dtypes and devices go through copy_
    copy_(Tensor::from_vector(std::vector<float>(numel(), static_cast<float>(value)), shape()));
  } else {  // integers through int64, so large ids stay exact
    copy_(Tensor::from_vector(std::vector<int64_t>(numel(), static_cast<int64_t>(value)), shape()));
  }
  return *this;
}

Tensor& Tensor::copy_(const Tensor& src) {
  check_inplace_allowed(*this, "copy_");
  check_shape(src, shape(), "copy_", "src");
  Tensor s = src.detach();
  if (device().is_cpu()) {  // convert on the CPU
    if (!s.device().is_cpu()) s = s.to(Device::cpu());
    if (s.dtype() != dtype()) s = s.to(dtype());
  } else {  // move, then convert on the device
    if (s.device() != device()) s = s.to(device());
    if (s.dtype() != dtype()) s = s.to(dtype());
  }
  copy_strided(s, *this);
  storage()->bump_version();
  return *this;
}

Tensor& Tensor::add_(const Tensor& other, float alpha) {
  check_inplace_allowed(*this, "add_");
  check_same_device(*this, other, "add_");
  check_shape(other, shape(), "add_", "other");
  if (device().is_cuda()) {
#ifdef LLM_HAVE_CUDA
    LLM_CHECK((dtype() == DType::F32 || dtype() == DType::BF16) && is_contiguous(),
              "add_: needs a contiguous f32 or bf16 tensor on ", device().str(), ", got ", str());
    check_dtype(other, dtype(), "add_", "other");
    Tensor o = other.contiguous();
    cudaStream_t stream = cuda_context::stream(device());
    if (dtype() == DType::F32) {
      float* y = static_cast<float*>(raw_data());
      cuda::add(numel(), static_cast<const float*>(y), 1.f, numel(), static_cast<const float*>(o.raw_data()), alpha, y, stream);
    } else {
      auto* y = static_cast<cuda::bf16*>(raw_data());
      cuda::add(numel(), static_cast<const cuda::bf16*>(y), 1.f, numel(), static_cast<const cuda::bf16*>(o.raw_data()),
                alpha, y, stream);
    }
#endif
  } else {
    check_dtype(*this, DType::F32, "add_", "self");
    check_dtype(other, DType::F32, "add_", "other");
    LLM_CHECK(is_contiguous(), "add_: needs a contiguous tensor, got ", str());
    Tensor o = other.contiguous();
    cpu::axpy(numel(), alpha, o.data<float>(), data<float>());
  }
  storage()->bump_version();
  return *this;
}

Tensor& Tensor::mul_(float factor) {
  check_inplace_allowed(*this, "mul_");
  if (device().is_cuda()) {
#ifdef LLM_HAVE_CUDA
    LLM_CHECK((dtype() == DType::F32 || dtype() == DType::BF16) && is_contiguous(),
              "mul_: needs a contiguous f32 or bf16 tensor on ", device().str(), ", got ", str());
    cudaStream_t stream = cuda_context::stream(device());
    if (dtype() == DType::F32) cuda::scale(numel(), static_cast<const float*>(raw_data()), factor, static_cast<float*>(raw_data()), stream);
    else cuda::scale(numel(), static_cast<const cuda::bf16*>(raw_data()), factor, static_cast<cuda::bf16*>(raw_data()), stream);
#endif
  } else {
    check_dtype(*this, DType::F32, "mul_", "self");
    LLM_CHECK(is_contiguous(), "mul_: needs a contiguous tensor, got ", str());
    cpu::scale(numel(), data<float>(), factor, data<float>());
  }
  storage()->bump_version();
  return *this;
}

// ---- autograd -------------------------------------------------------------------------------
Tensor& Tensor::set_requires_grad(bool on) {
  LLM_CHECK(is_leaf(), "set_requires_grad: only leaf tensors can change requires_grad (", str(),
            " was computed by ", grad_fn()->name(), "); use detach() to make a new leaf");
  LLM_CHECK(!on || is_floating(dtype()), "set_requires_grad: only floating-point tensors can require grad, got ", str());
  impl().requires_grad = on;
  return *this;
}

void Tensor::set_grad(const Tensor& g) {
  if (g.defined()) check_shape(g, shape(), "set_grad", "grad");
  impl().grad = g.defined() ? g.impl_ptr() : nullptr;
}

void Tensor::backward(const Tensor& gradient, bool retain_graph) const {
  autograd::run_backward(*this, gradient, retain_graph);
}

void Tensor::register_grad_ready_hook(GradHook hook) {
  LLM_CHECK(is_leaf() && requires_grad(), "register_grad_ready_hook: only leaf tensors that require grad have a "
            "final gradient, got ", str());
  impl().grad_ready_hooks.push_back(std::move(hook));
}

// ---- Generator (xoshiro256**, seeded through splitmix64) ------------------------------------
namespace {
uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
}  // namespace

void Generator::manual_seed(uint64_t seed) {
  for (uint64_t& s : s_) s = splitmix64(seed);
  has_spare_ = false;
}

uint64_t Generator::next_u64() {
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

float Generator::uniform() { return static_cast<float>(next_u64() >> 40) * (1.0f / 16777216.0f); }

float Generator::normal() {
  if (has_spare_) {
    has_spare_ = false;
    return spare_;
  }
  // Box-Muller in double; u1 is kept away from 0 so log() stays finite.
  const double u1 = (static_cast<double>(next_u64() >> 11) + 1.0) * (1.0 / 9007199254740993.0);
  const double u2 = static_cast<double>(next_u64() >> 11) * (1.0 / 9007199254740992.0);
  const double r = std::sqrt(-2.0 * std::log(u1));
  spare_ = static_cast<float>(r * std::sin(2.0 * M_PI * u2));
  has_spare_ = true;
  return static_cast<float>(r * std::cos(2.0 * M_PI * u2));
}

std::vector<uint64_t> Generator::state() const {
  uint64_t spare_bits = 0;
  std::memcpy(&spare_bits, &spare_, sizeof(spare_));
  return {s_[0], s_[1], s_[2], s_[3], has_spare_ ? 1ULL : 0ULL, spare_bits};
}

void Generator::set_state(const std::vector<uint64_t>& state) {
  LLM_CHECK(state.size() == 6, "Generator::set_state: expected 6 words, got ", state.size());
  for (int i = 0; i < 4; ++i) s_[i] = state[i];
  has_spare_ = state[4] != 0;
  std::memcpy(&spare_, &state[5], sizeof(spare_));
}

}  // namespace llm
