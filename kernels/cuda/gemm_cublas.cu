// The cuBLASLt path: bf16 A and B, fp32 compute, C in bf16 or fp32, row-major through the usual
// transpose (a row-major R×C matrix is a column-major C×R one, so C = op(A)·op(B) is computed as
// Cᵀ = op(B)ᵀ·op(A)ᵀ, and gemm.h's bias over n is cuBLASLt's bias over the rows of Dᵀ).
//
// cuBLASLt's epilogue runs in the order  D = act(alpha·A·B + beta·C + bias); gemm.h's is
// gelu(alpha·A·B + bias) + beta·C_old + residual. They coincide when there is no gelu (C_in is then
// the residual, or C itself when beta ≠ 0), and for gelu when beta = 0 and there is no residual
// (GELU_AUX_BIAS writes pre_gelu). Everything else computes the product with cuBLASLt and finishes
// with epilogue_from(), as do fused forms for which cuBLASLt offers no algorithm.
#include <cublasLt.h>

#include <array>
#include <map>
#include <mutex>
#include <string>

#include "kernels/cuda/gemm_impl.cuh"

namespace llm::cuda::gemm_impl {
namespace {

constexpr size_t kWorkspaceBytes = 32u << 20;

void check_lt(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string("cuBLASLt error in gemm (") + what + "): " + cublasLtGetStatusString(status));
}

// One handle per process and one workspace per stream (calls on different streams may overlap),
// on the device current at first use, never freed: at exit the CUDA context may already be gone.
struct Lt {
  cublasLtHandle_t handle = nullptr;
  std::mutex mutex;
  std::map<cudaStream_t, void*> workspaces;
  Lt() { check_lt(cublasLtCreate(&handle), "create handle"); }
  void* workspace(cudaStream_t stream) {
    std::lock_guard<std::mutex> lock(mutex);
    if (auto it = workspaces.find(stream); it != workspaces.end()) return it->second;
    void* w = nullptr;
    check(cudaMalloc(&w, kWorkspaceBytes), "gemm cuBLASLt workspace");
    return workspaces[stream] = w;
  }
};
Lt& lt() {
  static Lt instance;
  return instance;
}

// Largest power of two ≤ 256 that divides the operand's address and its batch stride in bytes.
uint32_t alignment(const void* p, int64_t stride_bytes, bool batched) {
  uint32_t a = 256;
  while (a > 1 && (reinterpret_cast<uintptr_t>(p) % a != 0 || (batched && stride_bytes % a != 0))) a /= 2;
  return a;
}

// One cublasLtMatmul: D = epilogue(alpha·op(A)·op(B) + beta·C_in), D and C_in in C's layout.
struct Call {
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  float alpha = 1.f, beta = 0.f;
  const void* c_in = nullptr;
  void* d = nullptr;
  void* aux = nullptr;  // pre_gelu for the GELU_AUX forms
};

struct Descriptors {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~Descriptors() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

template <class T>
void set(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr, const T& value) {
  check_lt(cublasLtMatmulDescSetAttribute(d, attr, &value, sizeof(value)), "matmul attribute");
}

void make_layout(cublasLtMatrixLayout_t* layout, cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld,
                 int64_t batch, int64_t stride) {
  check_lt(cublasLtMatrixLayoutCreate(layout, type, rows, cols, ld), "matrix layout");
  if (batch > 1) {
    const int32_t count = static_cast<int32_t>(batch);
    check_lt(cublasLtMatrixLayoutSetAttribute(*layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)),
             "batch count");
    check_lt(cublasLtMatrixLayoutSetAttribute(*layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                              sizeof(stride)),
             "batch stride");
  }
}

struct Algo {
  bool found = false;
  cublasLtMatmulAlgo_t algo{};
};
using AlgoKey = std::array<int64_t, 20>;

// Runs `call`; false (nothing launched) when cuBLASLt has no algorithm for it.
bool matmul(const Gemm& g, const Call& call, cudaStream_t stream) {
  const bool batched = g.batch > 1;
  const int64_t c_bytes = g.c_fp32 ? 4 : 2;
  const cudaDataType_t c_type = g.c_fp32 ? CUDA_R_32F : CUDA_R_16BF;
  Descriptors d;
  check_lt(cublasLtMatmulDescCreate(&d.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "matmul descriptor");
  const cublasOperation_t op_a = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLASLt's A is our B
  const cublasOperation_t op_b = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  set(d.op, CUBLASLT_MATMUL_DESC_TRANSA, op_a);
  set(d.op, CUBLASLT_MATMUL_DESC_TRANSB, op_b);
  set(d.op, CUBLASLT_MATMUL_DESC_EPILOGUE, call.epilogue);
  const bool with_bias = call.epilogue == CUBLASLT_EPILOGUE_BIAS || call.epilogue == CUBLASLT_EPILOGUE_GELU_BIAS ||
                         call.epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
  if (with_bias) {
    set(d.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, static_cast<const void*>(g.bias));
    set(d.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, static_cast<int32_t>(CUDA_R_32F));
  }
  if (call.aux) {
    set(d.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, call.aux);
    set(d.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, g.ldc);
    if (batched) set(d.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE, g.stride_c);
  }
  make_layout(&d.a, CUDA_R_16BF, g.trans_b ? g.K : g.N, g.trans_b ? g.N : g.K, g.ldb, g.batch, g.stride_b);
  make_layout(&d.b, CUDA_R_16BF, g.trans_a ? g.M : g.K, g.trans_a ? g.K : g.M, g.lda, g.batch, g.stride_a);
  make_layout(&d.c, c_type, g.N, g.M, g.ldc, g.batch, g.stride_c);  // C_in and D share it

  const uint32_t align_a = alignment(g.B, g.stride_b * 2, batched), align_b = alignment(g.A, g.stride_a * 2, batched);
  const uint32_t align_c = alignment(call.c_in, g.stride_c * c_bytes, batched);
  const uint32_t align_d = alignment(call.d, g.stride_c * c_bytes, batched);
  const AlgoKey key{g.trans_a, g.trans_b, g.M, g.N, g.K, g.lda, g.ldb, g.ldc, g.batch, g.stride_a, g.stride_b,
                    g.stride_c, g.c_fp32, call.epilogue, call.aux != nullptr, call.beta != 0.f,
                    align_a, align_b, align_c, align_d};

  static std::mutex mutex;
  static std::map<AlgoKey, Algo> algos;
  Algo algo;
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = algos.find(key);
    if (it == algos.end()) {
      check_lt(cublasLtMatmulPreferenceCreate(&d.pref), "preference");
      const uint64_t workspace = kWorkspaceBytes;
      check_lt(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
                                                    sizeof(workspace)),
               "workspace preference");
      const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> aligns[] = {
          {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_a},
          {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_b},
          {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_c},
          {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_d}};
      for (const auto& [attr, value] : aligns)
        check_lt(cublasLtMatmulPreferenceSetAttribute(d.pref, attr, &value, sizeof(value)), "alignment preference");
      cublasLtMatmulHeuristicResult_t result{};
      int count = 0;
      const cublasStatus_t status =
          cublasLtMatmulAlgoGetHeuristic(lt().handle, d.op, d.a, d.b, d.c, d.c, d.pref, 1, &result, &count);
      Algo found;
      if (status == CUBLAS_STATUS_SUCCESS && count > 0) found.found = true, found.algo = result.algo;
      it = algos.emplace(key, found).first;
    }
    algo = it->second;
  }
  if (!algo.found) return false;
  const cublasStatus_t status =
      cublasLtMatmul(lt().handle, d.op, &call.alpha, g.B, d.a, g.A, d.b, &call.beta, call.c_in, d.c, call.d, d.c,
                     &algo.algo, lt().workspace(stream), kWorkspaceBytes, stream);
  if (status == CUBLAS_STATUS_NOT_SUPPORTED || status == CUBLAS_STATUS_INVALID_VALUE) return false;
  check_lt(status, "matmul");
  return true;
}

}  // namespace

bool gemm_cublas(const Gemm& g, cudaStream_t stream) {
  if (g.batch > INT32_MAX) return false;
  const Epilogue full = make_epilogue(g);
  // The part of the epilogue left for epilogue_from once cuBLASLt has produced P.
  auto rest = [&](bool bias, bool beta) {
    Epilogue e = full;
    e.alpha = 1.f;
    if (!bias) e.bias = nullptr;
    if (!beta) e.beta = 0.f;
    return e;
  };

  if (!g.gelu) {
    // Fused: C_in is the residual when beta = 0, else C itself (the residual then follows).
    Call call;
    call.epilogue = g.bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    call.alpha = g.alpha;
    call.d = g.C;
    const bool residual_in = g.residual && g.beta == 0.f;
    call.c_in = residual_in ? g.residual : g.C;
    call.beta = residual_in ? 1.f : g.beta;
    const bool residual_after = g.residual && !residual_in;
    if (residual_after && g.residual == g.C) return false;  // cuBLASLt would overwrite it before it is added
    if (matmul(g, call, stream)) {
      if (residual_after) {
        epilogue_from(rest(false, false), g.C, g.M, g.N, g.batch, stream);
      }
      return true;
    }
    if (!g.bias && !residual_in) return false;  // already the plain product
    call.epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    call.c_in = g.C;
    call.beta = g.beta;
    if (g.residual == g.C) return false;
    if (!matmul(g, call, stream)) return false;
    epilogue_from(rest(true, false), g.C, g.M, g.N, g.batch, stream);
    return true;
  }

  const bool pre = g.pre_gelu != nullptr;
  if (g.beta == 0.f && !g.residual) {
    // pre_gelu through GELU_AUX needs its leading dimension (and batch stride) divisible by 8.
    const bool aux_ok = !pre || (g.ldc % 8 == 0 && (g.batch == 1 || g.stride_c % 8 == 0));
    if (aux_ok) {
      Call call;
      call.epilogue = pre ? (g.bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX)
                          : (g.bias ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU);
      call.alpha = g.alpha;
      call.c_in = call.d = g.C;
      call.aux = pre ? g.pre_gelu : nullptr;
      if (matmul(g, call, stream)) return true;
    }
  }
  // The product into pre_gelu (or into C when there is no pre_gelu and C_old is not needed), then
  // bias, gelu, beta·C_old and residual elementwise.
  if (!pre && (g.beta != 0.f || g.residual == g.C)) return false;
  Call call;
  call.alpha = g.alpha;
  call.c_in = call.d = pre ? g.pre_gelu : g.C;
  if (!matmul(g, call, stream)) return false;
  epilogue_from(rest(true, true), call.d, g.M, g.N, g.batch, stream);
  return true;
}

}  // namespace llm::cuda::gemm_impl
