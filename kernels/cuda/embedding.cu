// Embedding lookup and its deterministic scatter-add backward (kernels/cuda/fused.h), as
// kernels/cpu/embedding.cpp. Every element of dtable is one thread's running sum, from 0, of the
// matching dout values in increasing i: the same additions in the same order as the CPU kernel, so
// the fp32 result is bit-identical to it and from run to run.
// Fast backward: block (id range, column tile) owns 64 rows × 256 columns of dtable; each warp walks
// all N ids 32 at a time, a ballot picks the ids in its range, and each lane adds its column of those
// rows: each of the V/64 · C/32 warps does N/32 ballots (GPT-2, N = 8192: 4.8M in all), plus N · C
// additions and V · C zeroing stores over the grid. Simple backward: one thread per column walks all
// ids. Forward: fast copies 16-byte packs, a block per row; simple an element per thread.
#include <algorithm>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/fused.h"

namespace llm::cuda {

namespace {
using namespace detail;

constexpr int kRowThreads = 256;
constexpr int64_t kIdsPerRange = 64;
constexpr int kColumnTile = 256;  // threads of a backward block: 8 warps of 32 columns

template <class T, int W>
__global__ void __launch_bounds__(kRowThreads)
    embedding_forward_fast(int64_t C, const int32_t* ids, const T* table, T* out) {
  const int64_t i = blockIdx.x, packs = C / W;
  const T* src = table + int64_t(ids[i]) * C;
  T* dst = out + i * C;
  for (int64_t p = threadIdx.x; p < packs; p += blockDim.x)
    *reinterpret_cast<Pack<T, W>*>(dst + p * W) = *reinterpret_cast<const Pack<T, W>*>(src + p * W);
}

template <class T>
__global__ void embedding_forward_simple(int64_t N, int64_t C, const int32_t* ids, const T* table, T* out) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= N * C) return;
  const int64_t i = e / C, c = e - i * C;
  out[e] = table[int64_t(ids[i]) * C + c];
}

template <class T>
__global__ void __launch_bounds__(kColumnTile)
    embedding_backward_fast(int64_t N, int64_t C, int64_t V, const int32_t* ids, const T* dout, float* dtable) {
  const int64_t warp_first_column = int64_t(blockIdx.y) * kColumnTile + (threadIdx.x & ~31u);
  if (warp_first_column >= C) return;  // the whole warp: the ballots below need all 32 lanes
  const int lane = int(threadIdx.x & 31u);
  const int64_t c = warp_first_column + lane;
  const bool has_column = c < C;
  const int64_t v0 = int64_t(blockIdx.x) * kIdsPerRange;
  const int64_t v1 = V - v0 < kIdsPerRange ? V : v0 + kIdsPerRange;
  if (has_column)
    for (int64_t v = v0; v < v1; ++v) dtable[v * C + c] = 0.f;
  for (int64_t base = 0; base < N; base += 32) {
    const int32_t id = base + lane < N ? ids[base + lane] : -1;
    unsigned hits = __ballot_sync(0xffffffffu, id >= v0 && id < v1);
    while (hits) {  // warp-uniform: lowest bit (smallest i) first
      const int bit = __ffs(hits) - 1;
      hits &= hits - 1;
      const int64_t row = __shfl_sync(0xffffffffu, id, bit);
      if (has_column) dtable[row * C + c] += to_f32(dout[(base + bit) * C + c]);
    }
  }
}

template <class T>
__global__ void embedding_backward_simple(int64_t N, int64_t C, int64_t V, const int32_t* ids, const T* dout,
                                          float* dtable) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  for (int64_t v = 0; v < V; ++v) dtable[v * C + c] = 0.f;
  for (int64_t i = 0; i < N; ++i) dtable[int64_t(ids[i]) * C + c] += to_f32(dout[i * C + c]);
}
}  // namespace

template <class T>
void embedding_forward(int64_t N, int64_t C, const int32_t* ids, const T* table, T* out, cudaStream_t stream) {
  constexpr const char* kName = "cuda::embedding_forward";
  require_rows(N, C, kName);
  if (N == 0) return;
  constexpr int W = kVecWidth<T>;
  if (fused_variant() == FusedVariant::kSimple)
    embedding_forward_simple<T><<<simple_blocks(N * C), kSimpleThreads, 0, stream>>>(N, C, ids, table, out);
  else if (packable<T>(C, {table, out}))
    embedding_forward_fast<T, W><<<unsigned(N), std::min(kRowThreads, row_block_threads(C / W)), 0, stream>>>(
        C, ids, table, out);
  else
    embedding_forward_fast<T, 1><<<unsigned(N), std::min(kRowThreads, row_block_threads(C)), 0, stream>>>(
        C, ids, table, out);
  check_launch(kName);
}

template <class T>
void embedding_backward(int64_t N, int64_t C, int64_t V, const int32_t* ids, const T* dout, float* dtable,
                        cudaStream_t stream) {
  constexpr const char* kName = "cuda::embedding_backward";
  require(N >= 0 && C >= 1 && V >= 1, kName, "needs N >= 0 ids into a V x C table with V, C >= 1");
  require(ceil_div(C, kColumnTile) <= 65535, kName, "C is too large for the grid");
  if (fused_variant() == FusedVariant::kSimple)
    embedding_backward_simple<T><<<simple_blocks(C), kSimpleThreads, 0, stream>>>(N, C, V, ids, dout, dtable);
  else
    embedding_backward_fast<T><<<dim3(unsigned(ceil_div(V, kIdsPerRange)), unsigned(ceil_div(C, kColumnTile))),
                                 kColumnTile, 0, stream>>>(N, C, V, ids, dout, dtable);
  check_launch(kName);
}

template void embedding_forward<float>(int64_t, int64_t, const int32_t*, const float*, float*, cudaStream_t);
template void embedding_forward<bf16>(int64_t, int64_t, const int32_t*, const bf16*, bf16*, cudaStream_t);
template void embedding_backward<float>(int64_t, int64_t, int64_t, const int32_t*, const float*, float*,
                                        cudaStream_t);
template void embedding_backward<bf16>(int64_t, int64_t, int64_t, const int32_t*, const bf16*, float*,
                                       cudaStream_t);

}  // namespace llm::cuda
