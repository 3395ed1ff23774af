// The hand-written tensor-core GEMM: 128×128×32 block tiles, 8 warps of 64×32, bf16
// mma.sync.m16n8k16 with fp32 accumulators, a 4-stage cp.async pipeline and the fused epilogue.
//
// Each operand tile is kept in shared memory in its global layout, so every global→shared copy is a
// 16-byte cp.async along the contiguous dimension, and ldmatrix (.trans when the contiguous dimension
// is M or N rather than K) turns it into mma fragments:
//   K-major tile (A as M×K, B as N×K):   [128 rows][32 + 8]   80-byte rows
//   MN-major tile (A as K×M, B as K×N):  [32 rows][128 + 8]   272-byte rows
// The 8 rows an ldmatrix phase reads then start 80 or 272 bytes apart: 8 different 16-byte bank
// groups modulo 128 bytes, so fragment loads are free of bank conflicts. Elements past M, N or K
// are zero-filled by cp.async's src-size, so edge tiles need no other masking until the stores.
#include <algorithm>
#include <cstdint>

#include "kernels/cuda/gemm_impl.cuh"
#include "kernels/cuda/ptx.cuh"

namespace llm::cuda::gemm_impl {
namespace {

constexpr int kBM = 128, kBN = 128, kBK = 32;
constexpr int kStages = 4;
constexpr int kThreads = 256;  // 8 warps: 2 along M (64 rows each) × 4 along N (32 columns each)
constexpr int kPad = 8;        // elements added to each shared row (16 bytes)

template <bool kKMajor>
struct Tile {
  static constexpr int kRows = kKMajor ? 128 : kBK;
  static constexpr int kCols = kKMajor ? kBK : 128;
  static constexpr int kStride = kCols + kPad;  // elements between shared rows
  static constexpr int kElems = kRows * kStride;
  static constexpr int kChunksPerRow = kCols / 8;
  static constexpr int kChunks = kRows * kChunksPerRow;  // 16-byte copies per tile
};
static_assert(Tile<true>::kChunks == 2 * kThreads && Tile<false>::kChunks == 2 * kThreads, "2 copies per thread");

using ptx::cp_async_16;
using ptx::cp_async_commit;
using ptx::cp_async_wait;
using ptx::ldmatrix_x4;
using ptx::mma_bf16;
using ptx::smem_address;

// One operand's tile of block (outer0 .. +128) × (k0 .. +32) into shared memory. `outer` is M for A
// and N for B; X is stored outer×K (K-major) or K×outer, with leading dimension ld.
template <bool kKMajor>
__device__ __forceinline__ void load_tile(bf16* tile, const bf16* X, int64_t ld, int64_t outer_size, int64_t K,
                                          int64_t outer0, int64_t k0) {
  using T = Tile<kKMajor>;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int c = threadIdx.x + i * kThreads;
    const int row = c / T::kChunksPerRow, col = (c % T::kChunksPerRow) * 8;
    // (row, col) of the shared tile is (outer, k) when K-major, (k, outer) otherwise.
    const int64_t outer = outer0 + (kKMajor ? row : col);
    const int64_t k = k0 + (kKMajor ? col : row);
    int64_t valid = 0;  // elements of this 8-element chunk that lie inside the matrix
    if (kKMajor && outer < outer_size) valid = K - k;
    if (!kKMajor && k < K) valid = outer_size - outer;
    valid = valid < 0 ? 0 : (valid > 8 ? 8 : valid);
    const bf16* src = valid > 0 ? X + (kKMajor ? outer * ld + k : k * ld + outer) : X;
    cp_async_16(smem_address(tile + row * T::kStride + col), src, static_cast<int>(valid) * 2);
  }
}

template <bool kAKMajor, bool kBKMajor>
__global__ void __launch_bounds__(kThreads, 2) gemm_mma_kernel(TileArgs args) {
  using TA = Tile<kAKMajor>;
  using TB = Tile<kBKMajor>;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* sA = reinterpret_cast<bf16*>(smem_raw);  // kStages A tiles, then kStages B tiles
  bf16* sB = sA + kStages * TA::kElems;

  const int64_t z = blockIdx.z;
  const bf16* A = args.A + z * args.stride_a;
  const bf16* B = args.B + z * args.stride_b;
  int64_t tile_m, tile_n;
  banded_tile(tile_m, tile_n);
  const int64_t m0 = tile_m * kBM, n0 = tile_n * kBN;
  const int64_t num_k_tiles = (args.K + kBK - 1) / kBK;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wm = warp / 4, wn = warp % 4;  // this warp's 64×32 piece of the block tile

  float acc[4][4][4];  // [m16 tile][n8 tile][mma accumulator]
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.f;

  auto load_stage = [&](int64_t kt, int stage) {
    load_tile<kAKMajor>(sA + stage * TA::kElems, A, args.lda, args.M, args.K, m0, kt * kBK);
    load_tile<kBKMajor>(sB + stage * TB::kElems, B, args.ldb, args.N, args.K, n0, kt * kBK);
  };

  // Prologue: tiles 0 .. kStages-2 in flight, one commit group each (empty groups past the end keep
  // the group count, and so the wait below, uniform).
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < num_k_tiles) load_stage(s, s);
    cp_async_commit();
  }

  // ldmatrix lane roles (see the PTX ISA's mma.m16n8k16 fragment layouts):
  //   A non-trans (M×K tile): lane supplies row lane%16, k-offset 8·(lane/16) → a0..a3.
  //   A trans (K×M tile): matrix q = lane/8 covers m-offset 8·(q%2), k-offset 8·(q/2).
  //   B (two n8 tiles at once): matrix q covers n-offset 8·(q/2), k-offset 8·(q%2) → b0, b1 of
  //   the first n8 tile, then b0, b1 of the second.
  const int q = lane / 8, r8 = lane % 8;

  for (int64_t kt = 0; kt < num_k_tiles; ++kt) {
    // Tile kt has landed once at most kStages-2 newer groups are pending; the barrier makes every
    // thread's copies visible and guarantees all warps are done reading the stage reloaded next.
    cp_async_wait<kStages - 2>();
    __syncthreads();
    const int64_t next = kt + kStages - 1;
    if (next < num_k_tiles) load_stage(next, static_cast<int>(next % kStages));
    cp_async_commit();

    const bf16* tA = sA + static_cast<int>(kt % kStages) * TA::kElems;
    const bf16* tB = sB + static_cast<int>(kt % kStages) * TB::kElems;
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      uint32_t a[4][4], b[4][2];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int mrow = wm * 64 + i * 16;
        const bf16* p = kAKMajor ? tA + (mrow + lane % 16) * TA::kStride + kk + (lane / 16) * 8
                                 : tA + (kk + (q / 2) * 8 + r8) * TA::kStride + mrow + (q % 2) * 8;
        ldmatrix_x4<!kAKMajor>(a[i], smem_address(p));
      }
#pragma unroll
      for (int jp = 0; jp < 2; ++jp) {
        const int ncol = wn * 32 + jp * 16;
        const bf16* p = kBKMajor ? tB + (ncol + (q / 2) * 8 + r8) * TB::kStride + kk + (q % 2) * 8
                                 : tB + (kk + (q % 2) * 8 + r8) * TB::kStride + ncol + (q / 2) * 8;
        uint32_t r[4];
        ldmatrix_x4<!kBKMajor>(r, smem_address(p));
        b[2 * jp][0] = r[0], b[2 * jp][1] = r[1], b[2 * jp + 1][0] = r[2], b[2 * jp + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) mma_bf16(acc[i][j], a[i], b[j][0], b[j][1]);
    }
  }
  cp_async_wait<0>();  // only empty groups can be pending here; leave none behind

  // Accumulator c0, c1 is (row lane/4, columns 2·(lane%4) + 0, 1); c2, c3 the same 8 rows lower.
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t m = m0 + wm * 64 + i * 16 + g + h * 8;
      if (m >= args.M) continue;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t n = n0 + wn * 32 + j * 8 + 2 * t;
        finish_pair(args.ep, z, m, n, args.N, acc[i][j][2 * h], acc[i][j][2 * h + 1]);
      }
    }
}

template <bool kAKMajor, bool kBKMajor>
void launch(const Gemm& g, cudaStream_t stream) {
  auto kernel = gemm_mma_kernel<kAKMajor, kBKMajor>;
  const int smem = kStages * (Tile<kAKMajor>::kElems + Tile<kBKMajor>::kElems) * static_cast<int>(sizeof(bf16));
  launch_tiles(kernel, g, kBM, kBN, kThreads, smem, stream, "gemm native (tensor-core kernel)");
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

// cp.async moves 16 aligned bytes: operand rows (and batch items) must start on 16-byte boundaries.
// The grid's y extent caps M at 65535 block rows (8M rows), far above any layer.
bool native_fast_supported(const Gemm& g) {
  const bool batched = g.batch > 1;
  return aligned16(g.A) && aligned16(g.B) && g.lda % 8 == 0 && g.ldb % 8 == 0 &&
         (!batched || (g.stride_a % 8 == 0 && g.stride_b % 8 == 0)) && (g.M + kBM - 1) / kBM <= 65535;
}

void gemm_native_fast(const Gemm& g, cudaStream_t stream) {
  const bool a_kmajor = !g.trans_a, b_kmajor = g.trans_b;
  if (a_kmajor && b_kmajor) launch<true, true>(g, stream);        // x·Wᵀ (forward)
  else if (a_kmajor && !b_kmajor) launch<true, false>(g, stream);  // dY·W
  else if (!a_kmajor && !b_kmajor) launch<false, false>(g, stream);  // dYᵀ·X
  else launch<false, true>(g, stream);
}

}  // namespace llm::cuda::gemm_impl
