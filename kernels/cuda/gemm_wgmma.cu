// Hopper's tensor-core GEMM for the NT case (C = A·Bᵀ, A M×K and B N×K, both K-major): 128×256×64
// block tiles, two warpgroups of 64×256 each issuing wgmma.m64n256k16 with both operands read from
// shared memory through matrix descriptors, a 4-stage pipeline and the fused epilogue. Two kernels
// share that core and differ in how tiles reach shared memory:
//  - gemm_wgmma_tma_kernel (preferred): a third, producer warpgroup in which one thread issues TMA
//    copies (the Tensor Memory Accelerator fetches a whole tile, swizzles it and zero-fills past
//    the matrix edges), and mbarriers hand stages between producer and consumers, so the two
//    consumer warpgroups issue nothing but wgmma. The producer gives its registers to the consumers
//    (setmaxnreg). It needs a tensor map per operand (cuTensorMapEncodeTiled, from the driver).
//  - gemm_wgmma_kernel: every thread issues cp.async copies between its products, for operands
//    the TMA cannot describe and as the fallback when the TMA kernel is switched off or failed its
//    self-check.
//
// Shared tiles are in wgmma's canonical K-major 128-byte swizzle layout (ptx.cuh, wgmma_desc_k_sw128):
// tile row r (an M or N index) holds its 64 K-elements in 128 bytes, with 16-byte chunk c stored at
// chunk c ^ (r % 8); every tile starts on a 1024-byte boundary. The XOR spreads the 8 rows of a
// swizzle atom over all 32 banks, for the copies in and for the tensor cores' reads. It is also
// exactly what the TMA writes for a box 128 bytes wide under CU_TENSOR_MAP_SWIZZLE_128B.
//
// cp.async kernel, per k-tile kt: its copies have landed (cp.async.wait_group), each thread fences
// them into the async proxy (wgmma reads shared memory there), a barrier, then the 4 wgmma of the
// tile are committed as one group and the warpgroup waits until only that group is running. So while
// tile kt computes, kt-1 may still be on the tensor cores and kt+1, kt+2 are being copied: 4 stages,
// prefetch distance 2. The barrier of iteration kt comes after every warpgroup's wait for tile kt-2,
// so the stage that tile kt+2 overwrites, (kt+2) % 4 = (kt-2) % 4, has no reader left.
//
// TMA kernel: stage s has two barriers. full[s] completes when the producer has announced the
// stage's bytes and they have landed; empty[s] when all 256 consumer threads have released it (after
// the wgmma that read it finished). The producer waits on empty before refilling a stage, the
// consumers on full before reading it; the n-th use of a stage waits for phase parity n % 2.
//
// Elements past M, N or K are zero-filled (cp.async's src-size; the TMA by itself), as in
// gemm_native.cu, whose alignment rules (native_fast_supported) apply unchanged. The kernel bodies
// exist only in sm_90a code (wgmma has no plain sm_90 form); the host launches them only when
// LLM_GEMM_WGMMA says that code was built (kernels/CMakeLists.txt) and the device is compute
// capability 9.0.
#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>
#include <vector>

#include "kernels/cuda/gemm_impl.cuh"
#include "kernels/cuda/ptx.cuh"
#include "kernels/cuda/tensor_map.h"

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

// The epilogue of a warpgroup's 64×256 piece of C at rows m0.., columns n0..: acc[4j + 2h + e] is
// row 16·warp + lane/4 + 8h, column 8j + 2·(lane % 4) + e of it (ptx.cuh).
__device__ __forceinline__ void store_accumulators(const float (&acc)[128], const TileArgs& args, int64_t z,
                                                   int64_t m0, int64_t n0) {
  const int warp = (threadIdx.x % 128) / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t m = m0 + warp * 16 + lane / 4 + h * 8;
    if (m >= args.M) continue;
#pragma unroll
    for (int j = 0; j < kBN / 8; ++j) {
      const int64_t n = n0 + j * 8 + 2 * (lane % 4);
      finish_pair(args.ep, z, m, n, args.N, acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1]);
    }
  }
}

// The 4 wgmma of one k-tile for a warpgroup: its 64 rows of A (8 swizzle atoms of 1024 bytes each)
// at `a`, all 256 rows of B at `b`; the k16 step kk starts 32 bytes further along the 128-byte rows.
__device__ __forceinline__ void multiply_tile(float (&acc)[128], uint32_t a, uint32_t b) {
  ptx::wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < kBK / 16; ++kk)
    ptx::wgmma_m64n256k16_bf16(acc, ptx::wgmma_desc_k_sw128(a + kk * 32), ptx::wgmma_desc_k_sw128(b + kk * 32));
  ptx::wgmma_commit();
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
    multiply_tile(acc, tile_a(stage) + warpgroup * 64 * kRowBytes, tile_b(stage));
    ptx::wgmma_wait<1>();
  }
  ptx::wgmma_wait<0>();
  cp_async_wait<0>();  // only empty groups can be pending here; leave none behind

  store_accumulators(acc, args, z, m0 + warpgroup * 64, n0);
#endif
}

constexpr int kTmaThreads = 384;  // warpgroup 0: the producer; 1 and 2: the consumers
constexpr int kTmaConsumers = 256;
constexpr int kTmaSmemBytes = kSmemBytes + 2 * kStages * 8;  // + the full and empty barriers
// The producer keeps 40 registers and gives the rest to the consumers, whose 128 accumulators need
// more than the 168 that 384 threads get at launch: 128·40 + 256·232 ≤ 65536.
constexpr int kProducerRegisters = 40, kConsumerRegisters = 232;

// Whether an operand's batch items are stepped through (0: one matrix for all of them).
struct TmaBatch {
  int a, b;
};

__global__ void __launch_bounds__(kTmaThreads, 1)
    gemm_wgmma_tma_kernel(const __grid_constant__ CUtensorMap map_a, const __grid_constant__ CUtensorMap map_b,
                          TileArgs args, TmaBatch batch) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ unsigned char smem_raw[];
  const uint32_t smem = (ptx::smem_address(smem_raw) + 1023) & ~uint32_t{1023};
  auto tile_a = [&](int stage) { return smem + stage * kStageBytes; };
  auto tile_b = [&](int stage) { return smem + stage * kStageBytes + kTileABytes; };
  const uint32_t full = smem + kStages * kStageBytes, empty = full + kStages * 8;  // barrier s at + 8·s

  const int z = blockIdx.z;
  int64_t tile_m, tile_n;
  banded_tile(tile_m, tile_n);
  const int64_t m0 = tile_m * kBM, n0 = tile_n * kBN;
  const int64_t num_k_tiles = (args.K + kBK - 1) / kBK;
  const int warpgroup = threadIdx.x / 128;

  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      ptx::mbarrier_init(full + 8 * s, 1);  // the producer's arrive, plus the stage's bytes
      ptx::mbarrier_init(empty + 8 * s, kTmaConsumers);
    }
    ptx::fence_mbarrier_init();
  }
  __syncthreads();

  if (warpgroup == 0) {
    ptx::setmaxnreg_dec<kProducerRegisters>();
    if (threadIdx.x == 0) {
      ptx::prefetch_tensormap(&map_a);
      ptx::prefetch_tensormap(&map_b);
      for (int64_t kt = 0; kt < num_k_tiles; ++kt) {
        const int stage = static_cast<int>(kt % kStages);
        const uint32_t use = static_cast<uint32_t>(kt / kStages);
        if (use > 0) ptx::mbarrier_wait(empty + 8 * stage, (use - 1) & 1);  // its last readers are done
        ptx::mbarrier_arrive_expect_tx(full + 8 * stage, kStageBytes);
        const int k = static_cast<int>(kt * kBK);
        ptx::tma_load_3d(tile_a(stage), &map_a, full + 8 * stage, k, static_cast<int>(m0), z * batch.a);
        ptx::tma_load_3d(tile_b(stage), &map_b, full + 8 * stage, k, static_cast<int>(n0), z * batch.b);
      }
    }
    return;  // the consumers keep the block (and so the copies' barriers) alive
  }

  ptx::setmaxnreg_inc<kConsumerRegisters>();
  const int consumer = warpgroup - 1;
  float acc[128];
#pragma unroll
  for (int i = 0; i < 128; ++i) acc[i] = 0.f;
  for (int64_t kt = 0; kt < num_k_tiles; ++kt) {
    const int stage = static_cast<int>(kt % kStages);
    ptx::mbarrier_wait(full + 8 * stage, static_cast<uint32_t>(kt / kStages) & 1);
    multiply_tile(acc, tile_a(stage) + consumer * 64 * kRowBytes, tile_b(stage));
    ptx::wgmma_wait<1>();  // tile kt-1's products are done: its stage may be refilled
    if (kt > 0) ptx::mbarrier_arrive(empty + 8 * static_cast<int>((kt - 1) % kStages));
  }
  ptx::wgmma_wait<0>();
  store_accumulators(acc, args, z, m0 + consumer * 64, n0);
#else
  (void)map_a, (void)map_b, (void)args, (void)batch;
#endif
}

#if defined(LLM_GEMM_WGMMA)
// The tensor map of a K-major operand X (rows × K, leading dimension ld; `items` batch items
// `stride` elements apart) in boxes of box_rows × 64 elements. A stride of 0 (one matrix shared by
// every item) gets a map of one item. False where the TMA cannot describe X.
bool encode_operand(CUtensorMap* map, const bf16* X, int64_t rows, int64_t K, int64_t ld, int64_t items,
                    int64_t stride, int box_rows) {
  if (stride < 0) return false;
  const bool stepped = items > 1 && stride != 0;
  const uint64_t dims[3] = {static_cast<uint64_t>(K), static_cast<uint64_t>(rows),
                            static_cast<uint64_t>(stepped ? items : 1)};
  const uint64_t strides[2] = {static_cast<uint64_t>(ld) * 2,
                               static_cast<uint64_t>(stepped ? stride : rows * ld) * 2};  // bytes
  const uint32_t box[3] = {kBK, static_cast<uint32_t>(box_rows), 1};
  return detail::encode_bf16_map(map, X, 3, dims, strides, box);
}

// g on the TMA kernel, or on the cp.async kernel for any batch chunk whose operands have no tensor
// map. Returns whether every chunk ran on the TMA kernel.
bool launch_wgmma(const Gemm& g, bool tma, cudaStream_t stream) {
  constexpr const char* kTmaFn = "gemm native (wgmma TMA kernel)";
  constexpr const char* kFn = "gemm native (wgmma kernel)";
  bool all_tma = true, attributes_set[2] = {false, false};
  for_each_chunk(g, kBM, kBN, [&](const TileArgs& chunk, dim3 grid) {
    CUtensorMap map_a, map_b;
    const bool use_tma = tma && encode_operand(&map_a, chunk.A, g.M, g.K, g.lda, grid.z, g.stride_a, kBM) &&
                         encode_operand(&map_b, chunk.B, g.N, g.K, g.ldb, grid.z, g.stride_b, kBN);
    all_tma = all_tma && use_tma;
    if (!attributes_set[use_tma]) {
      attributes_set[use_tma] = true;
      constexpr auto kMaxSmem = cudaFuncAttributeMaxDynamicSharedMemorySize;
      if (use_tma) check(cudaFuncSetAttribute(gemm_wgmma_tma_kernel, kMaxSmem, kTmaSmemBytes), kTmaFn);
      else check(cudaFuncSetAttribute(gemm_wgmma_kernel, kMaxSmem, kSmemBytes), kFn);
    }
    if (use_tma) {
      const TmaBatch batch{g.stride_a != 0, g.stride_b != 0};
      gemm_wgmma_tma_kernel<<<grid, kTmaThreads, kTmaSmemBytes, stream>>>(map_a, map_b, chunk, batch);
      check_launch(kTmaFn);
    } else {
      gemm_wgmma_kernel<<<grid, kThreads, kSmemBytes, stream>>>(chunk);
      check_launch(kFn);
    }
  });
  return all_tma;
}

// The TMA kernel against the mma.sync kernel on a product whose edges cut tiles in M, N and K and
// whose 9 k-tiles wrap the stage ring twice, fp32 output, fixed random bf16 inputs. Empty on
// success, else what differed.
std::string tma_self_check(cudaStream_t stream) {
  constexpr int64_t M = 200, N = 300, K = 520;
  std::vector<bf16> host(size_t{M + N} * K);
  uint64_t x = 0x13198A2E03707344ull;
  for (bf16& e : host) {  // uniform in [-2, 2)
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    e = __float2bfloat16_rn(static_cast<float>(x >> 40) / float(1 << 24) * 4.f - 2.f);
  }
  constexpr const char* kFn = "gemm wgmma TMA self-check";
  detail::StreamScratch operands(host.size() * sizeof(bf16), stream, kFn);
  detail::StreamScratch c_tma(M * N * sizeof(float), stream, kFn), c_ref(M * N * sizeof(float), stream, kFn);
  check(cudaMemcpyAsync(operands.as<bf16>(), host.data(), host.size() * sizeof(bf16), cudaMemcpyHostToDevice,
                        stream),
        kFn);
  Gemm g;
  g.trans_b = true, g.M = M, g.N = N, g.K = K, g.c_fp32 = true;
  g.A = operands.as<bf16>(), g.lda = K, g.B = operands.as<bf16>() + M * K, g.ldb = K, g.ldc = N;
  g.C = c_tma.as<void>();
  if (!launch_wgmma(g, true, stream)) return "no tensor map for its operands";
  g.C = c_ref.as<void>();
  gemm_native_fast(g, stream);
  float diff = 0.f, scale = 0.f;
  const bool agree = results_agree(g, c_tma.as<void>(), c_ref.as<void>(), M * N, stream, diff, scale);
  unsigned int timed_out = 0;
  check(cudaMemcpyFromSymbol(&timed_out, ptx::mbarrier_timed_out, sizeof(timed_out)), kFn);
  if (timed_out) return "a barrier wait timed out: a stage's copies never completed";
  if (agree) return {};
  return "largest difference " + std::to_string(diff) + ", largest |C| " + std::to_string(scale) +
         " against the mma.sync kernel (M 200, N 300, K 520, fp32 output)";
}

// Whether the TMA kernel may run: switched on and, on its first use in the process, its self-check
// passed (a failure switches it off, with one line on stderr).
bool tma_allowed(cudaStream_t stream) {
  if (!gemm_tma_enabled() || !gemm_tma_available()) return false;
  static std::once_flag checked;
  std::call_once(checked, [stream] {
    const std::string error = tma_self_check(stream);
    if (error.empty()) return;
    set_gemm_tma(false);
    std::fprintf(stderr, "warning: cuda::gemm: the wgmma TMA kernel failed its self-check (%s); using the cp.async "
                 "wgmma kernel for the rest of the process\n", error.c_str());
  });
  return gemm_tma_enabled();
}

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
  return !g.trans_a && g.trans_b && gemm_wgmma_enabled() && native_fast_supported(g) && gemm_wgmma_available();
#else
  (void)g;
  return false;
#endif
}

void gemm_wgmma(const Gemm& g, cudaStream_t stream) {
#if defined(LLM_GEMM_WGMMA)
  launch_wgmma(g, tma_allowed(stream), stream);
#else
  (void)g, (void)stream;
#endif
}

}  // namespace gemm_impl

bool wgmma_supported() {
#if defined(LLM_GEMM_WGMMA)
  return gemm_impl::device_is_sm90();
#else
  return false;
#endif
}

// These run on every product: the exclusions (read from the environment once anyway) are kept.
bool gemm_wgmma_available() {
  static const bool excluded = kernel_excluded("gemm_wgmma");
  return wgmma_supported() && !excluded;
}

bool gemm_tma_available() {
  static const bool excluded = kernel_excluded("gemm_tma");
  return gemm_wgmma_available() && !excluded && detail::tensor_maps_available();
}

}  // namespace llm::cuda
