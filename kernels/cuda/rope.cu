// Rotary position embedding (kernels/cuda/fused.h), as kernels/cpu/rope.cpp: pair i of every head
// rotates by pos * f_i (kernels/rope_frequencies.h), the angle and its sine/cosine computed in double
// (pos * f_i reaches ~3e4 radians, where an fp32 angle would be off by ~1e-3) and rounded to fp32 once. Each thread
// reads both elements of its pair before writing either, so out may equal x.
// Fast: one block per token, its cosine/sine table computed once in shared memory for all heads.
// Simple: one thread per (token, head, pair), computing its own angle.
#include <algorithm>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/fused.h"

namespace llm::cuda {

namespace {
using namespace detail;

constexpr int kMaxThreads = 256;

// cos and (sign ·) sin of pos · f_i.
__device__ __forceinline__ void rope_angle(int32_t pos, int64_t i, int64_t D, const RopeFrequencies& freqs,
                                           bool inverse, float* cos_out, float* sin_out) {
  const double freq = rope_frequency(freqs, i, D);
  double s, c;
  sincos(double(pos) * freq, &s, &c);
  *cos_out = float(c);
  *sin_out = float(inverse ? -s : s);
}

// Rotates pair i of the head starting at xr (output at yr).
template <class T>
__device__ __forceinline__ void rotate_pair(const T* xr, T* yr, int64_t i, int64_t half, bool interleaved, float c,
                                            float s) {
  const int64_t ia = interleaved ? 2 * i : i, ib = interleaved ? 2 * i + 1 : i + half;
  const float a = to_f32(xr[ia]), b = to_f32(xr[ib]);
  yr[ia] = from_f32<T>(a * c - b * s);
  yr[ib] = from_f32<T>(a * s + b * c);
}

template <class T>
__global__ void __launch_bounds__(kMaxThreads) rope_fast(int64_t H, int64_t D, const T* x, const int32_t* positions,
                                                         RopeFrequencies freqs, bool interleaved, bool inverse,
                                                         T* out) {
  extern __shared__ float table[];  // cos[half], then sin[half]
  const int64_t n = blockIdx.x, half = D / 2;
  float* cos_t = table;
  float* sin_t = table + half;
  const int32_t pos = positions[n];
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) rope_angle(pos, i, D, freqs, inverse, &cos_t[i], &sin_t[i]);
  __syncthreads();
  for (int64_t q = threadIdx.x; q < H * half; q += blockDim.x) {
    const int64_t h = q / half, i = q - h * half;
    const int64_t offset = (n * H + h) * D;
    rotate_pair(x + offset, out + offset, i, half, interleaved, cos_t[i], sin_t[i]);
  }
}

template <class T>
__global__ void rope_simple(int64_t N, int64_t H, int64_t D, const T* x, const int32_t* positions,
                            RopeFrequencies freqs, bool interleaved, bool inverse, T* out) {
  const int64_t half = D / 2;
  const int64_t q = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;  // (n, h, i) flattened
  if (q >= N * H * half) return;
  const int64_t i = q % half, nh = q / half;
  float c, s;
  rope_angle(positions[nh / H], i, D, freqs, inverse, &c, &s);
  rotate_pair(x + nh * D, out + nh * D, i, half, interleaved, c, s);
}
}  // namespace

template <class T>
void rope(int64_t N, int64_t H, int64_t D, const T* x, const int32_t* positions, const RopeFrequencies& freqs,
          RopeLayout layout, bool inverse, T* out, cudaStream_t stream) {
  constexpr const char* kName = "cuda::rope";
  require(N >= 0 && N <= 0x7fffffff, kName, "the token count N must be in [0, 2^31)");
  require(H >= 1 && D >= 2 && D % 2 == 0, kName, "needs H >= 1 heads of an even head dimension D >= 2");
  if (N == 0) return;
  const bool interleaved = layout == RopeLayout::kInterleaved;
  const int64_t half = D / 2;
  if (fused_variant() == FusedVariant::kSimple) {
    rope_simple<T><<<simple_blocks(N * H * half), kSimpleThreads, 0, stream>>>(N, H, D, x, positions, freqs,
                                                                                interleaved, inverse, out);
  } else {
    const int threads = std::min(kMaxThreads, row_block_threads(H * half));
    rope_fast<T><<<unsigned(N), threads, size_t(D) * sizeof(float), stream>>>(H, D, x, positions, freqs, interleaved,
                                                                              inverse, out);
  }
  check_launch(kName);
}

template void rope<float>(int64_t, int64_t, int64_t, const float*, const int32_t*, const RopeFrequencies&, RopeLayout,
                          bool, float*, cudaStream_t);
template void rope<bf16>(int64_t, int64_t, int64_t, const bf16*, const int32_t*, const RopeFrequencies&, RopeLayout,
                         bool, bf16*, cudaStream_t);

}  // namespace llm::cuda
