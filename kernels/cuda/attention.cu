// Flash attention on the GPU (see attention.h for the contract; the CPU kernel in
// kernels/cpu/attention.cpp is the reference for layouts and formulas).
//
// Two implementations of each direction:
//  - simple: one warp per query row (forward, dq) or key row (dk, dv); each lane holds D/32 columns,
//    dot products are warp-shuffle reductions, the softmax is online in fp32. Any even D ≤ 256, any
//    alignment, deterministic. Slow; it is the reference the tensor-core kernels are tested against.
//  - tensor-core (D = 64, 128), FlashAttention-2 style with mma.sync m16n8k16 (bf16 in, fp32 out):
//    forward: one block per (batch, head, 64 queries), 4 warps of 16 query rows; K/V tiles of 64 keys
//    double-buffered with cp.async; S, the online softmax and the P·V accumulator stay in registers.
//    backward: dK, dV by one block per (batch, kv head, 64 keys), 4 warps of 16 keys that own their
//    rows in registers and walk the query tiles of every query head of the group that see the keys;
//    then dQ by one block per (batch, head, 64 queries) walking the key tiles as the forward does.
//    Every output has one owner: no atomics, deterministic results.
//    On Hopper the forward runs attention_wgmma.cu's warpgroup kernel instead when it is compiled in
//    and its self-check passed (attention_impl.cuh); this file's forward stays the fallback.
//
// Masks. Query t sees keys [first(t), t], first(t) = max(start of t's document run, t - window + 1).
// first() never decreases along t, so the keys a query tile sees and the queries a key tile is seen by
// are contiguous ranges, and whole tiles outside them are skipped.
#include "kernels/cuda/attention.h"

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/attention_impl.cuh"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/host_checks.h"
#include "kernels/cuda/ptx.cuh"

namespace llm::cuda {

const char* to_string(AttentionKernel kernel) {
  switch (kernel) {
    case AttentionKernel::kAuto: return "auto";
    case AttentionKernel::kSimple: return "simple";
    case AttentionKernel::kTensorCore: return "tensor-core";
  }
  return "?";
}

namespace {

using namespace attention_impl;

// ---- masks (warp_first_keys: attention_impl.cuh) -------------------------------------------------

// first(t) for every query of every batch row, into starts[B, T]: one warp per 32 queries.
__global__ void first_keys_kernel(const int32_t* doc, int T, int window, int32_t* starts) {
  const int t0 = (blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32) * 32;
  if (t0 >= T) return;  // whole warps
  const int b = blockIdx.y;
  const int first = warp_first_keys(doc ? doc + static_cast<int64_t>(b) * T : nullptr, T, window, t0);
  const int t = t0 + (threadIdx.x & 31);
  if (t < T) starts[static_cast<int64_t>(b) * T + t] = first;
}

// Sum over the warp, the same bits in every lane.
__device__ __forceinline__ float warp_sum(float x) { return detail::warp_reduce(x, detail::Add{}); }

// Δ[b, h, t] = Σ_d dO·O (fp32): one warp per (b, t, h) row.
__global__ void delta_kernel(Params p) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= static_cast<int64_t>(p.B) * p.T * p.Hq) return;
  const int h = static_cast<int>(row % p.Hq), t = static_cast<int>(row / p.Hq % p.T), b = static_cast<int>(row / (int64_t(p.Hq) * p.T));
  const int64_t base = row * p.D;
  float dot = 0.f;
  for (int d = threadIdx.x & 31; d < p.D; d += 32) dot += __bfloat162float(p.dout[base + d]) * __bfloat162float(p.out[base + d]);
  dot = warp_sum(dot);
  if ((threadIdx.x & 31) == 0) p.delta[p.stat(b, h, t)] = dot;
}

// ---- simple kernels: one warp per row ------------------------------------------------------------

constexpr int kSimpleMaxD = checks::kAttentionMaxHeadDim;
constexpr int kPerLane = kSimpleMaxD / 32;  // lane l holds columns l, l + 32, ...
constexpr int kSimpleWarps = 4;

// Columns of a row in lane registers (zero past D).
__device__ __forceinline__ void load_row(const bf16* src, int D, float (&x)[kPerLane]) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) x[j] = lane + 32 * j < D ? __bfloat162float(src[lane + 32 * j]) : 0.f;
}
__device__ __forceinline__ float dot_row(const float (&x)[kPerLane], const bf16* src, int D) {
  const int lane = threadIdx.x & 31;
  float s = 0.f;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j)
    if (lane + 32 * j < D) s += x[j] * __bfloat162float(src[lane + 32 * j]);
  return warp_sum(s);
}
__device__ __forceinline__ void store_row(bf16* dst, int D, const float (&x)[kPerLane], float factor) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j)
    if (lane + 32 * j < D) dst[lane + 32 * j] = __float2bfloat16_rn(x[j] * factor);
}

// Forward, one warp per (b, t, h): keys first(t) .. t one at a time with an online softmax.
__global__ void simple_forward_kernel(Params p) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kSimpleWarps + threadIdx.x / 32;
  if (row >= static_cast<int64_t>(p.B) * p.T * p.Hq) return;
  const int h = static_cast<int>(row % p.Hq), t = static_cast<int>(row / p.Hq % p.T), b = static_cast<int>(row / (int64_t(p.Hq) * p.T));
  const int hk = h / p.group;
  const int32_t* doc_row = p.doc ? p.doc + static_cast<int64_t>(b) * p.T : nullptr;
  const int first = __shfl_sync(kFullMask, warp_first_keys(doc_row, p.T, p.window, t), 0);
  float q[kPerLane], acc[kPerLane];
  load_row(p.q + p.q_row(b, t, h), p.D, q);
  for (int j = 0; j < kPerLane; ++j) acc[j] = 0.f;
  float m = -INFINITY, l = 0.f;
  for (int s = first; s <= t; ++s) {
    const float x = p.scale * dot_row(q, p.k + p.kv_row(b, s, hk), p.D);
    const float m_new = fmaxf(m, x);
    const float alpha = expf(m - m_new), e = expf(x - m_new);  // alpha = 0 on the first key
    l = l * alpha + e;
    const bf16* vrow = p.v + p.kv_row(b, s, hk);
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j)
      acc[j] = acc[j] * alpha + (lane + 32 * j < p.D ? e * __bfloat162float(vrow[lane + 32 * j]) : 0.f);
    m = m_new;
  }
  store_row(p.o + p.o_row(b, t, h), p.D, acc, 1.f / l);  // l ≥ 1: key t itself is always visible
  if ((threadIdx.x & 31) == 0) p.lse_out[p.stat(b, h, t)] = m + logf(l);
}

// dq, one warp per (b, t, h): dq = scale · Σ_s dS[t, s] k_s with dS = P ⊙ (dP − Δ).
__global__ void simple_dq_kernel(Params p) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kSimpleWarps + threadIdx.x / 32;
  if (row >= static_cast<int64_t>(p.B) * p.T * p.Hq) return;
  const int h = static_cast<int>(row % p.Hq), t = static_cast<int>(row / p.Hq % p.T), b = static_cast<int>(row / (int64_t(p.Hq) * p.T));
  const int hk = h / p.group;
  float q[kPerLane], dout[kPerLane], dq[kPerLane];
  load_row(p.q + p.q_row(b, t, h), p.D, q);
  load_row(p.dout + p.o_row(b, t, h), p.D, dout);
  for (int j = 0; j < kPerLane; ++j) dq[j] = 0.f;
  const float lse = p.lse[p.stat(b, h, t)], delta = p.delta[p.stat(b, h, t)];
  const int lane = threadIdx.x & 31;
  for (int s = p.first_key[static_cast<int64_t>(b) * p.T + t]; s <= t; ++s) {
    const bf16* krow = p.k + p.kv_row(b, s, hk);
    const float prob = expf(p.scale * dot_row(q, krow, p.D) - lse);
    const float ds = prob * (dot_row(dout, p.v + p.kv_row(b, s, hk), p.D) - delta);
#pragma unroll
    for (int j = 0; j < kPerLane; ++j)
      if (lane + 32 * j < p.D) dq[j] += ds * __bfloat162float(krow[lane + 32 * j]);
  }
  store_row(p.dq + p.q_row(b, t, h), p.D, dq, p.scale);
}

// dk, dv, one warp per (b, s, kv head): the queries of the group's heads that see key s are
// t = s, s + 1, ... while first(t) ≤ s (first() never decreases).
__global__ void simple_dkv_kernel(Params p) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kSimpleWarps + threadIdx.x / 32;
  if (row >= static_cast<int64_t>(p.B) * p.T * p.Hkv) return;
  const int hk = static_cast<int>(row % p.Hkv), s = static_cast<int>(row / p.Hkv % p.T), b = static_cast<int>(row / (int64_t(p.Hkv) * p.T));
  float k[kPerLane], v[kPerLane], dk[kPerLane], dv[kPerLane];
  load_row(p.k + p.kv_row(b, s, hk), p.D, k);
  load_row(p.v + p.kv_row(b, s, hk), p.D, v);
  for (int j = 0; j < kPerLane; ++j) dk[j] = dv[j] = 0.f;
  const int32_t* first_key = p.first_key + static_cast<int64_t>(b) * p.T;
  const int lane = threadIdx.x & 31;
  for (int g = 0; g < p.group; ++g) {
    const int h = hk * p.group + g;
    for (int t = s; t < p.T && first_key[t] <= s; ++t) {
      const bf16* qrow = p.q + p.q_row(b, t, h);
      const bf16* dorow = p.dout + p.o_row(b, t, h);
      const float prob = expf(p.scale * dot_row(k, qrow, p.D) - p.lse[p.stat(b, h, t)]);
      const float ds = prob * (dot_row(v, dorow, p.D) - p.delta[p.stat(b, h, t)]);
#pragma unroll
      for (int j = 0; j < kPerLane; ++j)
        if (lane + 32 * j < p.D) {
          dv[j] += prob * __bfloat162float(dorow[lane + 32 * j]);
          dk[j] += ds * __bfloat162float(qrow[lane + 32 * j]);
        }
    }
  }
  store_row(p.dk + p.kv_row(b, s, hk), p.D, dk, p.scale);
  store_row(p.dv + p.kv_row(b, s, hk), p.D, dv, 1.f);
}

// ---- tensor-core building blocks ----------------------------------------------------------------
// Fragment layouts of mma.m16n8k16 (PTX ISA), with g = lane / 4 and c = lane % 4:
//   A (16×16, row-major): a[0] = (row g, k 2c..2c+1), a[1] = (g + 8, 2c), a[2] = (g, 2c + 8), a[3] = (g + 8, 2c + 8)
//   B (16×8):             b[0] = (k 2c..2c+1, col g),  b[1] = (k 2c + 8.., col g)
//   C (16×8, fp32):       c[0..1] = (row g, cols 2c, 2c + 1), c[2..3] = (row g + 8, same cols)
// so the C fragments of two adjacent 8-column tiles, rounded to bf16 pairs, are the A fragment of
// the next product over those 16 columns (P·V, Pᵀ·dO, dSᵀ·Q, dS·K).
//
// Tiles in shared memory are [rows][kCols] bf16 (kCols ≥ 64) with 16-byte chunks XOR-swizzled by the
// row (chunk c of row r lives at chunk c ^ (r % 8)): the 8 rows that one ldmatrix phase reads hit 8
// different bank groups, and a 16-byte cp.async writes one whole chunk.

constexpr int kTile = 64;  // the rows a block owns (queries or keys), and the tile it walks the other side in
constexpr int kWarps = 4;  // each owns 16 rows of the block's tile
constexpr int kThreads = kWarps * 32;

template <int kCols>
__device__ __forceinline__ int swizzled(int row, int chunk) {
  static_assert(kCols >= 64, "the swizzle needs at least 8 chunks per row");
  return row * kCols + ((chunk ^ (row & 7)) << 3);
}

using ptx::pack_bf16;
using ptx::smem_address;
// 16 (or 4) bytes global → shared; zero-filled (nothing read) when !valid.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  ptx::cp_async_16(smem_address(dst), src, valid ? 16 : 0);
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool valid) {
  ptx::cp_async_4(smem_address(dst), src, valid ? 4 : 0);
}
using ptx::cp_async_commit;
// Waits until at most one committed group (the newest) is still in flight.
__device__ __forceinline__ void cp_async_wait_all_but_newest() { ptx::cp_async_wait<1>(); }
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const bf16* p) { ptx::ldmatrix_x4<false>(r, smem_address(p)); }
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const bf16* p) { ptx::ldmatrix_x4<true>(r, smem_address(p)); }
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) { ptx::mma_bf16(c, a, b0, b1); }

// This lane's ldmatrix.x4 source address for the 16×16 block whose top-left is (row0, 16-byte chunk0),
// in either of the two orders of its four 8×8 matrices:
//  rows first: (rows +0, chunk +0), (+8, +0), (+0, +1), (+8, +1). Without .trans: the A fragment of a
//    row-major [m][k] tile. With .trans: the B fragments of a [k][n] tile (n contiguous), b0, b1 of
//    the first 8-wide n tile, then b0, b1 of the second.
//  chunks first: (rows +0, chunk +0), (+0, +1), (+8, +0), (+8, +1). Without .trans: the B fragments
//    (b0, b1, b0, b1) of two n tiles of an [n][k] tile (k contiguous). With .trans: the A fragment of
//    a [k][m] tile (m contiguous).
template <int kCols>
__device__ __forceinline__ const bf16* rows_first(const bf16* tile, int row0, int chunk0) {
  const int lane = threadIdx.x & 31;
  return tile + swizzled<kCols>(row0 + (lane & 7) + ((lane >> 3) & 1) * 8, chunk0 + (lane >> 4));
}
template <int kCols>
__device__ __forceinline__ const bf16* chunks_first(const bf16* tile, int row0, int chunk0) {
  const int lane = threadIdx.x & 31;
  return tile + swizzled<kCols>(row0 + (lane & 7) + (lane >> 4) * 8, chunk0 + ((lane >> 3) & 1));
}

// Rows [row0, row0 + 64) of a [.., T, H, D] tensor (row stride `stride` elements, rows past T
// zero-filled) into a swizzled [64][D] tile; all threads of the block take part.
template <int D>
__device__ __forceinline__ void load_tile(bf16* tile, const bf16* rows, int64_t stride, int row0, int T) {
  constexpr int kChunks = D / 8;
  for (int i = threadIdx.x; i < kTile * kChunks; i += kThreads) {
    const int r = i / kChunks, c = i % kChunks;
    const bool valid = row0 + r < T;
    cp_async16(tile + swizzled<D>(r, c), valid ? rows + (row0 + r) * stride + c * 8 : rows, valid);
  }
}

// ---- masks of one warp's 16 query rows -------------------------------------------------------------

// Warp w of a query-tile block owns rows r0 .. r0 + 15 of the tile; this thread's C fragment rows are
// r0 + g and r0 + g + 8. Built from `first` = first(r0 + lane) (T past the end), warp-collectively.
struct WarpRows {
  int r0, row_lo, first_lo, first_hi, first_min, first_max;

  __device__ WarpRows(int r0_, int first) : r0(r0_) {
    const int g = (threadIdx.x & 31) >> 2;
    row_lo = r0 + g;
    first_lo = __shfl_sync(kFullMask, first, g);
    first_hi = __shfl_sync(kFullMask, first, g + 8);
    first_min = __shfl_sync(kFullMask, first, 0);  // first() never decreases along the rows
    first_max = __shfl_sync(kFullMask, first, 15);
  }
  // Some row sees some key of [k0, k0 + 64): not all keys after the last row or before the first key.
  __device__ bool sees_tile(int k0) const { return k0 <= r0 + 15 && k0 + kTile - 1 >= first_min; }
  // Every row sees every key of the tile (rows past T see nothing, so this is false for them).
  __device__ bool sees_whole_tile(int k0) const { return k0 + kTile - 1 <= r0 && k0 >= first_max; }
  // Row r0 + g + 8·half sees `key`.
  __device__ bool sees(int half, int key) const { return key >= (half ? first_hi : first_lo) && key <= row_lo + 8 * half; }
};

// ---- tensor-core forward -----------------------------------------------------------------------

template <int D>
constexpr size_t forward_smem_bytes() {
  return sizeof(bf16) * kTile * D * 5;  // Q, then K and V of two stages
}

// The (query tile, head, batch row) of a query-tile block. Later query tiles see more keys: they come
// first in the grid so the tail of the launch is short.
struct QueryTileJob {
  int t0, h, b;
  __device__ explicit QueryTileJob(const Params& p) {
    const int num_q_tiles = (p.T + kTile - 1) / kTile;
    const int64_t job = blockIdx.x;
    t0 = (num_q_tiles - 1 - static_cast<int>(job / (static_cast<int64_t>(p.B) * p.Hq))) * kTile;
    h = static_cast<int>(job % p.Hq);
    b = static_cast<int>(job / p.Hq % p.B);
  }
};

// One block per (batch row, query head, 64 queries); warp w owns queries t0 + 16w .. t0 + 16w + 15.
// Scores are kept in log2 units (scale·log2(e) folded in) so the softmax uses exp2.
template <int D>
__global__ void __launch_bounds__(kThreads) flash_forward_kernel(Params p) {
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* q_s = reinterpret_cast<bf16*>(smem);
  bf16* k_s = q_s + kTile * D;      // [2 stages][64][D]
  bf16* v_s = k_s + 2 * kTile * D;  // [2 stages][64][D]
  __shared__ int block_first_key;

  const QueryTileJob job(p);
  const int t0 = job.t0, h = job.h, b = job.b, hk = h / p.group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31, c = lane & 3;
  const int r0 = t0 + warp * 16;
  const bool warp_active = r0 < p.T;  // warp-uniform
  const int first = warp_active ? warp_first_keys(p.doc ? p.doc + static_cast<int64_t>(b) * p.T : nullptr, p.T, p.window, r0) : p.T;
  const WarpRows rows(r0, first);
  if (threadIdx.x == 0) block_first_key = first;
  __syncthreads();
  const int tile_begin = block_first_key / kTile, tile_end = (min(t0 + kTile, p.T) - 1) / kTile + 1;

  const int64_t q_stride = p.q_stride, kv_stride = p.kv_stride;
  const bf16* k_rows = p.k + p.kv_row(b, 0, hk);
  const bf16* v_rows = p.v + p.kv_row(b, 0, hk);
  load_tile<D>(q_s, p.q + p.q_row(b, 0, h), q_stride, t0, p.T);
  load_tile<D>(k_s, k_rows, kv_stride, tile_begin * kTile, p.T);
  load_tile<D>(v_s, v_rows, kv_stride, tile_begin * kTile, p.T);
  cp_async_commit();

  const float scale_log2 = p.scale * kLog2e;
  uint32_t q_frag[D / 16][4];
  float o[D / 8][4] = {};
  // Running max (log2 units) and this thread's partial row sums, rows g and g + 8.
  float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.f, l_hi = 0.f;

  for (int tile = tile_begin; tile < tile_end; ++tile) {
    const int stage = (tile - tile_begin) & 1;
    if (tile + 1 < tile_end) {  // the next stage was last read before the previous iteration's barrier
      load_tile<D>(k_s + (stage ^ 1) * kTile * D, k_rows, kv_stride, (tile + 1) * kTile, p.T);
      load_tile<D>(v_s + (stage ^ 1) * kTile * D, v_rows, kv_stride, (tile + 1) * kTile, p.T);
    }
    cp_async_commit();  // possibly empty, so that "all but the newest" is always this tile's group
    cp_async_wait_all_but_newest();
    __syncthreads();
    if (tile == tile_begin)
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks) ldmatrix_x4(q_frag[ks], rows_first<D>(q_s, warp * 16, ks * 2));

    const int k0 = tile * kTile;
    if (warp_active && rows.sees_tile(k0)) {
      const bf16* kt = k_s + stage * kTile * D;
      const bf16* vt = v_s + stage * kTile * D;
      float s[kTile / 8][4] = {};
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks)
#pragma unroll
        for (int np = 0; np < kTile / 16; ++np) {
          uint32_t kb[4];
          ldmatrix_x4(kb, chunks_first<D>(kt, np * 16, ks * 2));
          mma(s[2 * np], q_frag[ks], kb[0], kb[1]);
          mma(s[2 * np + 1], q_frag[ks], kb[2], kb[3]);
        }
      const bool masked = !rows.sees_whole_tile(k0);
      float mx_lo = m_lo, mx_hi = m_hi;
#pragma unroll
      for (int nt = 0; nt < kTile / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float x = s[nt][e] * scale_log2;
          if (masked && !rows.sees(e >> 1, k0 + nt * 8 + 2 * c + (e & 1))) x = -INFINITY;
          s[nt][e] = x;
          if (e < 2) mx_lo = fmaxf(mx_lo, x);
          else mx_hi = fmaxf(mx_hi, x);
        }
      // A row's values are spread over the 4 lanes of a quad.
      mx_lo = fmaxf(mx_lo, __shfl_xor_sync(kFullMask, mx_lo, 1));
      mx_lo = fmaxf(mx_lo, __shfl_xor_sync(kFullMask, mx_lo, 2));
      mx_hi = fmaxf(mx_hi, __shfl_xor_sync(kFullMask, mx_hi, 1));
      mx_hi = fmaxf(mx_hi, __shfl_xor_sync(kFullMask, mx_hi, 2));
      // A row that has seen nothing yet (max -inf) shifts by 0: exp2 then gives exact zeros, not NaN.
      const float shift_lo = mx_lo == -INFINITY ? 0.f : mx_lo, shift_hi = mx_hi == -INFINITY ? 0.f : mx_hi;
      const float alpha_lo = exp2f(m_lo - shift_lo), alpha_hi = exp2f(m_hi - shift_hi);
      m_lo = mx_lo;
      m_hi = mx_hi;
      l_lo *= alpha_lo;
      l_hi *= alpha_hi;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        o[n][0] *= alpha_lo;
        o[n][1] *= alpha_lo;
        o[n][2] *= alpha_hi;
        o[n][3] *= alpha_hi;
      }
#pragma unroll
      for (int nt = 0; nt < kTile / 8; ++nt) {
        s[nt][0] = exp2f(s[nt][0] - shift_lo);
        s[nt][1] = exp2f(s[nt][1] - shift_lo);
        s[nt][2] = exp2f(s[nt][2] - shift_hi);
        s[nt][3] = exp2f(s[nt][3] - shift_hi);
        l_lo += s[nt][0] + s[nt][1];
        l_hi += s[nt][2] + s[nt][3];
      }
      // O += P·V: P's C fragments are the A fragments over the tile's keys.
#pragma unroll
      for (int j = 0; j < kTile / 16; ++j) {
        const uint32_t pa[4] = {pack_bf16(s[2 * j][0], s[2 * j][1]), pack_bf16(s[2 * j][2], s[2 * j][3]),
                                pack_bf16(s[2 * j + 1][0], s[2 * j + 1][1]), pack_bf16(s[2 * j + 1][2], s[2 * j + 1][3])};
#pragma unroll
        for (int dp = 0; dp < D / 16; ++dp) {
          uint32_t vb[4];
          ldmatrix_x4_trans(vb, rows_first<D>(vt, j * 16, dp * 2));
          mma(o[2 * dp], pa, vb[0], vb[1]);
          mma(o[2 * dp + 1], pa, vb[2], vb[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
  }

  l_lo += __shfl_xor_sync(kFullMask, l_lo, 1);
  l_lo += __shfl_xor_sync(kFullMask, l_lo, 2);
  l_hi += __shfl_xor_sync(kFullMask, l_hi, 1);
  l_hi += __shfl_xor_sync(kFullMask, l_hi, 2);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = rows.row_lo + half * 8;
    if (row >= p.T) continue;
    const float l = half ? l_hi : l_lo, m = half ? m_hi : m_lo, inv = l > 0.f ? 1.f / l : 0.f;
    bf16* dst = p.o + p.o_row(b, row, h) + 2 * c;
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
      *reinterpret_cast<__nv_bfloat162*>(dst + n * 8) = __floats2bfloat162_rn(o[n][2 * half] * inv, o[n][2 * half + 1] * inv);
    if (c == 0) p.lse_out[p.stat(b, h, row)] = (m + log2f(l)) * kLn2;  // Σ exp = 2^m · l
  }
}

// ---- tensor-core backward ----------------------------------------------------------------------
// Two kernels, each owning its outputs, so nothing is accumulated with atomics and the results are
// deterministic: dK, dV by key tile, then dQ by query tile (recomputing P and dS: two more products).

template <int D>
constexpr size_t dkv_smem_bytes() {
  // K, V; Q and dO of two stages; lse, Δ, first() of two stages.
  return sizeof(bf16) * kTile * D * 6 + 2 * kTile * (2 * sizeof(float) + sizeof(int));
}

// One block per (batch row, kv head, 64 keys); warp w owns keys k0 + 16w .. k0 + 16w + 15 and their
// dK, dV rows in registers. For each query head of the group and each 64-query tile that sees these
// keys: Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ (keys × queries), P = exp(scale·S − lse), dS = P ⊙ (dP − Δ);
// dV += Pᵀ·dO, dK += dSᵀ·Q.
template <int D>
__global__ void __launch_bounds__(kThreads) flash_dkv_kernel(Params p) {
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* k_s = reinterpret_cast<bf16*>(smem);
  bf16* v_s = k_s + kTile * D;
  bf16* q_s = v_s + kTile * D;        // [2 stages][64][D]
  bf16* do_s = q_s + 2 * kTile * D;   // [2 stages][64][D]
  float* lse_s = reinterpret_cast<float*>(do_s + 2 * kTile * D);  // [2 stages][64]
  float* delta_s = lse_s + 2 * kTile;
  int* first_s = reinterpret_cast<int*>(delta_s + 2 * kTile);

  // Earlier key tiles are seen by more queries: they come first in the grid.
  const int64_t job = blockIdx.x;
  const int kv_tile = static_cast<int>(job / (static_cast<int64_t>(p.B) * p.Hkv));
  const int hk = static_cast<int>(job % p.Hkv), b = static_cast<int>(job / p.Hkv % p.B);
  const int k0 = kv_tile * kTile, k_last = min(k0 + kTile, p.T) - 1;
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const int32_t* first_key = p.first_key + static_cast<int64_t>(b) * p.T;

  // Query tiles t0 = k0, k0 + 64, ... see these keys while first(t0) ≤ k_last (first() grows with t),
  // so they are a prefix: count it, one candidate tile per thread.
  int n_q = 0;  // ≥ 1: query k0 sees key k0
  for (int base = k0;; base += kTile * kThreads) {
    const int t = base + threadIdx.x * kTile;
    const int seen = __syncthreads_count(t < p.T && first_key[t] <= k_last);
    n_q += seen;
    if (seen < kThreads) break;
  }
  const int n_iter = n_q * p.group;

  // Iteration `it` handles query head hk·group + it / n_q and queries k0 + (it % n_q)·64 ...
  auto load_stage = [&](int it, int stage) {
    const int h = hk * p.group + it / n_q, t0 = k0 + (it % n_q) * kTile;
    load_tile<D>(q_s + stage * kTile * D, p.q + p.q_row(b, 0, h), p.q_stride, t0, p.T);
    load_tile<D>(do_s + stage * kTile * D, p.dout + p.o_row(b, 0, h), p.Hq * D, t0, p.T);
    if (threadIdx.x < kTile) {
      const int t = t0 + threadIdx.x;
      const bool valid = t < p.T;
      const int64_t i = valid ? p.stat(b, h, t) : 0;
      cp_async4(lse_s + stage * kTile + threadIdx.x, p.lse + i, valid);
      cp_async4(delta_s + stage * kTile + threadIdx.x, p.delta + i, valid);
      cp_async4(first_s + stage * kTile + threadIdx.x, first_key + (valid ? t : 0), valid);
    }
  };
  load_tile<D>(k_s, p.k + p.kv_row(b, 0, hk), p.kv_stride, k0, p.T);
  load_tile<D>(v_s, p.v + p.kv_row(b, 0, hk), p.kv_stride, k0, p.T);
  load_stage(0, 0);
  cp_async_commit();

  const float scale_log2 = p.scale * kLog2e;
  const int key_lo = k0 + warp * 16 + g, key_hi = key_lo + 8;  // this thread's rows of Sᵀ
  float dk[D / 8][4] = {}, dv[D / 8][4] = {};

  for (int it = 0; it < n_iter; ++it) {
    const int stage = it & 1;
    if (it + 1 < n_iter) load_stage(it + 1, stage ^ 1);  // that stage was last read before the previous barrier
    cp_async_commit();
    cp_async_wait_all_but_newest();
    __syncthreads();
    const int t0 = k0 + (it % n_q) * kTile;
    const bf16* qt = q_s + stage * kTile * D;
    const bf16* dot = do_s + stage * kTile * D;
    const float* lse = lse_s + stage * kTile;
    const float* delta = delta_s + stage * kTile;
    const int* first = first_s + stage * kTile;

    // Unmasked when every query is real, after every key, and has its first key at or before k0.
    const bool masked = !(t0 + kTile <= p.T && k0 + kTile - 1 <= t0 && first[kTile - 1] <= k0);
    // P first, kept only as bf16 A fragments (pa[j]: queries 16j ..), so that Sᵀ and dPᵀ (each 32
    // floats) are never live together next to the dK, dV accumulators.
    uint32_t pa[kTile / 16][4];
    {
      float st[kTile / 8][4] = {};  // Sᵀ: this warp's 16 keys × 64 queries
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks) {
        uint32_t ka[4];
        ldmatrix_x4(ka, rows_first<D>(k_s, warp * 16, ks * 2));
#pragma unroll
        for (int np = 0; np < kTile / 16; ++np) {
          uint32_t qb[4];
          ldmatrix_x4(qb, chunks_first<D>(qt, np * 16, ks * 2));
          mma(st[2 * np], ka, qb[0], qb[1]);
          mma(st[2 * np + 1], ka, qb[2], qb[3]);
        }
      }
#pragma unroll
      for (int nt = 0; nt < kTile / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int qi = nt * 8 + 2 * c + (e & 1), t = t0 + qi, key = e >> 1 ? key_hi : key_lo;
          const float prob = exp2f(st[nt][e] * scale_log2 - lse[qi] * kLog2e);
          st[nt][e] = masked && !(t < p.T && first[qi] <= key && key <= t) ? 0.f : prob;
        }
#pragma unroll
      for (int j = 0; j < kTile / 16; ++j) {
        pa[j][0] = pack_bf16(st[2 * j][0], st[2 * j][1]);
        pa[j][1] = pack_bf16(st[2 * j][2], st[2 * j][3]);
        pa[j][2] = pack_bf16(st[2 * j + 1][0], st[2 * j + 1][1]);
        pa[j][3] = pack_bf16(st[2 * j + 1][2], st[2 * j + 1][3]);
      }
    }
    // dV += Pᵀ·dO over the 64 queries.
#pragma unroll
    for (int j = 0; j < kTile / 16; ++j)
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t ob[4];
        ldmatrix_x4_trans(ob, rows_first<D>(dot, j * 16, dp * 2));
        mma(dv[2 * dp], pa[j], ob[0], ob[1]);
        mma(dv[2 * dp + 1], pa[j], ob[2], ob[3]);
      }
    float dst[kTile / 8][4] = {};  // dPᵀ = V·dOᵀ, then dSᵀ = Pᵀ ⊙ (dPᵀ − Δ)
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      uint32_t va[4];
      ldmatrix_x4(va, rows_first<D>(v_s, warp * 16, ks * 2));
#pragma unroll
      for (int np = 0; np < kTile / 16; ++np) {
        uint32_t ob[4];
        ldmatrix_x4(ob, chunks_first<D>(dot, np * 16, ks * 2));
        mma(dst[2 * np], va, ob[0], ob[1]);
        mma(dst[2 * np + 1], va, ob[2], ob[3]);
      }
    }
    // P from its bf16 pairs: element e of C tile nt sits in pa[nt / 2][(nt % 2) * 2 + e / 2], half e % 2.
#pragma unroll
    for (int nt = 0; nt < kTile / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const uint32_t pair = pa[nt / 2][(nt % 2) * 2 + (e >> 1)];
        const float prob = __uint_as_float((e & 1 ? pair >> 16 : pair & 0xffffu) << 16);  // bf16 → fp32
        dst[nt][e] = prob * (dst[nt][e] - delta[nt * 8 + 2 * c + (e & 1)]);
      }
    // dK += dSᵀ·Q over the 64 queries (scale applied at the end).
#pragma unroll
    for (int j = 0; j < kTile / 16; ++j) {
      const uint32_t da[4] = {pack_bf16(dst[2 * j][0], dst[2 * j][1]), pack_bf16(dst[2 * j][2], dst[2 * j][3]),
                              pack_bf16(dst[2 * j + 1][0], dst[2 * j + 1][1]),
                              pack_bf16(dst[2 * j + 1][2], dst[2 * j + 1][3])};
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t qb[4];
        ldmatrix_x4_trans(qb, rows_first<D>(qt, j * 16, dp * 2));
        mma(dk[2 * dp], da, qb[0], qb[1]);
        mma(dk[2 * dp + 1], da, qb[2], qb[3]);
      }
    }
    __syncthreads();  // this stage is free again
  }

#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int key = half ? key_hi : key_lo;
    if (key >= p.T) continue;
    bf16* dk_row = p.dk + p.kv_row(b, key, hk) + 2 * c;
    bf16* dv_row = p.dv + p.kv_row(b, key, hk) + 2 * c;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      *reinterpret_cast<__nv_bfloat162*>(dk_row + n * 8) =
          __floats2bfloat162_rn(p.scale * dk[n][2 * half], p.scale * dk[n][2 * half + 1]);
      *reinterpret_cast<__nv_bfloat162*>(dv_row + n * 8) = __floats2bfloat162_rn(dv[n][2 * half], dv[n][2 * half + 1]);
    }
  }
}

template <int D>
constexpr size_t dq_smem_bytes() {
  return sizeof(bf16) * kTile * D * 6;  // Q, dO, then K and V of two stages
}

// One block per (batch row, query head, 64 queries), the forward's walk over key tiles: warp w owns
// dQ rows t0 + 16w .. in registers; per key tile S = Q·Kᵀ, dP = dO·Vᵀ, P = exp(scale·S − lse),
// dS = P ⊙ (dP − Δ), dQ += dS·K (scale applied at the end).
template <int D>
__global__ void __launch_bounds__(kThreads) flash_dq_kernel(Params p) {
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* q_s = reinterpret_cast<bf16*>(smem);
  bf16* do_s = q_s + kTile * D;
  bf16* k_s = do_s + kTile * D;     // [2 stages][64][D]
  bf16* v_s = k_s + 2 * kTile * D;  // [2 stages][64][D]

  const QueryTileJob job(p);
  const int t0 = job.t0, h = job.h, b = job.b, hk = h / p.group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31, c = lane & 3;
  const int r0 = t0 + warp * 16;
  const bool warp_active = r0 < p.T;  // warp-uniform
  const int32_t* first_key = p.first_key + static_cast<int64_t>(b) * p.T;
  const WarpRows rows(r0, r0 + lane < p.T ? first_key[r0 + lane] : p.T);
  const int tile_begin = first_key[t0] / kTile, tile_end = (min(t0 + kTile, p.T) - 1) / kTile + 1;
  // lse (in log2 units) and Δ of this thread's rows; rows past T are never used.
  const int row_hi = min(rows.row_lo + 8, p.T - 1), row_lo = min(rows.row_lo, p.T - 1);
  const float lse_lo = p.lse[p.stat(b, h, row_lo)] * kLog2e, lse_hi = p.lse[p.stat(b, h, row_hi)] * kLog2e;
  const float delta_lo = p.delta[p.stat(b, h, row_lo)], delta_hi = p.delta[p.stat(b, h, row_hi)];

  const int64_t q_stride = p.q_stride, kv_stride = p.kv_stride, o_stride = static_cast<int64_t>(p.Hq) * D;
  const bf16* k_rows = p.k + p.kv_row(b, 0, hk);
  const bf16* v_rows = p.v + p.kv_row(b, 0, hk);
  load_tile<D>(q_s, p.q + p.q_row(b, 0, h), q_stride, t0, p.T);
  load_tile<D>(do_s, p.dout + p.o_row(b, 0, h), o_stride, t0, p.T);
  load_tile<D>(k_s, k_rows, kv_stride, tile_begin * kTile, p.T);
  load_tile<D>(v_s, v_rows, kv_stride, tile_begin * kTile, p.T);
  cp_async_commit();

  const float scale_log2 = p.scale * kLog2e;
  uint32_t q_frag[D / 16][4];
  float dq[D / 8][4] = {};

  for (int tile = tile_begin; tile < tile_end; ++tile) {
    const int stage = (tile - tile_begin) & 1;
    if (tile + 1 < tile_end) {  // the next stage was last read before the previous iteration's barrier
      load_tile<D>(k_s + (stage ^ 1) * kTile * D, k_rows, kv_stride, (tile + 1) * kTile, p.T);
      load_tile<D>(v_s + (stage ^ 1) * kTile * D, v_rows, kv_stride, (tile + 1) * kTile, p.T);
    }
    cp_async_commit();  // possibly empty, so that "all but the newest" is always this tile's group
    cp_async_wait_all_but_newest();
    __syncthreads();
    if (tile == tile_begin)
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks) ldmatrix_x4(q_frag[ks], rows_first<D>(q_s, warp * 16, ks * 2));

    const int k0 = tile * kTile;
    if (warp_active && rows.sees_tile(k0)) {
      const bf16* kt = k_s + stage * kTile * D;
      const bf16* vt = v_s + stage * kTile * D;
      float s[kTile / 8][4] = {}, dp[kTile / 8][4] = {};  // S = Q·Kᵀ, dP = dO·Vᵀ
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks) {
        uint32_t doa[4];
        ldmatrix_x4(doa, rows_first<D>(do_s, warp * 16, ks * 2));
#pragma unroll
        for (int np = 0; np < kTile / 16; ++np) {
          uint32_t kb[4], vb[4];
          ldmatrix_x4(kb, chunks_first<D>(kt, np * 16, ks * 2));
          ldmatrix_x4(vb, chunks_first<D>(vt, np * 16, ks * 2));
          mma(s[2 * np], q_frag[ks], kb[0], kb[1]);
          mma(s[2 * np + 1], q_frag[ks], kb[2], kb[3]);
          mma(dp[2 * np], doa, vb[0], vb[1]);
          mma(dp[2 * np + 1], doa, vb[2], vb[3]);
        }
      }
      const bool masked = !rows.sees_whole_tile(k0);
#pragma unroll
      for (int nt = 0; nt < kTile / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int half = e >> 1;
          const float prob = exp2f(s[nt][e] * scale_log2 - (half ? lse_hi : lse_lo));
          const bool visible = !masked || rows.sees(half, k0 + nt * 8 + 2 * c + (e & 1));
          dp[nt][e] = visible ? prob * (dp[nt][e] - (half ? delta_hi : delta_lo)) : 0.f;  // now dS
        }
      // dQ += dS·K: dS's C fragments are the A fragments over the tile's keys; K is [key][d].
#pragma unroll
      for (int j = 0; j < kTile / 16; ++j) {
        const uint32_t da[4] = {pack_bf16(dp[2 * j][0], dp[2 * j][1]), pack_bf16(dp[2 * j][2], dp[2 * j][3]),
                                pack_bf16(dp[2 * j + 1][0], dp[2 * j + 1][1]),
                                pack_bf16(dp[2 * j + 1][2], dp[2 * j + 1][3])};
#pragma unroll
        for (int dn = 0; dn < D / 16; ++dn) {
          uint32_t kb[4];
          ldmatrix_x4_trans(kb, rows_first<D>(kt, j * 16, dn * 2));
          mma(dq[2 * dn], da, kb[0], kb[1]);
          mma(dq[2 * dn + 1], da, kb[2], kb[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
  }

#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = rows.row_lo + half * 8;
    if (!warp_active || row >= p.T) continue;
    bf16* dst = p.dq + p.q_row(b, row, h) + 2 * c;
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
      *reinterpret_cast<__nv_bfloat162*>(dst + n * 8) =
          __floats2bfloat162_rn(p.scale * dq[n][2 * half], p.scale * dq[n][2 * half + 1]);
  }
}

// ---- host side ---------------------------------------------------------------------------------

Params make_params(const AttentionShape& s, const bf16* q, const bf16* k, const bf16* v, float scale) {
  Params p{};
  p.B = static_cast<int>(s.B);
  p.T = static_cast<int>(s.T);
  p.Hq = static_cast<int>(s.Hq);
  p.Hkv = static_cast<int>(s.Hkv);
  p.D = static_cast<int>(s.D);
  p.group = static_cast<int>(s.Hq / s.Hkv);
  p.window = static_cast<int>(s.window);
  p.q_stride = static_cast<int>(s.q_row_stride());
  p.kv_stride = static_cast<int>(s.kv_row_stride());
  p.scale = scale;
  p.q = q;
  p.k = k;
  p.v = v;
  return p;
}

}  // namespace

namespace attention_impl {

void flash_forward(const Params& p, cudaStream_t stream) {
  constexpr const char* kFn = "cuda::attention_forward (tensor-core kernel)";
  const unsigned int blocks = blocks_for(detail::ceil_div(p.T, kTile) * p.B * p.Hq, 1, kFn);
  if (p.D == 64) {
    allow_shared_memory(flash_forward_kernel<64>, forward_smem_bytes<64>(), kFn);
    flash_forward_kernel<64><<<blocks, kThreads, forward_smem_bytes<64>(), stream>>>(p);
  } else {
    allow_shared_memory(flash_forward_kernel<128>, forward_smem_bytes<128>(), kFn);
    flash_forward_kernel<128><<<blocks, kThreads, forward_smem_bytes<128>(), stream>>>(p);
  }
  check_launch(kFn);
}

void flash_dkv(const Params& p, cudaStream_t stream) {
  constexpr const char* kFn = "cuda::attention_backward (tensor-core dk, dv)";
  const unsigned int blocks = blocks_for(detail::ceil_div(p.T, kTile) * p.B * p.Hkv, 1, kFn);
  if (p.D == 64) {
    allow_shared_memory(flash_dkv_kernel<64>, dkv_smem_bytes<64>(), kFn);
    flash_dkv_kernel<64><<<blocks, kThreads, dkv_smem_bytes<64>(), stream>>>(p);
  } else {
    allow_shared_memory(flash_dkv_kernel<128>, dkv_smem_bytes<128>(), kFn);
    flash_dkv_kernel<128><<<blocks, kThreads, dkv_smem_bytes<128>(), stream>>>(p);
  }
  check_launch(kFn);
}

void flash_dq(const Params& p, cudaStream_t stream) {
  constexpr const char* kFn = "cuda::attention_backward (tensor-core dq)";
  const unsigned int blocks = blocks_for(detail::ceil_div(p.T, kTile) * p.B * p.Hq, 1, kFn);
  if (p.D == 64) {
    allow_shared_memory(flash_dq_kernel<64>, dq_smem_bytes<64>(), kFn);
    flash_dq_kernel<64><<<blocks, kThreads, dq_smem_bytes<64>(), stream>>>(p);
  } else {
    allow_shared_memory(flash_dq_kernel<128>, dq_smem_bytes<128>(), kFn);
    flash_dq_kernel<128><<<blocks, kThreads, dq_smem_bytes<128>(), stream>>>(p);
  }
  check_launch(kFn);
}

void backward_prologue(const Params& p, const int32_t* doc, int32_t* first_key, cudaStream_t stream) {
  constexpr const char* kFn = "cuda::attention_backward";
  constexpr int kWarpsPerBlock = 4;
  const dim3 first_grid(blocks_for(detail::ceil_div(p.T, 32), kWarpsPerBlock, kFn), static_cast<unsigned int>(p.B));
  first_keys_kernel<<<first_grid, kWarpsPerBlock * 32, 0, stream>>>(doc, p.T, p.window, first_key);
  check_launch("cuda::attention_backward (first keys)");
  const int64_t q_rows = static_cast<int64_t>(p.B) * p.T * p.Hq;
  delta_kernel<<<blocks_for(q_rows, kWarpsPerBlock, kFn), kWarpsPerBlock * 32, 0, stream>>>(p);
  check_launch("cuda::attention_backward (delta)");
}

}  // namespace attention_impl

void attention_forward(const AttentionShape& shape, const bf16* q, const bf16* k, const bf16* v, const int32_t* doc,
                       float scale, bf16* out, float* lse, cudaStream_t stream, AttentionKernel kernel) {
  constexpr const char* kFn = "cuda::attention_forward";
  if (!checks::attention_args(shape, {q, k, v, out, lse}, kFn)) return;
  Params p = make_params(shape, q, k, v, scale);
  p.doc = doc;
  p.o = out;
  p.lse_out = lse;
  if (checks::attention_tensor_cores(kernel, shape, {q, k, v, out}, kFn)) {
    if (forward_wgmma_usable(shape.D))
      flash_forward_wgmma(p, stream);
    else
      flash_forward(p, stream);
  } else {
    simple_forward_kernel<<<blocks_for(shape.B * shape.T * shape.Hq, kSimpleWarps, kFn), kSimpleWarps * 32, 0, stream>>>(p);
    check_launch("cuda::attention_forward (simple kernel)");
  }
}

void attention_backward(const AttentionShape& shape, const bf16* q, const bf16* k, const bf16* v, const int32_t* doc,
                        float scale, const bf16* out, const float* lse, const bf16* dout, bf16* dq, bf16* dk, bf16* dv,
                        void* workspace, cudaStream_t stream, AttentionKernel kernel) {
  constexpr const char* kFn = "cuda::attention_backward";
  if (!checks::attention_args(shape, {q, k, v, out, lse, dout, dq, dk, dv}, kFn, &workspace)) return;
  Params p = make_params(shape, q, k, v, scale);
  p.out = out;
  p.dout = dout;
  p.lse = lse;
  p.delta = static_cast<float*>(workspace);
  const size_t first_key_offset = checks::attention_delta_bytes(shape);
  int32_t* first_key = reinterpret_cast<int32_t*>(static_cast<unsigned char*>(workspace) + first_key_offset);
  p.first_key = first_key;
  p.dq = dq;
  p.dk = dk;
  p.dv = dv;

  const bool tensor_cores = checks::attention_tensor_cores(kernel, shape, {q, k, v, dout, dq, dk, dv}, kFn);
  backward_prologue(p, doc, first_key, stream);

  if (tensor_cores) {
    const BackwardKernels wgmma = backward_wgmma_usable(shape.D);
    if (wgmma.dkv)
      flash_dkv_wgmma(p, stream);
    else
      flash_dkv(p, stream);
    if (wgmma.dq)
      flash_dq_wgmma(p, stream);
    else
      flash_dq(p, stream);
  } else {
    const int64_t q_rows = shape.B * shape.T * shape.Hq;
    simple_dq_kernel<<<blocks_for(q_rows, kSimpleWarps, kFn), kSimpleWarps * 32, 0, stream>>>(p);
    check_launch("cuda::attention_backward (simple dq)");
    simple_dkv_kernel<<<blocks_for(shape.B * shape.T * shape.Hkv, kSimpleWarps, kFn), kSimpleWarps * 32, 0, stream>>>(p);
    check_launch("cuda::attention_backward (simple dk, dv)");
  }
}

}  // namespace llm::cuda
