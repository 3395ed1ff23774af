#include "kernels/cuda/host_checks.h"

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

namespace llm::cuda {

namespace checks {

void gemm_args(const Gemm& g) {
  const auto fail = [&](const std::string& why) { throw std::runtime_error("gemm: " + why); };
  const std::string dims = " (M " + std::to_string(g.M) + ", N " + std::to_string(g.N) + ", K " + std::to_string(g.K) + ")";
  if (g.M < 1 || g.N < 1 || g.K < 1) fail("M, N and K must be at least 1" + dims);
  if (!g.A || !g.B || !g.C) fail("A, B and C must not be null" + dims);
  if (g.lda < (g.trans_a ? g.M : g.K)) fail("lda " + std::to_string(g.lda) + " is too small" + dims);
  if (g.ldb < (g.trans_b ? g.K : g.N)) fail("ldb " + std::to_string(g.ldb) + " is too small" + dims);
  if (g.ldc < g.N) fail("ldc " + std::to_string(g.ldc) + " is too small" + dims);
  if (g.batch < 1 || g.stride_a < 0 || g.stride_b < 0 || g.stride_c < 0)
    fail("batch must be at least 1 and strides non-negative");
}

void bias_grad_args(int64_t M, int64_t N, const bf16* dy, int64_t ldy, const float* db) {
  if (M < 1 || N < 1 || ldy < N || !dy || !db)
    throw std::runtime_error("bias_grad: need M, N ≥ 1, ldy ≥ N and non-null dy, db (M " + std::to_string(M) +
                             ", N " + std::to_string(N) + ", ldy " + std::to_string(ldy) + ")");
}

bool attention_args(const AttentionShape& s, std::initializer_list<const void*> tensors, const char* fn,
                    const void* const* workspace) {
  const auto fail = [&](const std::string& why) { throw std::runtime_error(std::string(fn) + ": " + why); };
  if (s.B < 0 || s.T < 0 || s.Hq < 0 || s.Hkv < 0 || s.D < 0 || s.window < 0) fail("negative size in the shape");
  if (s.B == 0 || s.T == 0 || s.Hq == 0 || s.D == 0) return false;
  if (s.Hkv == 0 || s.Hq % s.Hkv != 0)
    fail("Hq (" + std::to_string(s.Hq) + ") must be a multiple of Hkv (" + std::to_string(s.Hkv) + ")");
  if (s.D % 2 != 0 || s.D > kAttentionMaxHeadDim)
    fail("head dimension " + std::to_string(s.D) + ": must be even and at most " + std::to_string(kAttentionMaxHeadDim));
  if ((s.q_stride != 0 && s.q_stride < s.Hq * s.D) || (s.kv_stride != 0 && s.kv_stride < s.Hkv * s.D))
    fail("token strides must be 0 (dense) or at least H·D (q_stride " + std::to_string(s.q_stride) + ", kv_stride " +
         std::to_string(s.kv_stride) + ")");
  constexpr int64_t kMaxInt = std::numeric_limits<int>::max();
  if (s.T > kMaxInt / 2 || s.B > 65535 || s.Hq > kMaxInt || s.window > kMaxInt || s.q_row_stride() > kMaxInt ||
      s.kv_row_stride() > kMaxInt)
    fail("shape too large (T ≤ 2^30, B ≤ 65535, token strides < 2^31)");
  for (const void* t : tensors)
    if (!t) fail("null tensor");
  if (workspace && !*workspace) fail("null workspace");
  if (workspace && reinterpret_cast<uintptr_t>(*workspace) % alignof(float) != 0) fail("workspace is not 4-byte aligned");
  return true;
}

bool attention_tensor_cores(AttentionKernel kernel, const AttentionShape& s, std::initializer_list<const void*> tensors,
                            const char* fn) {
  bool ok = (s.D == 64 || s.D == 128) && s.q_row_stride() % 8 == 0 && s.kv_row_stride() % 8 == 0;
  for (const void* t : tensors) ok = ok && reinterpret_cast<uintptr_t>(t) % 16 == 0;
  if (kernel == AttentionKernel::kTensorCore && !ok)
    throw std::runtime_error(std::string(fn) + ": the tensor-core kernel needs D = 64 or 128 (got " +
                             std::to_string(s.D) +
                             "), 16-byte aligned tensors and token strides that are multiples of 8");
  return kernel != AttentionKernel::kSimple && ok;
}

size_t attention_delta_bytes(const AttentionShape& s) { return (sizeof(float) * s.B * s.Hq * s.T + 255) / 256 * 256; }

}  // namespace checks

size_t attention_backward_workspace_bytes(const AttentionShape& shape) {
  if (shape.B <= 0 || shape.T <= 0 || shape.Hq <= 0 || shape.D <= 0) return 0;
  return checks::attention_delta_bytes(shape) + sizeof(int32_t) * shape.B * shape.T;
}

}  // namespace llm::cuda
