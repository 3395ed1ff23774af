// Generation on the GPU: attention of new queries against a KV cache, and writing the new keys and
// values into it. Layouts and semantics exactly as cpu::attention_cached_forward (kernels/cpu/attention.h).
#pragma once
#include <cstdint>

#include "kernels/cuda/runtime.h"

namespace llm::cuda {

// q, out: [B, Tq, Hq, D]; k_cache, v_cache: [B, S, Hkv, D]; past: device int32 [B] (tokens row b had
// cached before these queries). Query t of row b attends to slots 0 .. min(past[b] + t, S - 1) (the
// last `window` of them when window > 0). T is float or bf16; scores, softmax and the weighted sum are
// fp32; any D in [1, 256], any alignment. Two kernels (fused.h's FusedVariant picks): kSimple, one
// warp per (row, query, head) over all its slots; kFast, for S > 128, one warp per 128 slots of each
// query head plus a combining pass (its partial sums take stream-ordered scratch memory,
// B·Tq·Hq·ceil(S/128)·(D + 2) floats, allocated and freed inside the call).
template <class T>
void attention_cached_forward(int64_t B, int64_t Tq, int64_t S, int64_t Hq, int64_t Hkv, int64_t D, const T* q,
                              const T* k_cache, const T* v_cache, const int32_t* past, float scale, T* out,
                              int64_t window, cudaStream_t stream);

// cache[b, past[b] + t, :] = x[b, t, :] for t < n_new[b]: x [B, T_new, row], cache [B, S, row], past and
// n_new device int32 [B]; the caller guarantees past[b] + n_new[b] <= S (slots past S are never written).
template <class T>
void kv_cache_write(int64_t B, int64_t T_new, int64_t S, int64_t row, const T* x, const int32_t* past,
                    const int32_t* n_new, T* cache, cudaStream_t stream);

}  // namespace llm::cuda
