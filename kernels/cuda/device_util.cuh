// Device helpers shared by the fused kernels (an internal header of kernels/cuda/*.cu): element
// conversion, 16-byte vector loads, deterministic warp/block reductions, launch arithmetic.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "kernels/cuda/runtime.h"

namespace llm::cuda::detail {

// ---- element conversion: every kernel computes in fp32 ------------------------------------------
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }
template <class T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float x) { return __float2bfloat16_rn(x); }

// ---- packs: W consecutive elements moved as one access (16 bytes for W = kVecWidth<T>) ----------
template <class T> constexpr int kVecWidth = 16 / int(sizeof(T));

template <class T, int W>
struct alignas(sizeof(T) * W) Pack {
  T v[W];
};

// p must be aligned to sizeof(T) * W.
template <int W, class T>
__device__ __forceinline__ void load_pack(const T* p, float (&out)[W]) {
  const Pack<T, W> pack = *reinterpret_cast<const Pack<T, W>*>(p);
#pragma unroll
  for (int k = 0; k < W; ++k) out[k] = to_f32(pack.v[k]);
}
template <int W, class T>
__device__ __forceinline__ void store_pack(T* p, const float (&in)[W]) {
  Pack<T, W> pack;
#pragma unroll
  for (int k = 0; k < W; ++k) pack.v[k] = from_f32<T>(in[k]);
  *reinterpret_cast<Pack<T, W>*>(p) = pack;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Whether rows of C elements at these pointers (null ones ignored) can all be moved in 16-byte packs.
template <class T>
bool packable(int64_t C, std::initializer_list<const void*> pointers) {
  if (C % kVecWidth<T> != 0) return false;
  for (const void* p : pointers)
    if (p && !aligned16(p)) return false;
  return true;
}

// ---- reductions ---------------------------------------------------------------------------------
// Butterfly (xor) shuffles: with a commutative op every lane ends with the same bits, and the order of
// operations is fixed, so results are bit-identical from run to run.
__device__ __forceinline__ float shfl_xor(float v, int offset) { return __shfl_xor_sync(0xffffffffu, v, offset); }

template <class V, class Op>
__device__ __forceinline__ V warp_reduce(V v, Op op) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = op(v, shfl_xor(v, offset));
  return v;
}

// Combines one value per thread over the whole block with the commutative op (identity: op's neutral
// element) and returns the result to every thread. blockDim.x must be a multiple of 32 and every
// thread must call it. Ends with __syncthreads, so it may be called again right away.
template <class V, class Op>
__device__ V block_reduce(V v, Op op, V identity) {
  __shared__ V partial[32];
  const int lane = int(threadIdx.x) & 31, warp = int(threadIdx.x) >> 5;
  v = warp_reduce(v, op);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < int(blockDim.x >> 5) ? partial[lane] : identity;
  v = warp_reduce(v, op);  // every warp reduces the same 32 values the same way
  __syncthreads();         // partial is free for the next call
  return v;
}

struct Add {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};
__device__ __forceinline__ float block_sum(float v) { return block_reduce(v, Add{}, 0.f); }

// ---- launch arithmetic --------------------------------------------------------------------------
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Threads for a block that owns one row of `items` work items: enough warps to give each thread one
// item, between one warp and 1024 threads.
inline int row_block_threads(int64_t items) {
  const int64_t warps = ceil_div(items < 1 ? 1 : items, 32);
  return int(warps > 32 ? 1024 : warps * 32);
}

// Blocks for a grid-stride loop over `items` with `threads` per block, capped (the loop covers the rest).
inline unsigned grid_blocks(int64_t items, int threads, int64_t cap = 8192) {
  const int64_t blocks = ceil_div(items, threads);
  return unsigned(blocks < 1 ? 1 : (blocks > cap ? cap : blocks));
}

// Bad arguments are reported like launch failures: std::runtime_error naming the kernel.
inline void require(bool ok, const char* kernel, const char* what) {
  if (!ok) throw std::runtime_error(std::string(kernel) + ": " + what);
}
// N rows of C >= 1 elements, one block (or thread) per row: N must fit a grid's x dimension.
inline void require_rows(int64_t N, int64_t C, const char* kernel) {
  require(N >= 0 && N <= 0x7fffffff, kernel, "the row count N must be in [0, 2^31)");
  require(C >= 1, kernel, "the row length must be at least 1");
}

// The simple variants: one thread per row / column / element, in blocks of this many threads.
constexpr int kSimpleThreads = 128;
inline unsigned simple_blocks(int64_t items) { return unsigned(ceil_div(items < 1 ? 1 : items, kSimpleThreads)); }

// Stream-ordered scratch memory (cudaMallocAsync), released in stream order when it goes out of scope:
// kernels that need a partial-sums buffer take it here, so their callers pass no workspace.
class StreamScratch {
 public:
  StreamScratch(size_t bytes, cudaStream_t stream, const char* kernel) : stream_(stream) {
    check(cudaMallocAsync(&ptr_, bytes ? bytes : 1, stream), kernel);
  }
  ~StreamScratch() { cudaFreeAsync(ptr_, stream_); }
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;
  template <class T> T* as() const { return static_cast<T*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
};

}  // namespace llm::cuda::detail
