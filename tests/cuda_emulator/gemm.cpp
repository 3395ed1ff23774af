// kernels/cuda/gemm.h on the CPU: the product through cpu::sgemm in fp32 (as the tensor cores
// accumulate), then the header's epilogue in its order, each stored value rounded once.
#include "kernels/cuda/gemm.h"

#include "kernels/cpu/fused.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cuda/host_checks.h"
#include "tests/cuda_emulator/kernel_util.h"

namespace llm::cuda {

namespace emu = cuda_emulator;

const char* to_string(GemmBackend backend) {
  switch (backend) {
    case GemmBackend::kNative: return "native";
    case GemmBackend::kCublas: return "cublas";
    case GemmBackend::kAuto: return "auto";
    case GemmBackend::kSimple: return "simple";
  }
  return "?";
}

namespace {

// Elements spanned by `batch` matrices of rows × cols (leading dimension ld), `stride` apart.
int64_t extent(int64_t batch, int64_t stride, int64_t rows, int64_t cols, int64_t ld) {
  return (batch - 1) * stride + (rows - 1) * ld + cols;
}

// The rows × cols matrix at p (leading dimension ld) as contiguous fp32.
std::vector<float> read_matrix(const bf16* p, int64_t rows, int64_t cols, int64_t ld) {
  std::vector<float> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = emu::widen(p[r * ld + c]);
  return out;
}

template <class T>
void run(const Gemm& g) {
  constexpr const char* kFn = "cuda::gemm";
  const int64_t a_rows = g.trans_a ? g.K : g.M, a_cols = g.trans_a ? g.M : g.K;
  const int64_t b_rows = g.trans_b ? g.N : g.K, b_cols = g.trans_b ? g.K : g.N;
  const int64_t c_extent = extent(g.batch, g.stride_c, g.M, g.N, g.ldc);
  auto* C = static_cast<T*>(g.C);
  emu::require(g.A, extent(g.batch, g.stride_a, a_rows, a_cols, g.lda), kFn, "A");
  emu::require(g.B, extent(g.batch, g.stride_b, b_rows, b_cols, g.ldb), kFn, "B");
  emu::require(C, c_extent, kFn, "C");
  if (g.bias) emu::require(g.bias, g.N, kFn, "bias");
  if (g.gelu && g.pre_gelu) emu::require(static_cast<T*>(g.pre_gelu), c_extent, kFn, "pre_gelu");
  if (g.residual) emu::require(static_cast<const T*>(g.residual), c_extent, kFn, "residual");

  std::vector<float> product(static_cast<size_t>(g.M * g.N)), activated(product.size());
  for (int64_t z = 0; z < g.batch; ++z) {
    const std::vector<float> a = read_matrix(g.A + z * g.stride_a, a_rows, a_cols, g.lda);
    const std::vector<float> b = read_matrix(g.B + z * g.stride_b, b_rows, b_cols, g.ldb);
    cpu::sgemm(g.trans_a, g.trans_b, g.M, g.N, g.K, g.alpha, a.data(), a_cols, b.data(), b_cols, 0.f, product.data(),
               g.N, g.bias);
    if (g.gelu) cpu::gelu_forward(g.M * g.N, product.data(), activated.data());
    const int64_t offset = z * g.stride_c;
    for (int64_t m = 0; m < g.M; ++m) {
      for (int64_t n = 0; n < g.N; ++n) {
        const int64_t c = offset + m * g.ldc + n;
        float v = product[m * g.N + n];
        if (g.gelu) {
          if (g.pre_gelu) emu::narrow(v, static_cast<T*>(g.pre_gelu) + c);
          v = activated[m * g.N + n];
        }
        if (g.beta != 0.f) v += g.beta * emu::widen(C[c]);
        if (g.residual) v += emu::widen(static_cast<const T*>(g.residual)[c]);
        emu::narrow(v, C + c);
      }
    }
  }
}

}  // namespace

void gemm(const Gemm& g, GemmBackend, cudaStream_t stream) {
  emu::require_stream(stream, "cuda::gemm");
  checks::gemm_args(g);
  if (g.c_fp32) run<float>(g);
  else run<bf16>(g);
}

GemmBackend gemm_auto_choice(const Gemm& g, cudaStream_t stream) {
  emu::require_stream(stream, "cuda::gemm_auto_choice");
  checks::gemm_args(g);
  return GemmBackend::kNative;
}

// The emulator has one implementation for every backend; there is no wgmma kernel to run.
bool wgmma_supported() { return false; }
bool gemm_wgmma_available() { return false; }
bool gemm_tma_available() { return false; }

void bias_grad(int64_t M, int64_t N, const bf16* dy, int64_t ldy, float* db, bool accumulate, cudaStream_t stream) {
  constexpr const char* kFn = "cuda::bias_grad";
  emu::require_stream(stream, kFn);
  checks::bias_grad_args(M, N, dy, ldy, db);
  emu::require(dy, (M - 1) * ldy + N, kFn, "dy");
  emu::require(db, N, kFn, "db");
  for (int64_t n = 0; n < N; ++n) {
    float total = 0.f;
    for (int64_t m = 0; m < M; ++m) total += emu::widen(dy[m * ldy + n]);
    db[n] = accumulate ? db[n] + total : total;
  }
}

}  // namespace llm::cuda
