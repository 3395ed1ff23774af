// gemm(): the reference kernel, the choice between backends (kAuto's timing and cache), and
// bias_grad. The tensor-core kernels are in gemm_native.cu (mma.sync) and gemm_wgmma.cu (Hopper),
// the cuBLASLt path in gemm_cublas.cu; the argument checks in host_checks.cpp.
#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

#include "kernels/cuda/gemm_impl.cuh"
#include "kernels/cuda/host_checks.h"

namespace llm::cuda {

const char* to_string(GemmBackend backend) {
  switch (backend) {
    case GemmBackend::kNative: return "native";
    case GemmBackend::kCublas: return "cublas";
    case GemmBackend::kAuto: return "auto";
    case GemmBackend::kSimple: return "simple";
  }
  return "?";
}

namespace gemm_impl {
namespace {

size_t element_size(const Gemm& g) { return g.c_fp32 ? sizeof(float) : sizeof(bf16); }

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

void* advance(void* p, int64_t elements, size_t element_bytes) {
  return p ? static_cast<unsigned char*>(p) + elements * static_cast<int64_t>(element_bytes) : nullptr;
}

[[noreturn]] void bad_argument(const std::string& what) { throw std::runtime_error("gemm: " + what); }

__global__ void gemm_simple_kernel(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const bf16* A,
                                   int64_t lda, int64_t stride_a, const bf16* B, int64_t ldb, int64_t stride_b,
                                   Epilogue ep) {
  const int64_t z = blockIdx.z;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  A += z * stride_a;
  B += z * stride_b;
  for (int64_t m = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; m < M;
       m += static_cast<int64_t>(gridDim.y) * blockDim.y) {
    float acc = 0.f;
    for (int64_t k = 0; k < K; ++k) {
      const float a = __bfloat162float(trans_a ? A[k * lda + m] : A[m * lda + k]);
      const float b = __bfloat162float(trans_b ? B[n * ldb + k] : B[k * ldb + n]);
      acc = fmaf(a, b, acc);
    }
    finish(ep, z, m, n, acc);
  }
}

__global__ void epilogue_from_kernel(Epilogue ep, const void* P, int64_t M, int64_t N, int64_t total) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t z = i / (M * N), m = (i % (M * N)) / N, n = i % N;
    const int64_t idx = z * ep.stride_c + m * ep.ldc + n;
    const float p = ep.c_fp32 ? static_cast<const float*>(P)[idx] : __bfloat162float(static_cast<const bf16*>(P)[idx]);
    finish(ep, z, m, n, p);
  }
}

}  // namespace

Epilogue make_epilogue(const Gemm& g) {
  Epilogue e;
  e.alpha = g.alpha, e.beta = g.beta, e.bias = g.bias, e.gelu = g.gelu;
  e.pre_gelu = g.gelu ? g.pre_gelu : nullptr;
  e.residual = g.residual, e.C = g.C, e.ldc = g.ldc, e.stride_c = g.stride_c, e.c_fp32 = g.c_fp32;
  const size_t pair_bytes = 2 * element_size(g);
  e.pairs = g.ldc % 2 == 0 && (g.batch == 1 || g.stride_c % 2 == 0) && aligned(e.C, pair_bytes) &&
            aligned(e.pre_gelu, pair_bytes) && aligned(e.residual, pair_bytes);
  return e;
}

Epilogue shift_batch(Epilogue e, int64_t first) {
  const size_t bytes = e.c_fp32 ? sizeof(float) : sizeof(bf16);
  const int64_t offset = first * e.stride_c;
  e.C = advance(e.C, offset, bytes);
  e.pre_gelu = advance(e.pre_gelu, offset, bytes);
  e.residual = advance(const_cast<void*>(e.residual), offset, bytes);
  return e;
}

void gemm_simple(const Gemm& g, cudaStream_t stream) {
  const Epilogue ep = make_epilogue(g);
  const dim3 block(16, 16);
  const int64_t row_blocks = std::min<int64_t>((g.M + 15) / 16, 65535);
  for (int64_t first = 0; first < g.batch; first += kMaxGridZ) {
    const dim3 grid(static_cast<unsigned>((g.N + 15) / 16), static_cast<unsigned>(row_blocks),
                    static_cast<unsigned>(std::min<int64_t>(g.batch - first, kMaxGridZ)));
    gemm_simple_kernel<<<grid, block, 0, stream>>>(g.trans_a, g.trans_b, g.M, g.N, g.K, g.A + first * g.stride_a,
                                                   g.lda, g.stride_a, g.B + first * g.stride_b, g.ldb, g.stride_b,
                                                   shift_batch(ep, first));
    check_launch("gemm simple (reference kernel)");
  }
}

void epilogue_from(const Epilogue& e, const void* P, int64_t M, int64_t N, int64_t batch, cudaStream_t stream) {
  const int64_t total = batch * M * N;
  const int blocks = static_cast<int>(std::min<int64_t>((total + 255) / 256, 65535));
  epilogue_from_kernel<<<blocks, 256, 0, stream>>>(e, P, M, N, total);
  check_launch("gemm epilogue (after cuBLASLt)");
}

namespace {

void run(const Gemm& g, GemmBackend backend, cudaStream_t stream) {
  switch (backend) {
    case GemmBackend::kSimple: gemm_simple(g, stream); return;
    case GemmBackend::kCublas:
      if (gemm_cublas(g, stream)) return;
      [[fallthrough]];  // the one epilogue combination cuBLASLt cannot express (see gemm_cublas.cu)
    case GemmBackend::kNative:
      if (wgmma_usable(g))
        gemm_wgmma(g, stream);
      else if (native_fast_supported(g))
        gemm_native_fast(g, stream);
      else
        gemm_simple(g, stream);
      return;
    case GemmBackend::kAuto: break;
  }
  bad_argument("kAuto must be resolved before running");
}

using detail::StreamScratch;

// Milliseconds for `reps` runs of g on `backend`, after one untimed run (cuBLASLt's algorithm choice).
float time_backend(const Gemm& g, GemmBackend backend, cudaStream_t stream) {
  constexpr int reps = 3;
  run(g, backend, stream);
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "gemm auto (event)");
  check(cudaEventCreate(&stop), "gemm auto (event)");
  cudaEventRecord(start, stream);
  for (int i = 0; i < reps; ++i) run(g, backend, stream);
  cudaEventRecord(stop, stream);
  const cudaError_t err = cudaEventSynchronize(stop);
  float ms = 0.f;
  cudaEventElapsedTime(&ms, start, stop);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  check(err, "gemm auto (timing)");
  return ms;
}

// Largest |x - y| and largest |y| over n elements, accumulated as float bits into out[0] and out[1]
// (non-negative floats order as their bit patterns, and a NaN difference above every number).
template <class T>
__global__ void max_difference_kernel(const T* x, const T* y, int64_t n, unsigned int* out) {
  float diff = 0.f, ref = 0.f;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const float a = to_f32(x[i]), b = to_f32(y[i]);
    const float d = fabsf(a - b);
    if (d > diff || d != d) diff = d;  // a NaN stays
    ref = fmaxf(ref, fabsf(b));
  }
  atomicMax(out, __float_as_uint(diff));
  atomicMax(out + 1, __float_as_uint(ref));
}

using AutoKey = std::array<int64_t, 14>;
AutoKey auto_key(const Gemm& g) {
  return {g.trans_a, g.trans_b, g.M, g.N, g.K, g.batch, g.c_fp32, g.bias != nullptr, g.gelu,
          g.gelu && g.pre_gelu != nullptr, g.beta != 0.f, g.residual != nullptr, native_fast_supported(g),
          wgmma_usable(g)};
}

}  // namespace

// results_agree: a largest difference of at most 2% of the largest |reference| element (an output rounded
// to bf16 differs by 0.4% at most; a wrong kernel is off by the size of the values themselves).
bool results_agree(const Gemm& g, const void* x, const void* reference, int64_t extent, cudaStream_t stream,
                   float& diff, float& scale) {
  StreamScratch out(2 * sizeof(unsigned int), stream, "gemm (comparing two results)");
  auto* bits = out.as<unsigned int>();
  check(cudaMemsetAsync(bits, 0, 2 * sizeof(unsigned int), stream), "gemm (comparing two results)");
  if (g.c_fp32)
    max_difference_kernel<<<256, 256, 0, stream>>>(static_cast<const float*>(x), static_cast<const float*>(reference), extent, bits);
  else
    max_difference_kernel<<<256, 256, 0, stream>>>(static_cast<const bf16*>(x), static_cast<const bf16*>(reference), extent, bits);
  check_launch("gemm (comparing two results)");
  unsigned int host[2] = {0, 0};
  check(cudaMemcpyAsync(host, bits, sizeof(host), cudaMemcpyDeviceToHost, stream), "gemm (comparing two results)");
  check(cudaStreamSynchronize(stream), "gemm (comparing two results)");
  std::memcpy(&diff, &host[0], sizeof(float));
  std::memcpy(&scale, &host[1], sizeof(float));
  return diff <= 2e-2f * scale;  // false for a NaN difference
}

}  // namespace gemm_impl

GemmBackend gemm_auto_choice(const Gemm& g, cudaStream_t stream) {
  using namespace gemm_impl;
  checks::gemm_args(g);
  static std::mutex mutex;
  static std::map<AutoKey, GemmBackend> chosen;
  std::lock_guard<std::mutex> lock(mutex);
  const AutoKey key = auto_key(g);
  if (auto it = chosen.find(key); it != chosen.end()) return it->second;

  // Time on zeroed copies of the output, one per backend, so that the caller's C (which beta or
  // residual may read) and pre_gelu are untouched; both backends then compute the same values.
  const int64_t extent = (g.batch - 1) * g.stride_c + (g.M - 1) * g.ldc + g.N;
  const size_t bytes = static_cast<size_t>(extent) * element_size(g);
  StreamScratch c_native(bytes, stream, "gemm auto (timing buffer)"), c_cublas(bytes, stream, "gemm auto (timing buffer)");
  StreamScratch pre(g.gelu && g.pre_gelu ? bytes : 0, stream, "gemm auto (timing buffer)");
  check(cudaMemsetAsync(c_native.as<void>(), 0, bytes, stream), "gemm auto (timing buffer)");
  check(cudaMemsetAsync(c_cublas.as<void>(), 0, bytes, stream), "gemm auto (timing buffer)");
  Gemm timed = g;
  if (g.gelu && g.pre_gelu) timed.pre_gelu = pre.as<void>();
  timed.C = c_native.as<void>();
  const float native_ms = time_backend(timed, GemmBackend::kNative, stream);
  timed.C = c_cublas.as<void>();
  const float cublas_ms = time_backend(timed, GemmBackend::kCublas, stream);
  GemmBackend best = native_ms <= cublas_ms ? GemmBackend::kNative : GemmBackend::kCublas;
  // A faster kernel that computes something else must not win: the native result is checked against
  // cuBLAS's once per shape, and a disagreement keeps cuBLAS (with one line on stderr).
  float diff = 0.f, scale = 0.f;
  if (best == GemmBackend::kNative && !results_agree(g, c_native.as<void>(), c_cublas.as<void>(), extent, stream, diff, scale)) {
    std::fprintf(stderr,
                 "warning: gemm auto: the native kernel's result differs from cuBLAS's (largest difference %g, "
                 "largest |C| %g) for M %lld, N %lld, K %lld%s: using cuBLAS for this shape\n",
                 diff, scale, static_cast<long long>(g.M), static_cast<long long>(g.N), static_cast<long long>(g.K),
                 wgmma_usable(g) ? " (wgmma kernel)" : "");
    best = GemmBackend::kCublas;
  }
  chosen[key] = best;
  return best;
}

void gemm(const Gemm& g, GemmBackend backend, cudaStream_t stream) {
  checks::gemm_args(g);
  if (backend == GemmBackend::kAuto) backend = gemm_auto_choice(g, stream);
  gemm_impl::run(g, backend, stream);
}

// ---- bias_grad: per-chunk column sums, then the chunks summed in order ----------------------

namespace {
constexpr int kBiasCols = 32, kBiasRowThreads = 8, kBiasRowsPerChunk = 256;

// partial[chunk, n] = sum of dy[m, n] over the chunk's rows, each thread striding by 8 rows and the
// 8 thread sums added in a fixed order.
__global__ void bias_grad_partial_kernel(int64_t M, int64_t N, const bf16* dy, int64_t ldy, float* partial) {
  __shared__ float sums[kBiasRowThreads][kBiasCols];
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kBiasCols + threadIdx.x;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kBiasRowsPerChunk;
  const int64_t row_end = row0 + kBiasRowsPerChunk < M ? row0 + kBiasRowsPerChunk : M;
  float s = 0.f;
  if (n < N)
    for (int64_t m = row0 + threadIdx.y; m < row_end; m += kBiasRowThreads) s += __bfloat162float(dy[m * ldy + n]);
  sums[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && n < N) {
    float total = 0.f;
    for (int r = 0; r < kBiasRowThreads; ++r) total += sums[r][threadIdx.x];
    partial[blockIdx.y * N + n] = total;
  }
}

__global__ void bias_grad_finish_kernel(int64_t N, int64_t chunks, const float* partial, float* db, bool accumulate) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  float total = 0.f;
  for (int64_t c = 0; c < chunks; ++c) total += partial[c * N + n];
  db[n] = accumulate ? db[n] + total : total;
}
}  // namespace

void bias_grad(int64_t M, int64_t N, const bf16* dy, int64_t ldy, float* db, bool accumulate, cudaStream_t stream) {
  checks::bias_grad_args(M, N, dy, ldy, db);
  const int64_t chunks = (M + kBiasRowsPerChunk - 1) / kBiasRowsPerChunk;
  if (chunks > 65535) throw std::runtime_error("bias_grad: M " + std::to_string(M) + " exceeds 16M rows");
  detail::StreamScratch scratch(static_cast<size_t>(chunks * N) * sizeof(float), stream, "bias_grad (workspace)");
  float* partial = scratch.as<float>();
  const dim3 grid(static_cast<unsigned>((N + kBiasCols - 1) / kBiasCols), static_cast<unsigned>(chunks));
  bias_grad_partial_kernel<<<grid, dim3(kBiasCols, kBiasRowThreads), 0, stream>>>(M, N, dy, ldy, partial);
  check_launch("bias_grad (column sums)");
  bias_grad_finish_kernel<<<static_cast<unsigned>((N + 255) / 256), 256, 0, stream>>>(N, chunks, partial, db,
                                                                                      accumulate);
  check_launch("bias_grad (sum of chunks)");
}

}  // namespace llm::cuda
