// Hopper's flash attention (sm_90a): the contracts and masks of attention.cu's mma.sync kernels
// (causal, grouped-query heads, packed documents, sliding window, lse saved), with the products on
// wgmma. The forward is described here; the backward's dQ and dK, dV kernels further down.
//
// One block per (batch row, query head, 128 queries): two warpgroups of 64 query rows each. The Q
// tile is copied into shared memory once; key tiles of 128 keys (K and V) go through a ring of three
// stages with cp.async. Per key tile, each warpgroup computes:
//   S = Q·Kᵀ    wgmma m64n128k16, D/16 k-steps, both operands from shared memory, K-major: Q's rows
//               are queries and K's rows keys, each with its d values contiguous (the GEMM's NT case,
//               gemm_wgmma.cu, with the same 128-byte swizzle tiles and descriptor).
//   softmax     online in fp32 on the accumulators, which have mma.m16n8k16's C layout per warp
//               (thread: rows g, g + 8 of its warp's 16, columns 8j + 2c + {0, 1}; g = lane / 4,
//               c = lane % 4), row max and sum over the quad's 4 lanes; the mask of attention.cu's
//               first(t) rule, skipped (by a select) on tiles every row sees whole.
//   O += P·V    wgmma m64n64k16 per 64 columns of d, A = P from registers: mma.m16n8k16's A layout
//               per warp, so P's accumulators pair up into it exactly as in attention.cu. B = V.
// Both warpgroups walk all the block's key tiles, also one a warpgroup sees nothing of (a window or
// document start between its rows and the other's: all masked, P = 0), so that the sequence of wgmma
// never depends on data; ptxas serializes wgmma that a divergent path separates from its wait.
//
// V. The tile is stored exactly like K: row = key, its 64-column halves of d each a 128-byte swizzled
// row. For P·V that is B = V stored K×N with N (= d) contiguous: MN-major, which wgmma reads with
// imm-trans-b = 1 (allowed for bf16). Chosen over transposing V while staging it because it needs no
// extra shared-memory pass or barrier, and its one new piece, the MN-major descriptor, is made
// unambiguous: with N = 64 per instruction the operand is one 64-wide N block, so the two byte offsets
// (one steps between 8-key groups, the other between N blocks) both get the 1024 bytes of the
// 8-key step, and the descriptor reads the same under either reading of the ISA (ptx.cuh,
// wgmma_desc_mn_sw128_n64). The swizzle itself is a function of the address bits alone, the same
// for both majors.
//
// Ordering (iteration j, tile j in stage j % 3). Wait for tile j's copies (the newest group), fence
// them into the async proxy, barrier; start tile j + 1's copies into the stage of tile j - 2, whose
// last reader, the P·V of tile j - 2, every warpgroup waited for in iteration j - 1. Then per
// warpgroup: issue S of tile j, issue the P·V of tile j - 1 (its P kept as A fragments, its V in stage
// (j - 1) % 3), wait for S only (wait_group 1) and run the softmax while that P·V is on the tensor
// cores, wait for it (wait_group 0), rescale O and pack P of tile j. The last tile's P·V follows the
// loop. Iteration j reads only stages j % 3 (K) and (j - 1) % 3 (V), never the one being filled.
//
// The TMA form (kTma, the default where the tensor maps can be made): a third warpgroup is the
// producer, in which one thread copies Q once and K and V per tile with the TMA (boxes of 128 tokens ×
// 64 columns of the head, written in the same swizzled layout, rows past T zero-filled) while the
// two computing warpgroups issue no copies and never meet at a block barrier. Barriers hand the
// stages over: Q landed; K of stage s landed; V of stage s landed (the P·V waits for it separately,
// a step later than S waits for K); stage s released by all 256 computing threads once the P·V of
// its tile finished (its S finished before). The producer refills a stage after its release, so
// tile j + 2 is copied while tile j computes: the same 3 stages, one tile more ahead. The n-th use of
// a stage waits for phase parity n % 2. The producer keeps 24 registers and the computing
// warpgroups get 240 (setmaxnreg): the cp.async form of D = 128 needs 250 of its 255.
//
// The kernel body exists only in sm_90a code (wgmma has no plain sm_90 form); the host launches it
// only when LLM_GEMM_WGMMA says that code was built and the device is compute capability 9.0, and,
// since no GPU has run it before its first use in a process, only after a self-check against
// attention.cu's forward passes (forward_wgmma_usable).
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>
#include <vector>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/attention_impl.cuh"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/ptx.cuh"
#include "kernels/cuda/tensor_map.h"

namespace llm::cuda {
namespace attention_impl {
namespace {

constexpr int kBM = 128;  // queries per block: two warpgroups of 64 rows
constexpr int kBN = 128;  // keys per tile
constexpr int kThreads = 256;
constexpr int kRowBytes = 128;                  // a swizzled row: 64 bf16 of d
constexpr int kSubTileBytes = 128 * kRowBytes;  // 128 rows (kBM = kBN) × 64 columns of d: 16 KB
static_assert(kBM == 128 && kBN == 128, "the tiles are 128 rows of D/64 sub-tiles each");

// A Q, K or V tile: D/64 sub-tiles of 128 rows × 64 columns, each 1024-byte aligned.
template <int D>
constexpr int kTileBytes = kSubTileBytes * (D / 64);
constexpr int kStages = 3;  // K and V tiles in flight: being copied, read by S, read by P·V
// The TMA form: warpgroups 0 and 1 compute as above, warpgroup 2 is the producer. Its one working
// thread keeps few registers and the consumers get the rest: 128·24 + 256·240 ≤ 65536.
constexpr int kTmaThreads = 384;
constexpr int kTmaConsumers = 256;
constexpr int kProducerRegisters = 24, kConsumerRegisters = 240;
// Its barriers (8 bytes each, after the tiles): Q landed; K of stage s landed; V of stage s landed;
// stage s read by both warpgroups (S and P·V), free to refill.
constexpr int kBarQ = 0, kBarK = 8, kBarV = 8 + 8 * kStages, kBarFree = 8 + 16 * kStages;
constexpr int kBarrierBytes = 8 + 24 * kStages;
// Q, then K and V of each stage, + room to align the base to 1024 bytes (+ the TMA form's barriers).
template <int D>
constexpr size_t smem_bytes(bool tma) {
  return (1 + 2 * kStages) * kTileBytes<D> + 1024 + (tma ? kBarrierBytes : 0);
}

// The TMA form's tensor maps of q, k and v: rows are tokens, boxes 128 tokens × 64 columns of one
// head (coordinates: column h·D + 64·sub, token, batch row).
struct TmaMaps {
  CUtensorMap q, k, v;
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// Rows row0 .. row0 + kRows - 1 of a [.., T, H, D] tensor (`rows`: its row 0 of this head, rows
// `stride` elements apart; rows past T zero-filled, nothing read) into the tile at shared address
// `tile`: the 16-byte chunk c of row r goes to sub-tile c / 8 (kRows × 128 bytes each), chunk
// (c % 8) ^ (r % 8) of the sub-tile's row r. All kThreads threads take part.
template <int D, int kRows = 128>
__device__ __forceinline__ void load_tile(uint32_t tile, const bf16* rows, int64_t stride, int row0, int T) {
  constexpr int kChunks = D / 8;
#pragma unroll
  for (int i = 0; i < kRows * kChunks / kThreads; ++i) {
    const int idx = static_cast<int>(threadIdx.x) + i * kThreads;
    const int r = idx / kChunks, c = idx % kChunks;
    const bool valid = row0 + r < T;
    const bf16* src = valid ? rows + (row0 + r) * stride + c * 8 : rows;
    ptx::cp_async_16(tile + (c / 8) * (kRows * kRowBytes) + r * kRowBytes + (((c % 8) ^ (r % 8)) * 16), src,
                     valid ? 16 : 0);
  }
}

// An m64nN accumulator (N = 16·kSteps columns: s[4j + e] is column 8j + 2c + e % 2 of rows g and
// g + 8) rounded to bf16 as the A fragments of kSteps key steps of 16: a[kk] = (g, 2c..2c+1),
// (g + 8, same), (g, 2c+8..2c+9), (g + 8, same) of columns 16kk .., mma.m16n8k16's A layout per warp.
template <int kSteps>
__device__ __forceinline__ void pack_a_fragments(const float (&s)[8 * kSteps], uint32_t (&a)[kSteps][4]) {
#pragma unroll
  for (int kk = 0; kk < kSteps; ++kk)
#pragma unroll
    for (int r = 0; r < 4; ++r) a[kk][r] = ptx::pack_bf16(s[8 * kk + 2 * r], s[8 * kk + 2 * r + 1]);
}

// acc[n] += A·B for each 64-column block n of d, issued (not committed): A = a[kk] from registers
// over kSteps key steps of 16, B the [key][d] tile at `tile` read MN-major, its 64-column sub-tiles
// sub_tile_bytes apart, key step kk 16 rows (2048 bytes) into each.
template <int D, int kSteps>
__device__ __forceinline__ void accumulate_from_registers(float (&acc)[D / 64][32], const uint32_t (&a)[kSteps][4],
                                                          uint32_t tile, uint32_t sub_tile_bytes) {
#pragma unroll
  for (int kk = 0; kk < kSteps; ++kk)
#pragma unroll
    for (int n = 0; n < D / 64; ++n)
      ptx::wgmma_m64n64k16_bf16_rs_tnsp_b(
          acc[n], a[kk], ptx::wgmma_desc_mn_sw128_n64(tile + n * sub_tile_bytes + kk * 16 * kRowBytes));
}
#endif

// kTma: tiles loaded by the TMA in a producer warpgroup, handed over through mbarriers (see the
// file comment); else by cp.async in every thread. `maps` is used only by the TMA form.
template <int D, bool kTma>
__global__ void __launch_bounds__(kTma ? kTmaThreads : kThreads, 1)
    flash_forward_wgmma_kernel(Params p, const __grid_constant__ TmaMaps maps) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ unsigned char smem_raw[];
  __shared__ int first_s[kBM];  // first(t0 + i), T for rows past the end
  const uint32_t smem = (ptx::smem_address(smem_raw) + 1023) & ~uint32_t{1023};
  const uint32_t q_tile = smem;
  auto k_tile = [&](int stage) { return smem + (1 + 2 * stage) * kTileBytes<D>; };
  auto v_tile = [&](int stage) { return smem + (2 + 2 * stage) * kTileBytes<D>; };
  const uint32_t barriers = smem + (1 + 2 * kStages) * kTileBytes<D>;
  auto barrier = [&](int kind, int stage) { return barriers + kind + 8 * stage; };
  if (kTma && threadIdx.x == 0) {
    ptx::mbarrier_init(barrier(kBarQ, 0), 1);  // the producer's arrive, plus the tile's bytes
    for (int st = 0; st < kStages; ++st) {
      ptx::mbarrier_init(barrier(kBarK, st), 1);
      ptx::mbarrier_init(barrier(kBarV, st), 1);
      ptx::mbarrier_init(barrier(kBarFree, st), kTmaConsumers);
    }
    ptx::fence_mbarrier_init();
  }

  // Later query tiles see more keys: they come first in the grid so the tail of the launch is short.
  const int num_q_tiles = (p.T + kBM - 1) / kBM;
  const int64_t job = blockIdx.x;
  const int t0 = (num_q_tiles - 1 - static_cast<int>(job / (static_cast<int64_t>(p.B) * p.Hq))) * kBM;
  const int h = static_cast<int>(job % p.Hq), b = static_cast<int>(job / p.Hq % p.B), hk = h / p.group;

  if (threadIdx.x < kBM) {  // warps 0-3, 32 rows each (warp-uniform condition)
    const int r = t0 + static_cast<int>(threadIdx.x / 32) * 32;
    const int32_t* doc_row = p.doc ? p.doc + static_cast<int64_t>(b) * p.T : nullptr;
    first_s[threadIdx.x] = r < p.T ? warp_first_keys(doc_row, p.T, p.window, r) : p.T;
  }
  __syncthreads();
  const int tile_begin = first_s[0] / kBN, tile_end = (min(t0 + kBM, p.T) - 1) / kBN + 1;

  if constexpr (kTma) {
    if (threadIdx.x >= kTmaConsumers) {  // warpgroup 2: the producer
      ptx::setmaxnreg_dec<kProducerRegisters>();
      if (threadIdx.x == kTmaConsumers) {
        ptx::prefetch_tensormap(&maps.q);
        ptx::prefetch_tensormap(&maps.k);
        ptx::prefetch_tensormap(&maps.v);
        ptx::mbarrier_arrive_expect_tx(barrier(kBarQ, 0), kTileBytes<D>);
#pragma unroll
        for (int sub = 0; sub < D / 64; ++sub)
          ptx::tma_load_3d(q_tile + sub * kSubTileBytes, &maps.q, barrier(kBarQ, 0), h * D + 64 * sub, t0, b);
        for (int tile = tile_begin; tile < tile_end; ++tile) {
          const int j = tile - tile_begin, st = j % kStages, use = j / kStages;
          if (use > 0) ptx::mbarrier_wait(barrier(kBarFree, st), (use - 1) & 1);
          ptx::mbarrier_arrive_expect_tx(barrier(kBarK, st), kTileBytes<D>);
#pragma unroll
          for (int sub = 0; sub < D / 64; ++sub)
            ptx::tma_load_3d(k_tile(st) + sub * kSubTileBytes, &maps.k, barrier(kBarK, st), hk * D + 64 * sub,
                             tile * kBN, b);
          ptx::mbarrier_arrive_expect_tx(barrier(kBarV, st), kTileBytes<D>);
#pragma unroll
          for (int sub = 0; sub < D / 64; ++sub)
            ptx::tma_load_3d(v_tile(st) + sub * kSubTileBytes, &maps.v, barrier(kBarV, st), hk * D + 64 * sub,
                             tile * kBN, b);
        }
      }
      return;  // the consumers keep the block (and so the copies' barriers) alive
    }
    ptx::setmaxnreg_inc<kConsumerRegisters>();
  }

  // This warpgroup owns block rows wg0 .. wg0 + 63 (queries r0 ..); warp w of it rows 16w .. 16w + 15,
  // and this thread the accumulator rows g and g + 8 of those: queries row_lo and row_lo + 8.
  const int warpgroup = static_cast<int>(threadIdx.x / 128), warp = static_cast<int>(threadIdx.x % 128) / 32;
  const int lane = static_cast<int>(threadIdx.x % 32), g = lane / 4, c = lane % 4;
  const int wg0 = warpgroup * 64, r0 = t0 + wg0;
  const int first_max = first_s[wg0 + 63];  // first() never decreases
  const int row_lo = r0 + warp * 16 + g;
  const int first_lo = first_s[wg0 + warp * 16 + g], first_hi = first_s[wg0 + warp * 16 + g + 8];

  const int64_t kv_stride = p.kv_stride;
  const bf16* k_rows = p.k + p.kv_row(b, 0, hk);
  const bf16* v_rows = p.v + p.kv_row(b, 0, hk);
  if constexpr (!kTma) {
    load_tile<D>(q_tile, p.q + p.q_row(b, 0, h), p.q_stride, t0, p.T);
    load_tile<D>(k_tile(0), k_rows, kv_stride, tile_begin * kBN, p.T);
    load_tile<D>(v_tile(0), v_rows, kv_stride, tile_begin * kBN, p.T);
    ptx::cp_async_commit();
  }

  const float scale_log2 = p.scale * kLog2e;  // scores in log2 units: the softmax uses exp2
  float o[D / 64][32];                        // O, one m64n64 accumulator per 64 columns of d
#pragma unroll
  for (int n = 0; n < D / 64; ++n)
#pragma unroll
    for (int i = 0; i < 32; ++i) o[n][i] = 0.f;
  // Running max (log2 units) and this thread's partial row sums, rows row_lo and row_lo + 8.
  float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.f, l_hi = 0.f;

  // S = Q·Kᵀ of the tile in `stage`: k-step kk reads d 16kk .. 16kk + 15, 32 bytes into the rows of
  // sub-tile kk / 4; this warpgroup's A is its 64 rows of Q (8 swizzle atoms), B all 128 keys.
  float s[kBN / 2];
  auto issue_s = [&](int stage) {
    ptx::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t a = q_tile + (kk / 4) * kSubTileBytes + wg0 * kRowBytes + (kk % 4) * 32;
      const uint32_t bk = k_tile(stage) + (kk / 4) * kSubTileBytes + (kk % 4) * 32;
      ptx::wgmma_m64n128k16_bf16(s, ptx::wgmma_desc_k_sw128(a), ptx::wgmma_desc_k_sw128(bk), kk > 0);
    }
    ptx::wgmma_commit();
  };
  // P of the previous tile as the A fragments of its key steps kk (keys 16kk ..): pa[kk] = (row g,
  // keys 2c, 2c + 1), (g + 8, the same), (g, 2c + 8, 2c + 9), (g + 8, the same), i.e. accumulators
  // 8kk + 0, 1 | 2, 3 | 4, 5 | 6, 7 of its S.
  uint32_t pa[kBN / 16][4];
  // O += P·V of the tile in `stage`: key step kk reads V's keys 16kk .. 16kk + 15, 2048 bytes into
  // each 64-column sub-tile.
  auto issue_pv = [&](int stage) {
#pragma unroll
    for (int n = 0; n < D / 64; ++n) ptx::wgmma_fence_operand(o[n]);
    ptx::wgmma_fence();
    accumulate_from_registers<D>(o, pa, v_tile(stage), kSubTileBytes);
    ptx::wgmma_commit();
  };
  auto finish_pv = [&] {  // after the wait that covers issue_pv's group
#pragma unroll
    for (int n = 0; n < D / 64; ++n) ptx::wgmma_fence_operand(o[n]);
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) ptx::wgmma_fence_operand(pa[kk]);  // read until the wait
  };
  // The online softmax of S (keys k0 ..), in place, into exp2 values; returns the factors the old O
  // rows must be scaled by. Branch-free (selects), so that no divergent path lies between a wgmma and
  // its wait: ptxas would serialize the products otherwise.
  auto softmax = [&](int k0, float& alpha_lo, float& alpha_hi) {
    // s[4j + e]: row row_lo + 8·(e / 2), key k0 + 8j + 2c + e % 2.
    const bool whole = k0 + kBN - 1 <= r0 && k0 >= first_max;  // every row sees every key
    float mx_lo = m_lo, mx_hi = m_hi;
#pragma unroll
    for (int jj = 0; jj < kBN / 8; ++jj)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = k0 + 8 * jj + 2 * c + (e & 1);
        const bool hi = e >> 1;
        // Bitwise, not short-circuit: no branches, even in the PTX.
        const bool visible = whole | ((key >= (hi ? first_hi : first_lo)) & (key <= row_lo + 8 * hi));
        const float x = visible ? s[4 * jj + e] * scale_log2 : -INFINITY;
        s[4 * jj + e] = x;
        if (e < 2) mx_lo = fmaxf(mx_lo, x);
        else mx_hi = fmaxf(mx_hi, x);
      }
    // A row's 128 values are spread over the 4 lanes of a quad.
    mx_lo = fmaxf(mx_lo, __shfl_xor_sync(kFullMask, mx_lo, 1));
    mx_lo = fmaxf(mx_lo, __shfl_xor_sync(kFullMask, mx_lo, 2));
    mx_hi = fmaxf(mx_hi, __shfl_xor_sync(kFullMask, mx_hi, 1));
    mx_hi = fmaxf(mx_hi, __shfl_xor_sync(kFullMask, mx_hi, 2));
    // A row that has seen nothing yet (max -inf) shifts by 0: exp2 then gives exact zeros, not NaN.
    const float shift_lo = mx_lo == -INFINITY ? 0.f : mx_lo, shift_hi = mx_hi == -INFINITY ? 0.f : mx_hi;
    alpha_lo = exp2f(m_lo - shift_lo);
    alpha_hi = exp2f(m_hi - shift_hi);
    m_lo = mx_lo;
    m_hi = mx_hi;
    l_lo *= alpha_lo;
    l_hi *= alpha_hi;
#pragma unroll
    for (int jj = 0; jj < kBN / 8; ++jj) {
      s[4 * jj] = exp2f(s[4 * jj] - shift_lo);
      s[4 * jj + 1] = exp2f(s[4 * jj + 1] - shift_lo);
      s[4 * jj + 2] = exp2f(s[4 * jj + 2] - shift_hi);
      s[4 * jj + 3] = exp2f(s[4 * jj + 3] - shift_hi);
      l_lo += s[4 * jj] + s[4 * jj + 1];
      l_hi += s[4 * jj + 2] + s[4 * jj + 3];
    }
  };
  // O moves to the new max (the previous tiles' products all in it), and P becomes the next A.
  auto rescale_and_pack = [&](float alpha_lo, float alpha_hi) {
#pragma unroll
    for (int n = 0; n < D / 64; ++n)
#pragma unroll
      for (int i = 0; i < 32; ++i) o[n][i] *= (i & 2) ? alpha_hi : alpha_lo;
    pack_a_fragments(s, pa);
  };
  // Tile j's copies have landed and every thread sees them in the async proxy; then tile j + 1's copies
  // start, into the stage of tile j - 2, whose last reader (the P·V of tile j - 2) every warpgroup
  // waited for in iteration j - 1, before this barrier. Iteration j reads K of tile j and V of tile
  // j - 1: the other two stages.
  // The TMA form instead waits for K of tile j only; V and the release of a stage have their own steps
  // (await_v, release), and the producer refills a stage once both warpgroups released it.
  auto next_tile = [&](int tile) {
    const int j = tile - tile_begin;
    if constexpr (kTma) {
      ptx::mbarrier_wait(barrier(kBarK, j % kStages), (j / kStages) & 1);
    } else {
      ptx::cp_async_wait<0>();  // tile j is the newest group, committed in the previous iteration
      ptx::fence_proxy_async_shared();
      __syncthreads();
      if (tile + 1 < tile_end) {
        load_tile<D>(k_tile((j + 1) % kStages), k_rows, kv_stride, (tile + 1) * kBN, p.T);
        load_tile<D>(v_tile((j + 1) % kStages), v_rows, kv_stride, (tile + 1) * kBN, p.T);
      }
      ptx::cp_async_commit();
    }
    return j % kStages;
  };
  auto await_v = [&](int tile) {  // before the P·V of `tile`
    const int j = tile - tile_begin;
    if constexpr (kTma) ptx::mbarrier_wait(barrier(kBarV, j % kStages), (j / kStages) & 1);
  };
  auto release = [&](int tile) {  // after the S and the P·V of `tile` finished
    const int j = tile - tile_begin;
    if constexpr (kTma) ptx::mbarrier_arrive(barrier(kBarFree, j % kStages));
  };

  // Every warpgroup walks every key tile of the block (a tile it sees nothing of is all masked: P = 0,
  // O unchanged), so the wgmma sequence never depends on data. The first tile has no P·V before it.
  float alpha_lo, alpha_hi;
  if constexpr (kTma) ptx::mbarrier_wait(barrier(kBarQ, 0), 0);
  int stage = next_tile(tile_begin);
  issue_s(stage);
  ptx::wgmma_wait<0>();
  ptx::wgmma_fence_operand(s);
  softmax(tile_begin * kBN, alpha_lo, alpha_hi);
  rescale_and_pack(alpha_lo, alpha_hi);
  for (int tile = tile_begin + 1; tile < tile_end; ++tile) {
    const int previous = stage;
    stage = next_tile(tile);
    // S of this tile, then the previous tile's P·V behind it on the tensor cores while the softmax runs.
    issue_s(stage);
    await_v(tile - 1);
    issue_pv(previous);
    ptx::wgmma_wait<1>();  // S: every group but the newest (P·V) is done
    ptx::wgmma_fence_operand(s);
    softmax(tile * kBN, alpha_lo, alpha_hi);
    ptx::wgmma_wait<0>();
    finish_pv();
    release(tile - 1);
    rescale_and_pack(alpha_lo, alpha_hi);
  }
  await_v(tile_end - 1);
  issue_pv(stage);  // the last tile's (no copy overwrites its stage any more)
  ptx::wgmma_wait<0>();
  finish_pv();
  if constexpr (!kTma) ptx::cp_async_wait<0>();  // only an empty group can be pending here; leave none behind
  if (r0 >= p.T) return;  // this warpgroup's rows are all past the end

  l_lo += __shfl_xor_sync(kFullMask, l_lo, 1);
  l_lo += __shfl_xor_sync(kFullMask, l_lo, 2);
  l_hi += __shfl_xor_sync(kFullMask, l_hi, 1);
  l_hi += __shfl_xor_sync(kFullMask, l_hi, 2);
  // o[n][4j + 2·half + e]: row row_lo + 8·half, column 64n + 8j + 2c + e.
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = row_lo + half * 8;
    if (row >= p.T) continue;
    const float l = half ? l_hi : l_lo, m = half ? m_hi : m_lo, inv = l > 0.f ? 1.f / l : 0.f;
    bf16* dst = p.o + p.o_row(b, row, h) + 2 * c;
#pragma unroll
    for (int n = 0; n < D / 64; ++n)
#pragma unroll
      for (int j = 0; j < 8; ++j)
        *reinterpret_cast<__nv_bfloat162*>(dst + 64 * n + 8 * j) =
            __floats2bfloat162_rn(o[n][4 * j + 2 * half] * inv, o[n][4 * j + 2 * half + 1] * inv);
    if (c == 0) p.lse_out[p.stat(b, h, row)] = (m + log2f(l)) * kLn2;  // Σ exp = 2^m · l
  }
#else
  (void)p, (void)maps;
#endif
}

// ---- dQ on wgmma ---------------------------------------------------------------------------------
// One block per (batch row, query head, 128 queries), two warpgroups of 64 query rows, walking the
// key tiles the block's queries see as the forward does, in tiles of 64 keys through 2 stages:
//   S = Q·Kᵀ, dP = dO·Vᵀ   wgmma m64n64k16, D/16 k-steps each, all operands K-major from shared
//                          memory (Q and dO of the block loaded once);
//   dS = P ⊙ (dP − Δ)      P = exp2(S·scale·log2e − lse·log2e) with the row's saved lse, masked as
//                          the forward masks (first(t) from the backward's workspace);
//   dQ += dS·K            wgmma m64n64k16 per 64 columns of d, A = dS from registers (the forward's
//                          P·V trick), B = K read MN-major (the forward's V descriptor).
// Every product of a tile is waited for within its iteration, so 2 stages suffice: the copies into
// stage (j + 1) % 2 start after the barrier of iteration j, when iteration j - 1's products are done.
// dQ is scaled by the softmax scale once, at the end, like the mma.sync kernel's.
constexpr int kDqKeys = 64;
template <int D>
constexpr int kKeyTileBytes = kDqKeys * kRowBytes * (D / 64);  // 64 keys × D, in 64-column sub-tiles
template <int D>
constexpr size_t dq_smem_bytes() {
  return 2 * kTileBytes<D> + 2 * 2 * kKeyTileBytes<D> + 1024;  // Q, dO; K and V of 2 stages
}

// D = 64 fits two blocks per SM (124 registers, no spills), so one block's elementwise work can run
// beside the other's products.
template <int D>
__global__ void __launch_bounds__(kThreads, D == 64 ? 2 : 1) flash_dq_wgmma_kernel(Params p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ unsigned char smem_raw[];
  const uint32_t smem = (ptx::smem_address(smem_raw) + 1023) & ~uint32_t{1023};
  const uint32_t q_tile = smem, do_tile = smem + kTileBytes<D>;
  auto k_tile = [&](int stage) { return smem + 2 * kTileBytes<D> + stage * 2 * kKeyTileBytes<D>; };
  auto v_tile = [&](int stage) { return k_tile(stage) + kKeyTileBytes<D>; };
  constexpr int kKeySubTileBytes = kDqKeys * kRowBytes;

  const int num_q_tiles = (p.T + kBM - 1) / kBM;  // later query tiles (more keys) first, as the forward
  const int64_t job = blockIdx.x;
  const int t0 = (num_q_tiles - 1 - static_cast<int>(job / (static_cast<int64_t>(p.B) * p.Hq))) * kBM;
  const int h = static_cast<int>(job % p.Hq), b = static_cast<int>(job / p.Hq % p.B), hk = h / p.group;
  const int32_t* first_key = p.first_key + static_cast<int64_t>(b) * p.T;

  const int warpgroup = static_cast<int>(threadIdx.x / 128), warp = static_cast<int>(threadIdx.x % 128) / 32;
  const int lane = static_cast<int>(threadIdx.x % 32), g = lane / 4, c = lane % 4;
  const int wg0 = warpgroup * 64, r0 = t0 + wg0;
  const int row_lo = r0 + warp * 16 + g;
  // Rows past T compute with the last row's statistics and are never stored.
  const int last = p.T - 1, lo = min(row_lo, last), hi = min(row_lo + 8, last);
  const int first_lo = first_key[lo], first_hi = first_key[hi], first_max = first_key[min(r0 + 63, last)];
  const float lse_lo = p.lse[p.stat(b, h, lo)] * kLog2e, lse_hi = p.lse[p.stat(b, h, hi)] * kLog2e;
  const float delta_lo = p.delta[p.stat(b, h, lo)], delta_hi = p.delta[p.stat(b, h, hi)];
  const int tile_begin = first_key[t0] / kDqKeys, tile_end = (min(t0 + kBM, p.T) - 1) / kDqKeys + 1;

  const int64_t kv_stride = p.kv_stride;
  const bf16* k_rows = p.k + p.kv_row(b, 0, hk);
  const bf16* v_rows = p.v + p.kv_row(b, 0, hk);
  load_tile<D>(q_tile, p.q + p.q_row(b, 0, h), p.q_stride, t0, p.T);
  load_tile<D>(do_tile, p.dout + p.o_row(b, 0, h), static_cast<int64_t>(p.Hq) * D, t0, p.T);
  load_tile<D, kDqKeys>(k_tile(0), k_rows, kv_stride, tile_begin * kDqKeys, p.T);
  load_tile<D, kDqKeys>(v_tile(0), v_rows, kv_stride, tile_begin * kDqKeys, p.T);
  ptx::cp_async_commit();

  const float scale_log2 = p.scale * kLog2e;
  float dq[D / 64][32];  // dQ, one m64n64 accumulator per 64 columns of d
#pragma unroll
  for (int n = 0; n < D / 64; ++n)
#pragma unroll
    for (int i = 0; i < 32; ++i) dq[n][i] = 0.f;

  for (int tile = tile_begin; tile < tile_end; ++tile) {
    const int stage = (tile - tile_begin) % 2;
    ptx::cp_async_wait<0>();  // this tile's copies (the only group in flight)
    ptx::fence_proxy_async_shared();
    __syncthreads();  // ... visible to every thread; the other stage's readers are all done
    if (tile + 1 < tile_end) {
      load_tile<D, kDqKeys>(k_tile(stage ^ 1), k_rows, kv_stride, (tile + 1) * kDqKeys, p.T);
      load_tile<D, kDqKeys>(v_tile(stage ^ 1), v_rows, kv_stride, (tile + 1) * kDqKeys, p.T);
    }
    ptx::cp_async_commit();

    // S and dP of this warpgroup's 64 rows × the tile's 64 keys; k-step kk reads d 16kk .. 16kk + 15.
    float s[32], dp[32];
    ptx::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t row_offset = (kk / 4) * kSubTileBytes + wg0 * kRowBytes + (kk % 4) * 32;
      const uint32_t key_offset = (kk / 4) * kKeySubTileBytes + (kk % 4) * 32;
      ptx::wgmma_m64n64k16_bf16(s, ptx::wgmma_desc_k_sw128(q_tile + row_offset),
                                ptx::wgmma_desc_k_sw128(k_tile(stage) + key_offset), kk > 0);
      ptx::wgmma_m64n64k16_bf16(dp, ptx::wgmma_desc_k_sw128(do_tile + row_offset),
                                ptx::wgmma_desc_k_sw128(v_tile(stage) + key_offset), kk > 0);
    }
    ptx::wgmma_commit();
    ptx::wgmma_wait<0>();
    ptx::wgmma_fence_operand(s);
    ptx::wgmma_fence_operand(dp);

    // dS in place of S: s[4jj + e] is row row_lo + 8·(e / 2), key k0 + 8jj + 2c + e % 2. Branch-free
    // (selects), as the forward's softmax.
    const int k0 = tile * kDqKeys;
    const bool whole = k0 + kDqKeys - 1 <= r0 && k0 >= first_max;  // every row sees every key
#pragma unroll
    for (int jj = 0; jj < kDqKeys / 8; ++jj)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = k0 + 8 * jj + 2 * c + (e & 1);
        const bool high = e >> 1;
        const bool visible = whole | ((key >= (high ? first_hi : first_lo)) & (key <= row_lo + 8 * high));
        const float prob = exp2f(s[4 * jj + e] * scale_log2 - (high ? lse_hi : lse_lo));
        s[4 * jj + e] = visible ? prob * (dp[4 * jj + e] - (high ? delta_hi : delta_lo)) : 0.f;
      }
    // dS as the A fragments of key steps kk (keys 16kk ..), in the forward's P order.
    uint32_t da[kDqKeys / 16][4];
    pack_a_fragments(s, da);

    // dQ += dS·K: key step kk reads K's keys 16kk .. 16kk + 15, 2048 bytes into each sub-tile.
#pragma unroll
    for (int n = 0; n < D / 64; ++n) ptx::wgmma_fence_operand(dq[n]);
    ptx::wgmma_fence();
    accumulate_from_registers<D>(dq, da, k_tile(stage), kKeySubTileBytes);
    ptx::wgmma_commit();
    ptx::wgmma_wait<0>();
#pragma unroll
    for (int n = 0; n < D / 64; ++n) ptx::wgmma_fence_operand(dq[n]);
#pragma unroll
    for (int kk = 0; kk < kDqKeys / 16; ++kk) ptx::wgmma_fence_operand(da[kk]);
  }
  ptx::cp_async_wait<0>();  // only an empty group can be pending here; leave none behind
  if (r0 >= p.T) return;    // this warpgroup's rows are all past the end

  // dq[n][4j + 2·half + e]: row row_lo + 8·half, column 64n + 8j + 2c + e.
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = row_lo + half * 8;
    if (row >= p.T) continue;
    bf16* dst = p.dq + p.q_row(b, row, h) + 2 * c;
#pragma unroll
    for (int n = 0; n < D / 64; ++n)
#pragma unroll
      for (int j = 0; j < 8; ++j)
        *reinterpret_cast<__nv_bfloat162*>(dst + 64 * n + 8 * j) =
            __floats2bfloat162_rn(p.scale * dq[n][4 * j + 2 * half], p.scale * dq[n][4 * j + 2 * half + 1]);
  }
#else
  (void)p;
#endif
}

// ---- dK, dV on wgmma ------------------------------------------------------------------------------
// One block per (batch row, kv head, 128 keys), two warpgroups of 64 keys, each holding its dK and
// dV rows in registers; K and V of the block are loaded once. For each query head of the group and
// each 64-query tile that sees the block's keys (a prefix of the tiles from t0 = first key on,
// counted as the mma.sync kernel counts it), through 2 stages of Q, dO and the queries' lse, Δ and
// first():
//   Sᵀ = K·Qᵀ            wgmma m64n64k16 from shared memory (keys × queries), then
//   Pᵀ = exp2(Sᵀ·scale·log2e − lse·log2e), masked, kept only as bf16 A fragments;
//   dPᵀ = V·dOᵀ          wgmma m64n64k16 from shared memory, issued together with
//   dV += Pᵀ·dO          wgmma m64n64k16 per 64 columns of d, A = Pᵀ from registers, B = dO MN-major;
//   dSᵀ = Pᵀ ⊙ (dPᵀ − Δ)  (P from its bf16 fragments, as the mma.sync kernel),
//   dK += dSᵀ·Q          the same form as dV's.
// Sᵀ and dPᵀ are never live together next to the dK, dV accumulators. Every product is waited for
// within its iteration, so 2 stages suffice (as the dQ kernel). dK is scaled by the softmax scale
// at the end. A warpgroup whose keys a tile does not reach computes all-masked products (P = 0), so
// the wgmma sequence never depends on data.
constexpr int kDkvQueries = 64;
template <int D>
constexpr int kQueryTileBytes = kDkvQueries * kRowBytes * (D / 64);  // 64 queries × D
constexpr int kStatBytes = kDkvQueries * 12;  // lse, Δ (float) and first() (int) of 64 queries
template <int D>
constexpr size_t dkv_smem_bytes() {
  return 2 * kTileBytes<D> + 2 * (2 * kQueryTileBytes<D> + kStatBytes) + 1024;  // K, V; 2 stages
}

template <int D>
__global__ void __launch_bounds__(kThreads, 1) flash_dkv_wgmma_kernel(Params p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ unsigned char smem_raw[];
  const uint32_t smem = (ptx::smem_address(smem_raw) + 1023) & ~uint32_t{1023};
  const uint32_t k_tile = smem, v_tile = smem + kTileBytes<D>;
  auto q_tile = [&](int stage) { return smem + 2 * kTileBytes<D> + stage * 2 * kQueryTileBytes<D>; };
  auto do_tile = [&](int stage) { return q_tile(stage) + kQueryTileBytes<D>; };
  // The stats after the tiles (1024-aligned tiles stay aligned): generic pointers for plain loads.
  unsigned char* stats_base = smem_raw + (smem - ptx::smem_address(smem_raw)) + 2 * kTileBytes<D> +
                              2 * 2 * kQueryTileBytes<D>;
  auto lse_s = [&](int stage) { return reinterpret_cast<float*>(stats_base + stage * kStatBytes); };
  auto delta_s = [&](int stage) { return lse_s(stage) + kDkvQueries; };
  auto first_s = [&](int stage) { return reinterpret_cast<int*>(delta_s(stage) + kDkvQueries); };
  constexpr int kQuerySubTileBytes = kDkvQueries * kRowBytes;

  // Earlier key tiles are seen by more queries: they come first in the grid.
  const int64_t job = blockIdx.x;
  const int kv_tile = static_cast<int>(job / (static_cast<int64_t>(p.B) * p.Hkv));
  const int hk = static_cast<int>(job % p.Hkv), b = static_cast<int>(job / p.Hkv % p.B);
  const int k0 = kv_tile * kBM, k_last = min(k0 + kBM, p.T) - 1;
  const int32_t* first_key = p.first_key + static_cast<int64_t>(b) * p.T;

  // Query tiles t0 = k0, k0 + 64, ... see these keys while first(t0) ≤ k_last: a prefix, counted
  // with one candidate tile per thread.
  int n_q = 0;  // ≥ 1: query k0 sees key k0
  for (int base = k0;; base += kDkvQueries * kThreads) {
    const int t = base + static_cast<int>(threadIdx.x) * kDkvQueries;
    const int seen = __syncthreads_count(t < p.T && first_key[t] <= k_last);
    n_q += seen;
    if (seen < kThreads) break;
  }
  const int n_iter = n_q * p.group;

  auto load_stage = [&](int it, int stage) {
    const int h = hk * p.group + it / n_q, t0 = k0 + (it % n_q) * kDkvQueries;
    load_tile<D, kDkvQueries>(q_tile(stage), p.q + p.q_row(b, 0, h), p.q_stride, t0, p.T);
    load_tile<D, kDkvQueries>(do_tile(stage), p.dout + p.o_row(b, 0, h), static_cast<int64_t>(p.Hq) * D, t0, p.T);
    if (threadIdx.x < kDkvQueries) {
      const int t = t0 + static_cast<int>(threadIdx.x);
      const bool valid = t < p.T;
      const int64_t i = valid ? p.stat(b, h, t) : 0;
      ptx::cp_async_4(ptx::smem_address(lse_s(stage) + threadIdx.x), p.lse + i, valid ? 4 : 0);
      ptx::cp_async_4(ptx::smem_address(delta_s(stage) + threadIdx.x), p.delta + i, valid ? 4 : 0);
      ptx::cp_async_4(ptx::smem_address(first_s(stage) + threadIdx.x), first_key + (valid ? t : 0), valid ? 4 : 0);
    }
  };
  load_tile<D>(k_tile, p.k + p.kv_row(b, 0, hk), p.kv_stride, k0, p.T);
  load_tile<D>(v_tile, p.v + p.kv_row(b, 0, hk), p.kv_stride, k0, p.T);
  load_stage(0, 0);
  ptx::cp_async_commit();

  const int warpgroup = static_cast<int>(threadIdx.x / 128), warp = static_cast<int>(threadIdx.x % 128) / 32;
  const int lane = static_cast<int>(threadIdx.x % 32), g = lane / 4, c = lane % 4;
  const int wk0 = k0 + warpgroup * 64;                  // this warpgroup's first key
  const int key_lo = wk0 + warp * 16 + g;               // this thread's rows of Sᵀ: keys key_lo, key_lo + 8
  const float scale_log2 = p.scale * kLog2e;
  float dk[D / 64][32], dv[D / 64][32];
#pragma unroll
  for (int n = 0; n < D / 64; ++n)
#pragma unroll
    for (int i = 0; i < 32; ++i) dk[n][i] = dv[n][i] = 0.f;

  for (int it = 0; it < n_iter; ++it) {
    const int stage = it % 2;
    ptx::cp_async_wait<0>();  // this iteration's copies (the only group in flight)
    ptx::fence_proxy_async_shared();
    __syncthreads();  // ... visible to every thread; the other stage's readers are all done
    if (it + 1 < n_iter) load_stage(it + 1, stage ^ 1);
    ptx::cp_async_commit();
    const int t0 = k0 + (it % n_q) * kDkvQueries;
    const float* lse = lse_s(stage);
    const float* delta = delta_s(stage);
    const int* first = first_s(stage);

    // k-step kk of a keys × queries product reads d 16kk .. 16kk + 15 of both operands.
    auto key_rows = [&](uint32_t tile, int kk) {
      return ptx::wgmma_desc_k_sw128(tile + (kk / 4) * kSubTileBytes + warpgroup * 64 * kRowBytes + (kk % 4) * 32);
    };
    auto query_rows = [&](uint32_t tile, int kk) {
      return ptx::wgmma_desc_k_sw128(tile + (kk / 4) * kQuerySubTileBytes + (kk % 4) * 32);
    };

    // Sᵀ, then Pᵀ as bf16 A fragments: s[4jj + e] is key key_lo + 8·(e / 2), query t0 + 8jj + 2c + e % 2.
    uint32_t pa[kDkvQueries / 16][4];
    {
      float s[32];
      ptx::wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
        ptx::wgmma_m64n64k16_bf16(s, key_rows(k_tile, kk), query_rows(q_tile(stage), kk), kk > 0);
      ptx::wgmma_commit();
      ptx::wgmma_wait<0>();
      ptx::wgmma_fence_operand(s);
      // Every key seen by every query: all queries real, after the last key, first() at or before the first.
      const bool whole = t0 + kDkvQueries <= p.T && wk0 + 63 <= t0 && first[kDkvQueries - 1] <= wk0;
#pragma unroll
      for (int jj = 0; jj < kDkvQueries / 8; ++jj)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int qi = 8 * jj + 2 * c + (e & 1), t = t0 + qi, key = key_lo + 8 * (e >> 1);
          const bool visible = whole | ((t < p.T) & (first[qi] <= key) & (key <= t));
          const float prob = exp2f(s[4 * jj + e] * scale_log2 - lse[qi] * kLog2e);
          s[4 * jj + e] = visible ? prob : 0.f;
        }
      pack_a_fragments(s, pa);
    }

    // dPᵀ and dV += Pᵀ·dO, one group.
    float dp[32];
#pragma unroll
    for (int n = 0; n < D / 64; ++n) ptx::wgmma_fence_operand(dv[n]);
    ptx::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      ptx::wgmma_m64n64k16_bf16(dp, key_rows(v_tile, kk), query_rows(do_tile(stage), kk), kk > 0);
    accumulate_from_registers<D>(dv, pa, do_tile(stage), kQuerySubTileBytes);  // over the 64 queries
    ptx::wgmma_commit();
    ptx::wgmma_wait<0>();
    ptx::wgmma_fence_operand(dp);
#pragma unroll
    for (int n = 0; n < D / 64; ++n) ptx::wgmma_fence_operand(dv[n]);
#pragma unroll
    for (int kq = 0; kq < kDkvQueries / 16; ++kq) ptx::wgmma_fence_operand(pa[kq]);

    // dSᵀ = Pᵀ ⊙ (dPᵀ − Δ), P read back from its bf16 pairs (accumulator i sits in pa[i / 8][(i % 8) / 2],
    // half i % 2), then as A fragments in the same order.
    uint32_t da[kDkvQueries / 16][4];
#pragma unroll
    for (int kq = 0; kq < kDkvQueries / 16; ++kq)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        float ds[2];
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int i = 8 * kq + 2 * r + half;              // accumulator index: query column 8(i / 4) + 2c + i % 2
          const uint32_t pair = pa[kq][r];
          const float prob = __uint_as_float((half ? pair >> 16 : pair & 0xffffu) << 16);  // bf16 → fp32
          ds[half] = prob * (dp[i] - delta[8 * (i / 4) + 2 * c + (i & 1)]);
        }
        da[kq][r] = ptx::pack_bf16(ds[0], ds[1]);
      }

    // dK += dSᵀ·Q.
#pragma unroll
    for (int n = 0; n < D / 64; ++n) ptx::wgmma_fence_operand(dk[n]);
    ptx::wgmma_fence();
    accumulate_from_registers<D>(dk, da, q_tile(stage), kQuerySubTileBytes);
    ptx::wgmma_commit();
    ptx::wgmma_wait<0>();
#pragma unroll
    for (int n = 0; n < D / 64; ++n) ptx::wgmma_fence_operand(dk[n]);
#pragma unroll
    for (int kq = 0; kq < kDkvQueries / 16; ++kq) ptx::wgmma_fence_operand(da[kq]);
  }
  ptx::cp_async_wait<0>();  // only an empty group can be pending here; leave none behind

  // dk[n][4j + 2·half + e]: key key_lo + 8·half, column 64n + 8j + 2c + e.
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int key = key_lo + half * 8;
    if (key >= p.T) continue;
    bf16* dk_row = p.dk + p.kv_row(b, key, hk) + 2 * c;
    bf16* dv_row = p.dv + p.kv_row(b, key, hk) + 2 * c;
#pragma unroll
    for (int n = 0; n < D / 64; ++n)
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int i = 4 * j + 2 * half;
        *reinterpret_cast<__nv_bfloat162*>(dk_row + 64 * n + 8 * j) =
            __floats2bfloat162_rn(p.scale * dk[n][i], p.scale * dk[n][i + 1]);
        *reinterpret_cast<__nv_bfloat162*>(dv_row + 64 * n + 8 * j) = __floats2bfloat162_rn(dv[n][i], dv[n][i + 1]);
      }
  }
#else
  (void)p;
#endif
}

#if defined(LLM_GEMM_WGMMA)
// The map of one of q, k, v (`heads` heads of D columns per token, tokens `stride` elements apart,
// T tokens per batch row). False where the TMA cannot describe it (then the cp.async form runs).
bool encode_rows(CUtensorMap* map, const bf16* x, const Params& p, int heads, int stride) {
  const uint64_t dims[3] = {static_cast<uint64_t>(heads) * p.D, static_cast<uint64_t>(p.T),
                            static_cast<uint64_t>(p.B)};
  const uint64_t strides[2] = {static_cast<uint64_t>(stride) * 2, static_cast<uint64_t>(stride) * 2 * p.T};
  const uint32_t box[3] = {64, kBM, 1};
  return detail::encode_bf16_map(map, x, 3, dims, strides, box);
}

// The wgmma forward of p on its TMA form when `tma` and the maps can be made, else on its cp.async
// form; returns whether it was the TMA form.
template <int D>
bool launch_wgmma(const Params& p, bool tma, cudaStream_t stream) {
  const unsigned int blocks = blocks_for(detail::ceil_div(p.T, kBM) * p.B * p.Hq, 1, "cuda::attention_forward");
  TmaMaps maps{};
  tma = tma && encode_rows(&maps.q, p.q, p, p.Hq, p.q_stride) && encode_rows(&maps.k, p.k, p, p.Hkv, p.kv_stride) &&
        encode_rows(&maps.v, p.v, p, p.Hkv, p.kv_stride);
  if (tma) {
    constexpr const char* kFn = "cuda::attention_forward (wgmma TMA kernel)";
    allow_shared_memory(flash_forward_wgmma_kernel<D, true>, smem_bytes<D>(true), kFn);
    flash_forward_wgmma_kernel<D, true><<<blocks, kTmaThreads, smem_bytes<D>(true), stream>>>(p, maps);
    check_launch(kFn);
  } else {
    constexpr const char* kFn = "cuda::attention_forward (wgmma kernel)";
    allow_shared_memory(flash_forward_wgmma_kernel<D, false>, smem_bytes<D>(false), kFn);
    flash_forward_wgmma_kernel<D, false><<<blocks, kThreads, smem_bytes<D>(false), stream>>>(p, maps);
    check_launch(kFn);
  }
  return tma;
}

// A device allocation for the self-check, freed on every path out.
template <class T>
struct Scratch {
  T* ptr = nullptr;
  explicit Scratch(size_t n) { check(cudaMalloc(&ptr, n * sizeof(T)), "attention wgmma self-check (cudaMalloc)"); }
  ~Scratch() { cudaFree(ptr); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

// max |got − want| / max |want| (infinite when got has a NaN).
double relative_error(const std::vector<float>& got, const std::vector<float>& want) {
  double max_diff = 0, max_want = 1e-30;
  for (size_t i = 0; i < want.size(); ++i) {
    const double diff = std::fabs(double(got[i]) - double(want[i]));
    max_diff = diff <= max_diff ? max_diff : (std::isnan(diff) ? INFINITY : diff);
    max_want = std::fmax(max_want, std::fabs(double(want[i])));
  }
  return max_diff / max_want;
}

// The self-checks' problem: causal, two batch rows, grouped heads, five 128-key tiles (the
// forward's stage ring wraps) and a partial last one; fixed random bf16 q, k, v and dO on the device.
struct CheckProblem {
  static constexpr int B = 2, T = 520, Hq = 4, Hkv = 2;
  static constexpr double kTolerance = 2e-2;
  static constexpr const char* kFn = "attention wgmma self-check";
  int D;
  size_t nq, nkv, nstat;
  Scratch<bf16> q, kv, dout;
  Params p{};

  explicit CheckProblem(int D_)
      : D(D_), nq(size_t{B} * T * Hq * D_), nkv(size_t{B} * T * Hkv * D_), nstat(size_t{B} * Hq * T), q(nq),
        kv(2 * nkv), dout(nq) {
    uint64_t x = 0x243F6A8885A308D3ull;
    const auto upload_random = [&x](bf16* dst, size_t n) {  // uniform in [-2, 2)
      std::vector<bf16> host(n);
      for (bf16& e : host) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        e = __float2bfloat16_rn(static_cast<float>(x >> 40) / float(1 << 24) * 4.f - 2.f);
      }
      check(cudaMemcpy(dst, host.data(), n * sizeof(bf16), cudaMemcpyHostToDevice), kFn);
    };
    upload_random(q.ptr, nq);
    upload_random(kv.ptr, 2 * nkv);
    upload_random(dout.ptr, nq);
    p.B = B;
    p.T = T;
    p.Hq = Hq;
    p.Hkv = Hkv;
    p.D = D;
    p.group = Hq / Hkv;
    p.q_stride = Hq * D;
    p.kv_stride = Hkv * D;
    p.scale = 1.f / std::sqrt(static_cast<float>(D));
    p.q = q.ptr;
    p.k = kv.ptr;
    p.v = kv.ptr + nkv;
  }
  std::string name() const { return "B=2 T=520 Hq=4 Hkv=2 D=" + std::to_string(D) + " causal"; }
};

std::vector<float> download(const bf16* src, size_t n) {
  std::vector<bf16> h(n);
  check(cudaMemcpy(h.data(), src, n * sizeof(bf16), cudaMemcpyDeviceToHost), CheckProblem::kFn);
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = __bfloat162float(h[i]);
  return out;
}
std::vector<float> download(const float* src, size_t n) {
  std::vector<float> out(n);
  check(cudaMemcpy(out.data(), src, n * sizeof(float), cudaMemcpyDeviceToHost), CheckProblem::kFn);
  return out;
}

// The wgmma forward (its TMA form if `tma`, else its cp.async form) against attention.cu's mma.sync
// forward. Empty on success, else what differed.
std::string self_check(int D, bool tma) {
  CheckProblem c(D);
  Scratch<bf16> out_wgmma(c.nq), out_mma(c.nq);
  Scratch<float> lse_wgmma(c.nstat), lse_mma(c.nstat);
  Params p = c.p;
  p.o = out_wgmma.ptr;
  p.lse_out = lse_wgmma.ptr;
  const bool ran_tma = D == 64 ? launch_wgmma<64>(p, tma, nullptr) : launch_wgmma<128>(p, tma, nullptr);
  if (ran_tma != tma) return "no tensor maps for its inputs";
  p.o = out_mma.ptr;
  p.lse_out = lse_mma.ptr;
  flash_forward(p, nullptr);
  check(cudaStreamSynchronize(nullptr), "attention wgmma self-check (running the kernels)");
  unsigned int timed_out = 0;
  check(cudaMemcpyFromSymbol(&timed_out, ptx::mbarrier_timed_out, sizeof(timed_out)), CheckProblem::kFn);
  if (timed_out) return "a barrier wait timed out: a tile's copies never completed";
  const double out_error = relative_error(download(out_wgmma.ptr, c.nq), download(out_mma.ptr, c.nq));
  const double lse_error = relative_error(download(lse_wgmma.ptr, c.nstat), download(lse_mma.ptr, c.nstat));
  if (out_error <= CheckProblem::kTolerance && lse_error <= CheckProblem::kTolerance) return {};
  return "out relative error " + std::to_string(out_error) + ", lse relative error " + std::to_string(lse_error) +
         " against the mma.sync kernel (" + c.name() + ")";
}

template <int D>
void launch_dq_wgmma(const Params& p, cudaStream_t stream) {
  constexpr const char* kFn = "cuda::attention_backward (wgmma dq)";
  const unsigned int blocks = blocks_for(detail::ceil_div(p.T, kBM) * p.B * p.Hq, 1, kFn);
  allow_shared_memory(flash_dq_wgmma_kernel<D>, dq_smem_bytes<D>(), kFn);
  flash_dq_wgmma_kernel<D><<<blocks, kThreads, dq_smem_bytes<D>(), stream>>>(p);
  check_launch(kFn);
}

template <int D>
void launch_dkv_wgmma(const Params& p, cudaStream_t stream) {
  constexpr const char* kFn = "cuda::attention_backward (wgmma dk, dv)";
  const unsigned int blocks = blocks_for(detail::ceil_div(p.T, kBM) * p.B * p.Hkv, 1, kFn);
  allow_shared_memory(flash_dkv_wgmma_kernel<D>, dkv_smem_bytes<D>(), kFn);
  flash_dkv_wgmma_kernel<D><<<blocks, kThreads, dkv_smem_bytes<D>(), stream>>>(p);
  check_launch(kFn);
}

// The wgmma dK, dV and dQ kernels against attention.cu's mma.sync ones, after the mma.sync forward
// and the backward's prologue: per kernel, empty on success, else what differed.
struct BackwardErrors {
  std::string dkv, dq;
};
BackwardErrors backward_self_check(int D) {
  CheckProblem c(D);
  Scratch<bf16> out(c.nq), dq_wgmma(c.nq), dq_mma(c.nq);
  Scratch<bf16> dkv_wgmma(2 * c.nkv), dkv_mma(2 * c.nkv);  // dK, then dV
  Scratch<float> lse(c.nstat), delta(c.nstat);
  Scratch<int32_t> first_key(size_t{CheckProblem::B} * CheckProblem::T);
  Params p = c.p;
  p.o = out.ptr;
  p.lse_out = lse.ptr;
  flash_forward(p, nullptr);
  p.out = out.ptr;
  p.dout = c.dout.ptr;
  p.lse = lse.ptr;
  p.delta = delta.ptr;
  p.first_key = first_key.ptr;
  backward_prologue(p, nullptr, first_key.ptr, nullptr);
  const auto outputs = [&](bf16* dq, bf16* dkv) {
    p.dq = dq;
    p.dk = dkv;
    p.dv = dkv + c.nkv;
  };
  outputs(dq_mma.ptr, dkv_mma.ptr);
  flash_dkv(p, nullptr);
  flash_dq(p, nullptr);
  outputs(dq_wgmma.ptr, dkv_wgmma.ptr);
  if (D == 64) launch_dkv_wgmma<64>(p, nullptr), launch_dq_wgmma<64>(p, nullptr);
  else launch_dkv_wgmma<128>(p, nullptr), launch_dq_wgmma<128>(p, nullptr);
  check(cudaStreamSynchronize(nullptr), "attention wgmma backward self-check (running the kernels)");
  const auto compare = [&](const char* what, const bf16* got, const bf16* want, size_t n) -> std::string {
    const double error = relative_error(download(got, n), download(want, n));
    if (error <= CheckProblem::kTolerance) return {};
    return std::string(what) + " relative error " + std::to_string(error) + " against the mma.sync kernel (" +
           c.name() + ")";
  };
  std::string dkv = compare("dk", dkv_wgmma.ptr, dkv_mma.ptr, c.nkv);
  if (dkv.empty()) dkv = compare("dv", dkv_wgmma.ptr + c.nkv, dkv_mma.ptr + c.nkv, c.nkv);
  return {dkv, compare("dq", dq_wgmma.ptr, dq_mma.ptr, c.nq)};
}
#endif

}  // namespace

bool forward_wgmma_usable(int64_t D) {
#if defined(LLM_GEMM_WGMMA)
  if ((D != 64 && D != 128) || !attention_wgmma_enabled() || !attention_wgmma_available()) return false;
  static std::array<std::once_flag, 2> checked;
  std::call_once(checked[D == 128], [D] {
    const std::string error = self_check(static_cast<int>(D), false);
    if (error.empty()) return;
    set_attention_wgmma(false);
    std::fprintf(stderr, "warning: cuda::attention_forward: the wgmma kernel (D=%d) failed its self-check (%s); "
                 "using the mma.sync kernel for the rest of the process\n", static_cast<int>(D), error.c_str());
  });
  return attention_wgmma_enabled();
#else
  (void)D;
  return false;
#endif
}

namespace {
#if defined(LLM_GEMM_WGMMA)
// Whether the wgmma forward may take its TMA form for D: the switch is on, the driver makes tensor
// maps, and the form's own self-check passed on its first use for D (a failure turns the switch off
// with one line on stderr; the cp.async form then runs).
bool tma_usable(int D) {
  if (!attention_tma_enabled() || !attention_tma_available()) return false;
  static std::array<std::once_flag, 2> checked;
  std::call_once(checked[D == 128], [D] {
    const std::string error = self_check(D, true);
    if (error.empty()) return;
    set_attention_tma(false);
    std::fprintf(stderr, "warning: cuda::attention_forward: the wgmma kernel's TMA form (D=%d) failed its self-check "
                 "(%s); using its cp.async form for the rest of the process\n", D, error.c_str());
  });
  return attention_tma_enabled();
}
#endif
}  // namespace

BackwardKernels backward_wgmma_usable(int64_t D) {
#if defined(LLM_GEMM_WGMMA)
  if ((D != 64 && D != 128) || !attention_wgmma_enabled() || !attention_backward_wgmma_available()) return {};
  static std::array<BackwardKernels, 2> passed;
  static std::array<std::once_flag, 2> checked;
  std::call_once(checked[D == 128], [D] {
    const BackwardErrors errors = backward_self_check(static_cast<int>(D));
    passed[D == 128] = {errors.dkv.empty(), errors.dq.empty()};
    for (const auto& [kernel, error] : {std::pair{"dk, dv", errors.dkv}, std::pair{"dq", errors.dq}})
      if (!error.empty())
        std::fprintf(stderr, "warning: cuda::attention_backward: the wgmma %s kernel (D=%d) failed its self-check "
                     "(%s); using the mma.sync kernel for the rest of the process\n", kernel, static_cast<int>(D),
                     error.c_str());
  });
  return passed[D == 128];
#else
  (void)D;
  return {};
#endif
}

void flash_dkv_wgmma(const Params& p, cudaStream_t stream) {
#if defined(LLM_GEMM_WGMMA)
  if (p.D == 64) launch_dkv_wgmma<64>(p, stream);
  else launch_dkv_wgmma<128>(p, stream);
#else
  (void)p;
  (void)stream;
  throw std::runtime_error("cuda::attention_backward: the wgmma dk, dv kernel was not compiled in");
#endif
}

void flash_dq_wgmma(const Params& p, cudaStream_t stream) {
#if defined(LLM_GEMM_WGMMA)
  if (p.D == 64) launch_dq_wgmma<64>(p, stream);
  else launch_dq_wgmma<128>(p, stream);
#else
  (void)p;
  (void)stream;
  throw std::runtime_error("cuda::attention_backward: the wgmma dq kernel was not compiled in");
#endif
}

void flash_forward_wgmma(const Params& p, cudaStream_t stream) {
#if defined(LLM_GEMM_WGMMA)
  const bool tma = tma_usable(p.D);
  if (p.D == 64) launch_wgmma<64>(p, tma, stream);
  else launch_wgmma<128>(p, tma, stream);
#else
  (void)p;
  (void)stream;
  throw std::runtime_error("cuda::attention_forward: the wgmma kernel was not compiled in");
#endif
}

}  // namespace attention_impl

// These run on every launch: the exclusions (read from the environment once anyway) are kept.
bool attention_wgmma_available() {
  static const bool excluded = kernel_excluded("attention_wgmma");
  return wgmma_supported() && !excluded;
}

bool attention_tma_available() {
  static const bool excluded = kernel_excluded("attention_tma");
  return attention_wgmma_available() && !excluded && detail::tensor_maps_available();
}

bool attention_backward_wgmma_available() {
  static const bool excluded = kernel_excluded("attention_bwd_wgmma");
  return wgmma_supported() && !excluded;
}

bool attention_backward_wgmma_in_use(int64_t D) {
  const attention_impl::BackwardKernels kernels = attention_impl::backward_wgmma_usable(D);
  return kernels.dkv && kernels.dq;
}

}  // namespace llm::cuda
