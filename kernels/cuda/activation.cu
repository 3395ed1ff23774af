// GELU (tanh approximation), SiLU and SwiGLU, forward and backward (kernels/cuda/fused.h), with the
// formulas of kernels/cpu/activation.cpp. One elementwise kernel runs them all: the fast variant moves
// 16-byte packs (when every pointer is 16-byte aligned) with a scalar tail, the simple one an element
// per thread.
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/fused.h"

namespace llm::cuda {

namespace {
using namespace detail;

constexpr float kGeluK0 = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kGeluK1 = 0.044715f;
constexpr int kThreads = 256;

__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

// 0.5 (1 + tanh(u)) == sigmoid(2u), without the cancellation of 1 + tanh(u) for large negative u.
__device__ __forceinline__ float gelu_gate(float x) {
  const float u = kGeluK0 * (kGeluK1 * x * (x * x) + x);
  return sigmoid(u + u);
}

// Each op maps In input values to Out output values.
struct GeluForward {
  static constexpr int In = 1, Out = 1;
  __device__ void operator()(const float* in, float* out) const { out[0] = in[0] * gelu_gate(in[0]); }
};
// d/dx [x s(2u)] = s + 2 x s (1 - s) u',  u' = k0 (1 + 3 k1 x²).  Inputs: x, dy.
struct GeluBackward {
  static constexpr int In = 2, Out = 1;
  __device__ void operator()(const float* in, float* out) const {
    const float x = in[0], s = gelu_gate(x);
    const float du = kGeluK0 * (3.f * kGeluK1 * x * x + 1.f);
    const float two_x_s = (x + x) * s;
    out[0] = in[1] * (two_x_s * (1.f - s) * du + s);
  }
};
struct SiluForward {
  static constexpr int In = 1, Out = 1;
  __device__ void operator()(const float* in, float* out) const { out[0] = in[0] * sigmoid(in[0]); }
};
// d/dx x s(x) = s (1 + x (1 - s)).  Inputs: x, dy.
struct SiluBackward {
  static constexpr int In = 2, Out = 1;
  __device__ void operator()(const float* in, float* out) const {
    const float x = in[0], s = sigmoid(x);
    out[0] = in[1] * (s * (x * (1.f - s) + 1.f));
  }
};
// y = silu(gate) * up.  Inputs: gate, up.
struct SwigluForward {
  static constexpr int In = 2, Out = 1;
  __device__ void operator()(const float* in, float* out) const { out[0] = in[0] * sigmoid(in[0]) * in[1]; }
};
// Inputs: gate, up, dy; outputs: dgate, dup.
struct SwigluBackward {
  static constexpr int In = 3, Out = 2;
  __device__ void operator()(const float* in, float* out) const {
    const float g = in[0], u = in[1], d = in[2], s = sigmoid(g);
    out[0] = d * u * (s * (g * (1.f - s) + 1.f));
    out[1] = d * (g * s);
  }
};

template <class T, int N>
struct Pointers {
  T* p[N];
};

// out_j[i] = op(in_0[i], ...)_j for i < n: W-element packs over the first n / W * W elements (all
// pointers aligned to W elements), then one element per thread for the rest.
template <class T, int W, class Op>
__global__ void __launch_bounds__(kThreads)
    map_elements(int64_t n, Pointers<const T, Op::In> in, Pointers<T, Op::Out> out, Op op) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x, first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t packs = n / W;
  for (int64_t p = first; p < packs; p += stride) {
    float a[Op::In][W], r[Op::Out][W];
#pragma unroll
    for (int j = 0; j < Op::In; ++j) load_pack<W>(in.p[j] + p * W, a[j]);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      float args[Op::In], res[Op::Out];
#pragma unroll
      for (int j = 0; j < Op::In; ++j) args[j] = a[j][k];
      op(args, res);
#pragma unroll
      for (int j = 0; j < Op::Out; ++j) r[j][k] = res[j];
    }
#pragma unroll
    for (int j = 0; j < Op::Out; ++j) store_pack<W>(out.p[j] + p * W, r[j]);
  }
  for (int64_t i = packs * W + first; i < n; i += stride) {
    float args[Op::In], res[Op::Out];
#pragma unroll
    for (int j = 0; j < Op::In; ++j) args[j] = to_f32(in.p[j][i]);
    op(args, res);
#pragma unroll
    for (int j = 0; j < Op::Out; ++j) out.p[j][i] = from_f32<T>(res[j]);
  }
}

template <class T, class Op>
void launch_map(int64_t n, Pointers<const T, Op::In> in, Pointers<T, Op::Out> out, cudaStream_t stream,
                const char* kernel) {
  require(n >= 0, kernel, "the element count must not be negative");
  if (n == 0) return;
  constexpr int W = kVecWidth<T>;
  bool aligned = true;
  for (int j = 0; j < Op::In; ++j) aligned = aligned && aligned16(in.p[j]);
  for (int j = 0; j < Op::Out; ++j) aligned = aligned && aligned16(out.p[j]);
  if (fused_variant() == FusedVariant::kFast && aligned)
    map_elements<T, W, Op><<<grid_blocks(ceil_div(n, W), kThreads), kThreads, 0, stream>>>(n, in, out, Op{});
  else if (fused_variant() == FusedVariant::kFast)
    map_elements<T, 1, Op><<<grid_blocks(n, kThreads), kThreads, 0, stream>>>(n, in, out, Op{});
  else  // simple: an element per thread (up to the grid's limit)
    map_elements<T, 1, Op><<<grid_blocks(n, kThreads, 0x7fffffff), kThreads, 0, stream>>>(n, in, out, Op{});
  check_launch(kernel);
}
}  // namespace

template <class T>
void gelu_forward(int64_t n, const T* x, T* y, cudaStream_t stream) {
  launch_map<T, GeluForward>(n, {{x}}, {{y}}, stream, "cuda::gelu_forward");
}
template <class T>
void gelu_backward(int64_t n, const T* x, const T* dy, T* dx, cudaStream_t stream) {
  launch_map<T, GeluBackward>(n, {{x, dy}}, {{dx}}, stream, "cuda::gelu_backward");
}
template <class T>
void silu_forward(int64_t n, const T* x, T* y, cudaStream_t stream) {
  launch_map<T, SiluForward>(n, {{x}}, {{y}}, stream, "cuda::silu_forward");
}
template <class T>
void silu_backward(int64_t n, const T* x, const T* dy, T* dx, cudaStream_t stream) {
  launch_map<T, SiluBackward>(n, {{x, dy}}, {{dx}}, stream, "cuda::silu_backward");
}
template <class T>
void swiglu_forward(int64_t n, const T* gate, const T* up, T* y, cudaStream_t stream) {
  launch_map<T, SwigluForward>(n, {{gate, up}}, {{y}}, stream, "cuda::swiglu_forward");
}
template <class T>
void swiglu_backward(int64_t n, const T* gate, const T* up, const T* dy, T* dgate, T* dup, cudaStream_t stream) {
  launch_map<T, SwigluBackward>(n, {{gate, up, dy}}, {{dgate, dup}}, stream, "cuda::swiglu_backward");
}

#define LLM_INSTANTIATE_ACTIVATIONS(T)                                                             \
  template void gelu_forward<T>(int64_t, const T*, T*, cudaStream_t);                              \
  template void gelu_backward<T>(int64_t, const T*, const T*, T*, cudaStream_t);                   \
  template void silu_forward<T>(int64_t, const T*, T*, cudaStream_t);                              \
  template void silu_backward<T>(int64_t, const T*, const T*, T*, cudaStream_t);                   \
  template void swiglu_forward<T>(int64_t, const T*, const T*, T*, cudaStream_t);                  \
  template void swiglu_backward<T>(int64_t, const T*, const T*, const T*, T*, T*, cudaStream_t);
LLM_INSTANTIATE_ACTIVATIONS(float)
LLM_INSTANTIATE_ACTIVATIONS(bf16)
#undef LLM_INSTANTIATE_ACTIVATIONS

}  // namespace llm::cuda
