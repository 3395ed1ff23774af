// Hopper's tensor-core GEMM for the NT case (C = A·Bᵀ, A M×K and B N×K, both K-major): 128×256×64
// block tiles, two warpgroups of 64×256 each issuing wgmma.m64n256k16 with both operands read from
// shared memory through matrix descriptors, a 4-stage cp.async pipeline and the fused epilogue.
//
// Shared tiles are in wgmma's canonical K-major 128-byte swizzle layout (ptx.cuh, wgmma_desc_k_sw128):
// tile row r (an M or N index) holds its 64 K-elements in 128 bytes, with 16-byte chunk c stored at
// chunk c ^ (r % 8); every tile starts on a 1024-byte boundary. The XOR spreads the 8 rows of a
// swizzle atom over all 32 banks, for the copies in and for the tensor cores' reads.
//
// Per k-tile kt: its copies have landed (cp.async.wait_group), each thread fences them into the async
// proxy (wgmma reads shared memory there), a barrier, then the 4 wgmma of the tile are committed as
// one group and the warpgroup waits until only that group is running. So while tile kt computes,
// kt-1 may still be on the tensor cores and kt+1, kt+2 are being copied: 4 stages, prefetch
// distance 2. The barrier of iteration kt comes after every warpgroup's wait for tile kt-2, so the
// stage that tile kt+2 overwrites, (kt+2) % 4 = (kt-2) % 4, has no reader left.
//
// Elements past M, N or K are zero-filled by cp.async's src-size, as in gemm_native.cu, whose
// alignment rules (native_fast_supported) apply unchanged. The kernel body exists only in sm_90a code
// (wgmma has no plain sm_90 form); the host launches it only when LLM_GEMM_WGMMA says that code was
// built (kernels/CMakeLists.txt) and the device is compute capability 9.0.
#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>

#include "kernels/cuda/gemm_impl.cuh"
#include "kernels/cuda/ptx.cuh"

namespace llm::cuda {
namespace gemm_impl {
namespace {

constexpr int kBM = 128, kBN = 256, kBK = 64;
constexpr int kStages = 4;
constexpr int kThreads = 256;                 // 2 warpgroups, each 64 rows of the block tile
constexpr int kRowBytes = kBK * 2;            // one tile row: 64 bf16 along K
constexpr int kTileABytes = kBM * kRowBytes;  // 16 KB
constexpr int kTileBBytes = kBN * kRowBytes;  // 32 KB
constexpr int kStageBytes = kTileABytes + kTileBBytes;
constexpr int kSmemBytes = kStages * kStageBytes + 1024;  // + room to align the base to 1024 bytes
static_assert(kTileABytes % 1024 == 0 && kStageBytes % 1024 == 0, "tiles must start on 1024-byte boundaries");

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
using ptx::cp_async_16;
using ptx::cp_async_commit;
using ptx::cp_async_wait;

// Rows outer0 .. outer0 + kRows - 1 (M for A, N for B), k0 .. k0 + 63 of X (outer×K, leading dim ld)
// into the swizzled tile at shared address `tile`: 8 chunks of 16 bytes per row, 8 consecutive
// threads per row so each row is read as one 128-byte segment.
template <int kRows>
__device__ __forceinline__ void load_tile(uint32_t tile, const bf16* X, int64_t ld, int64_t outer_size, int64_t K,
                                          int64_t outer0, int64_t k0) {
#pragma unroll
  for (int i = 0; i < kRows * 8 / kThreads; ++i) {
    const int c = threadIdx.x + i * kThreads;
    const int row = c / 8, chunk = c % 8;
    const int64_t outer = outer0 + row, k = k0 + chunk * 8;
    int64_t valid = outer < outer_size ? K - k : 0;  // elements of this chunk inside the matrix
    valid = valid < 0 ? 0 : (valid > 8 ? 8 : valid);
    const bf16* src = valid > 0 ? X + outer * ld + k : X;
    cp_async_16(tile + row * kRowBytes + ((chunk ^ (row % 8)) * 16), src, static_cast<int>(valid) * 2);
  }
}
#endif

__global__ void __launch_bounds__(kThreads, 1) gemm_wgmma_kernel(TileArgs args) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ unsigned char smem_raw[];
  const uint32_t smem = (ptx::smem_address(smem_raw) + 1023) & ~uint32_t{1023};
  auto tile_a = [&](int stage) { return smem + stage * kStageBytes; };
  auto tile_b = [&](int stage) { return smem + stage * kStageBytes + kTileABytes; };

  const int64_t z = blockIdx.z;
  const bf16* A = args.A + z * args.stride_a;
  const bf16* B = args.B + z * args.stride_b;
  int64_t tile_m, tile_n;
  banded_tile(tile_m, tile_n);
  const int64_t m0 = tile_m * kBM, n0 = tile_n * kBN;
  const int64_t num_k_tiles = (args.K + kBK - 1) / kBK;
  const int warpgroup = threadIdx.x / 128;

  float acc[128];
#pragma unroll
  for (int i = 0; i < 128; ++i) acc[i] = 0.f;

  auto load_stage = [&](int64_t kt, int stage) {
    load_tile<kBM>(tile_a(stage), A, args.lda, args.M, args.K, m0, kt * kBK);
    load_tile<kBN>(tile_b(stage), B, args.ldb, args.N, args.K, n0, kt * kBK);
  };

  // Prologue: tiles 0 and 1 in flight, one commit group each (empty groups past the end keep the
  // group count, and so the wait below, uniform).
  constexpr int kAhead = kStages - 2;
#pragma unroll
  for (int s = 0; s < kAhead; ++s) {
    if (s < num_k_tiles) load_stage(s, s);
    cp_async_commit();
  }

  for (int64_t kt = 0; kt < num_k_tiles; ++kt) {
    // kAhead + kt groups are committed and tile kt is group kt: it has landed once at most
    // kAhead - 1 newer groups are pending.
    cp_async_wait<kAhead - 1>();
    ptx::fence_proxy_async_shared();
    __syncthreads();
    const int64_t next = kt + kAhead;
    if (next < num_k_tiles) load_stage(next, static_cast<int>(next % kStages));
    cp_async_commit();

    const int stage = static_cast<int>(kt % kStages);
    // This warpgroup's 64 rows of A (8 swizzle atoms of 1024 bytes each), all 256 rows of B; the
    // k16 step kk starts 32 bytes further along the 128-byte rows.
    const uint32_t a = tile_a(stage) + warpgroup * 64 * kRowBytes, b = tile_b(stage);
    ptx::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBK / 16; ++kk)
      ptx::wgmma_m64n256k16_bf16(acc, ptx::wgmma_desc_k_sw128(a + kk * 32), ptx::wgmma_desc_k_sw128(b + kk * 32));
    ptx::wgmma_commit();
    ptx::wgmma_wait<1>();
  }
  ptx::wgmma_wait<0>();
  cp_async_wait<0>();  // only empty groups can be pending here; leave none behind

  // acc[4j + 2h + e] is row 16·warp + lane/4 + 8h, column 8j + 2·(lane % 4) + e of the warpgroup's
  // 64×256 piece (ptx.cuh).
  const int warp = (threadIdx.x % 128) / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t m = m0 + warpgroup * 64 + warp * 16 + lane / 4 + h * 8;
    if (m >= args.M) continue;
#pragma unroll
    for (int j = 0; j < kBN / 8; ++j) {
      const int64_t n = n0 + j * 8 + 2 * (lane % 4);
      finish_pair(args.ep, z, m, n, args.N, acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1]);
    }
  }
#endif
}

#if defined(LLM_GEMM_WGMMA)
// Whether the current device is compute capability 9.0, the only one the sm_90a code runs on.
bool device_is_sm90() {
  static std::array<std::atomic<int>, 64> known{};  // per device: 0 unknown, 1 yes, 2 no
  int device = 0;
  check(cudaGetDevice(&device), "gemm wgmma (current device)");
  if (device < 0 || device >= static_cast<int>(known.size())) return false;
  int state = known[device].load();
  if (state == 0) {
    int major = 0, minor = 0;
    check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "gemm wgmma (device query)");
    check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device), "gemm wgmma (device query)");
    state = major == 9 && minor == 0 ? 1 : 2;
    known[device].store(state);
  }
  return state == 1;
}
#endif

}  // namespace

bool wgmma_usable(const Gemm& g) {
#if defined(LLM_GEMM_WGMMA)
  return !g.trans_a && g.trans_b && gemm_wgmma_enabled() && native_fast_supported(g) && device_is_sm90();
#else
  (void)g;
  return false;
#endif
}

void gemm_wgmma(const Gemm& g, cudaStream_t stream) {
  launch_tiles(gemm_wgmma_kernel, g, kBM, kBN, kThreads, kSmemBytes, stream, "gemm native (wgmma kernel)");
}

}  // namespace gemm_impl

bool gemm_wgmma_available() {
#if defined(LLM_GEMM_WGMMA)
  return gemm_impl::device_is_sm90();
#else
  return false;
#endif
}

}  // namespace llm::cuda
