// Multi-tensor AdamW, the deterministic sum of squares of many gradients, and the clipping factor
// (kernels/cuda/fused.h). The AdamW formulas are those of kernels/cpu/adamw.cpp, operation by
// operation, with the step-dependent scalars computed on the host in double as there.
// Fast: the tensor table travels as a kernel parameter (__grid_constant__), up to kTensorsPerLaunch
// tensors per launch; each block owns one fixed element range of one tensor. The sum of squares
// writes one partial per block (a partition fixed by the tensor sizes alone) and one block adds the
// partials in order. Simple: one launch per tensor.
#include <algorithm>
#include <cmath>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/fused.h"

namespace llm::cuda {

namespace {
using namespace detail;

constexpr int kTensorsPerLaunch = 48;  // keeps the parameter table under the classic 4 KiB limit
constexpr int kThreads = 256;
constexpr int64_t kAdamWElemsPerBlock = 8 * kThreads;
constexpr int64_t kSumsqElemsPerBlock = 32 * kThreads;
constexpr int kFinalThreads = 1024;

struct AdamWScalars {
  float step_size, bias2_sqrt, decay, one_minus_beta1, one_minus_beta2, beta2, eps, grad_scale;
};

AdamWScalars adamw_scalars(const AdamWHyper& h) {
  const double bias1 = 1.0 - std::pow(double(h.beta1), double(h.step));
  const double bias2 = 1.0 - std::pow(double(h.beta2), double(h.step));
  return {float(double(h.lr) / bias1),
          float(std::sqrt(bias2)),
          float(1.0 - double(h.lr) * double(h.weight_decay)),
          float(1.0 - double(h.beta1)),
          float(1.0 - double(h.beta2)),
          h.beta2,
          h.eps,
          h.grad_scale};
}

// One element, as torch.optim.AdamW's single-tensor step (see kernels/cpu/adamw.cpp).
__device__ __forceinline__ void adamw_element(const AdamWTensor& t, int64_t i, const AdamWScalars& s, float scale) {
  const float g = t.grad[i] * scale;
  const float p = t.decay ? t.param[i] * s.decay : t.param[i];  // decoupled weight decay
  const float m = t.m[i] + s.one_minus_beta1 * (g - t.m[i]);  // m.lerp_(g, 1 - beta1)
  const float v = t.v[i] * s.beta2 + s.one_minus_beta2 * g * g;
  const float denom = sqrtf(v) / s.bias2_sqrt + s.eps;  // eps after the bias-corrected sqrt
  const float updated = p - s.step_size * (m / denom);
  t.m[i] = m;
  t.v[i] = v;
  t.param[i] = updated;
  if (t.param_bf16) t.param_bf16[i] = __float2bfloat16_rn(updated);
}

// grad_scale times the optional device factor (global-norm clipping without a host round trip).
__device__ __forceinline__ float total_grad_scale(const AdamWScalars& s, const float* grad_scale_device) {
  return grad_scale_device ? s.grad_scale * *grad_scale_device : s.grad_scale;
}

// Tensor t owns blocks [first_block[t], first_block[t + 1]) of a launch; unused slots own none.
template <class Tensor>
struct TensorTable {
  Tensor tensors[kTensorsPerLaunch];
  int64_t first_block[kTensorsPerLaunch + 1];
};
static_assert(sizeof(TensorTable<AdamWTensor>) + 64 <= 4096, "adamw_fast's parameters must fit in 4 KiB");

struct SquaresTensor {
  const float* grad;
  int64_t n;
};

// The tensor that owns this block, and the block's element range [*begin, *end) in it.
template <class Tensor>
__device__ __forceinline__ int owner(const TensorTable<Tensor>& table, int64_t elems_per_block, int64_t* begin,
                                     int64_t* end) {
  const int64_t b = blockIdx.x;
  int t = 0;
  while (b >= table.first_block[t + 1]) ++t;
  *begin = (b - table.first_block[t]) * elems_per_block;
  const int64_t n = table.tensors[t].n;
  *end = n - *begin < elems_per_block ? n : *begin + elems_per_block;
  return t;
}

__global__ void __launch_bounds__(kThreads)
    adamw_fast(const __grid_constant__ TensorTable<AdamWTensor> table, AdamWScalars s, const float* grad_scale_device) {
  int64_t begin, end;
  const AdamWTensor& t = table.tensors[owner(table, kAdamWElemsPerBlock, &begin, &end)];
  const float scale = total_grad_scale(s, grad_scale_device);
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) adamw_element(t, i, s, scale);
}

__global__ void adamw_simple(AdamWTensor t, AdamWScalars s, const float* grad_scale_device) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < t.n) adamw_element(t, i, s, total_grad_scale(s, grad_scale_device));
}

// partials[blockIdx.x] = sum of g² over the block's range, in a fixed order.
__global__ void __launch_bounds__(kThreads)
    squares_fast(const __grid_constant__ TensorTable<SquaresTensor> table, float* partials) {
  int64_t begin, end;
  const float* g = table.tensors[owner(table, kSumsqElemsPerBlock, &begin, &end)].grad;
  float acc = 0.f;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) acc += g[i] * g[i];
  acc = block_sum(acc);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

// *out = the sum of count partials in a fixed order.
__global__ void __launch_bounds__(kFinalThreads) sum_partials(int64_t count, const float* partials, float* out) {
  float acc = 0.f;
  for (int64_t k = threadIdx.x; k < count; k += kFinalThreads) acc += partials[k];
  acc = block_sum(acc);
  if (threadIdx.x == 0) *out = acc;
}

// Simple: one block sums a whole tensor's squares into *out; then one thread adds the tensors in order.
__global__ void __launch_bounds__(kFinalThreads) squares_simple(const float* g, int64_t n, float* out) {
  float acc = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += kFinalThreads) acc += g[i] * g[i];
  acc = block_sum(acc);
  if (threadIdx.x == 0) *out = acc;
}
__global__ void sum_in_order(int count, const float* partials, float* out) {
  float acc = 0.f;
  for (int k = 0; k < count; ++k) acc += partials[k];
  *out = acc;
}

__global__ void clip_scale_kernel(const float* sumsq, float max_norm, float* scale) {
  const double norm = sqrt(double(*sumsq));
  *scale = max_norm <= 0.f || !(norm > double(max_norm)) ? 1.f : float(double(max_norm) / (norm + 1e-6));
}

// Fills a table with tensors [first, first + count) of the caller's list; returns the blocks it needs.
template <class Tensor, class Get>
int64_t fill_table(TensorTable<Tensor>* table, int first, int count, int64_t elems_per_block, Get get) {
  table->first_block[0] = 0;
  for (int k = 0; k < count; ++k) {
    table->tensors[k] = get(first + k);
    table->first_block[k + 1] = table->first_block[k] + ceil_div(table->tensors[k].n, elems_per_block);
  }
  for (int k = count; k < kTensorsPerLaunch; ++k) table->first_block[k + 1] = table->first_block[count];
  return table->first_block[count];
}
}  // namespace

void adamw_update(const AdamWTensor* tensors, int count, const AdamWHyper& h, const float* grad_scale_device,
                  cudaStream_t stream) {
  constexpr const char* kName = "cuda::adamw_update";
  require(count >= 0 && (count == 0 || tensors), kName, "needs count >= 0 tensors");
  for (int k = 0; k < count; ++k) require(tensors[k].n >= 0, kName, "a tensor has a negative size");
  const AdamWScalars s = adamw_scalars(h);
  if (fused_variant() == FusedVariant::kSimple) {
    for (int k = 0; k < count; ++k) {
      if (tensors[k].n == 0) continue;
      adamw_simple<<<simple_blocks(tensors[k].n), kSimpleThreads, 0, stream>>>(tensors[k], s, grad_scale_device);
      check_launch(kName);
    }
    return;
  }
  for (int first = 0; first < count; first += kTensorsPerLaunch) {
    TensorTable<AdamWTensor> table{};
    const int64_t blocks = fill_table(&table, first, std::min(kTensorsPerLaunch, count - first), kAdamWElemsPerBlock,
                                      [&](int k) { return tensors[k]; });
    require(blocks <= 0x7fffffff, kName, "too many elements for one launch");
    if (blocks == 0) continue;
    adamw_fast<<<unsigned(blocks), kThreads, 0, stream>>>(table, s, grad_scale_device);
    check_launch(kName);
  }
}

void sum_of_squares(const float* const* grads, const int64_t* sizes, int count, float* sumsq_device,
                    cudaStream_t stream) {
  constexpr const char* kName = "cuda::sum_of_squares";
  require(count >= 0 && (count == 0 || (grads && sizes)), kName, "needs count >= 0 tensors");
  for (int k = 0; k < count; ++k) require(sizes[k] >= 0, kName, "a tensor has a negative size");
  if (fused_variant() == FusedVariant::kSimple) {
    StreamScratch partials(size_t(count) * sizeof(float), stream, kName);
    for (int k = 0; k < count; ++k) {
      squares_simple<<<1, kFinalThreads, 0, stream>>>(grads[k], sizes[k], partials.as<float>() + k);
      check_launch(kName);
    }
    sum_in_order<<<1, 1, 0, stream>>>(count, partials.as<float>(), sumsq_device);
    check_launch(kName);
    return;
  }
  int64_t total_blocks = 0;
  for (int k = 0; k < count; ++k) total_blocks += ceil_div(sizes[k], kSumsqElemsPerBlock);
  StreamScratch partials(size_t(total_blocks) * sizeof(float), stream, kName);
  int64_t offset = 0;
  for (int first = 0; first < count; first += kTensorsPerLaunch) {
    TensorTable<SquaresTensor> table{};
    const int64_t blocks = fill_table(&table, first, std::min(kTensorsPerLaunch, count - first), kSumsqElemsPerBlock,
                                      [&](int k) { return SquaresTensor{grads[k], sizes[k]}; });
    require(blocks <= 0x7fffffff, kName, "too many elements for one launch");
    if (blocks == 0) continue;
    squares_fast<<<unsigned(blocks), kThreads, 0, stream>>>(table, partials.as<float>() + offset);
    check_launch(kName);
    offset += blocks;
  }
  sum_partials<<<1, kFinalThreads, 0, stream>>>(total_blocks, partials.as<float>(), sumsq_device);
  check_launch(kName);
}

void clip_scale(const float* sumsq_device, float max_norm, float* scale_device, cudaStream_t stream) {
  clip_scale_kernel<<<1, 1, 0, stream>>>(sumsq_device, max_norm, scale_device);
  check_launch("cuda::clip_scale");
}

}  // namespace llm::cuda
