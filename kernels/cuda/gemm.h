// Matrix products on the GPU: bf16 inputs, fp32 accumulation on tensor cores, fused epilogues.
// Two implementations behind one call: the hand-written kernel (kNative) and cuBLASLt (kCublas);
// kAuto times both once per shape on first use and keeps the faster one for the rest of the run.
// kSimple is the obviously-correct reference kernel (one thread per output) that kNative also uses
// for operands the tensor-core kernel cannot load; tests name it to check both native kernels.
#pragma once
#include <cstdint>

#include "kernels/cuda/runtime.h"

namespace llm::cuda {

enum class GemmBackend { kNative, kCublas, kAuto, kSimple };
const char* to_string(GemmBackend backend);

// Row-major, the same convention as cpu::sgemm:
//   op(A) is M×K: A stored M×K (lda ≥ K), or K×M when trans_a (lda ≥ M).
//   op(B) is K×N: B stored K×N (ldb ≥ N), or N×K when trans_b (ldb ≥ K).
// Per element of C (M×N, ldc ≥ N):
//   v = alpha · (op(A)·op(B)) + bias[n]          (bias optional, fp32)
//   pre_gelu = v                                 (stored only when gelu and pre_gelu != null)
//   v = gelu(v)                                  (when gelu; tanh approximation, as cpu::gelu_forward)
//   v = v + beta · C_old                         (beta == 0: C is write-only and may hold NaN)
//   v = v + residual                             (optional)
//   C = v, rounded to C's type.
// C, pre_gelu and residual share C's type (fp32 when c_fp32, else bf16), ldc and stride_c.
// `batch` independent products; operand i starts at A + i·stride_a, B + i·stride_b, C + i·stride_c
// (elements; a stride of 0 shares one operand across the batch). bias is shared by the batch.
struct Gemm {
  bool trans_a = false, trans_b = false;
  int64_t M = 0, N = 0, K = 0;
  const bf16* A = nullptr;
  int64_t lda = 0;
  const bf16* B = nullptr;
  int64_t ldb = 0;
  void* C = nullptr;
  int64_t ldc = 0;
  bool c_fp32 = false;
  float alpha = 1.f, beta = 0.f;
  const float* bias = nullptr;
  bool gelu = false;
  void* pre_gelu = nullptr;
  const void* residual = nullptr;
  int64_t batch = 1, stride_a = 0, stride_b = 0, stride_c = 0;
};

// Any sizes (M, N, K ≥ 1), any leading dimensions and pointer alignments: the fast paths need
// 16-byte aligned rows and fall back to a correct slower path otherwise. Throws on bad arguments.
void gemm(const Gemm& g, GemmBackend backend, cudaStream_t stream);

// The backend kAuto settled on for g's shape (timing it now if this shape is new).
GemmBackend gemm_auto_choice(const Gemm& g, cudaStream_t stream);

// kNative's NT products (trans_a false, trans_b true: x·Wᵀ) run on Hopper's wgmma kernel when it was
// compiled in (CUDA architectures with 90a) and the device is compute capability 9.0, else (and for
// operands the wgmma kernel cannot load) on the mma.sync kernel. The switch is process-wide; it starts
// on, or off when the environment variable LLM_CUDA_WGMMA=0 is set. Tests use it to check both kernels.
void set_gemm_wgmma(bool enabled);
bool gemm_wgmma_enabled();
// Whether the wgmma kernels (GEMM and attention) can run here at all: compiled in (CUDA architectures
// with 90a) and the device is compute capability 9.0.
bool wgmma_supported();
// Kernels a process treats as absent, named in the environment variable LLM_CUDA_EXCLUDE (spaces or
// commas between): gemm_wgmma, gemm_tma, attention_wgmma (the forward), attention_tma,
// attention_bwd_wgmma. Their *_available() say false, so the engine, the tests and llm-bench pass
// them by. scripts/gpu_check.sh sets it for a kernel whose self-check crashed a process of its own:
// a kernel that faults poisons its process's CUDA context, and with it every later test or benchmark.
bool kernel_excluded(const char* name);
// Whether the wgmma kernel can run here (supported and not excluded), whatever the switch says.
bool gemm_wgmma_available();
// The wgmma kernel has two forms: tiles loaded by the Tensor Memory Accelerator in a producer
// warpgroup (the default) or by cp.async in every thread (operands the TMA cannot describe, or this
// switch off: LLM_CUDA_TMA=0 or set_gemm_tma(false)). The first TMA product in a process first runs
// a self-check against the mma.sync kernel; a failure turns this switch off (one line on stderr).
void set_gemm_tma(bool enabled);
bool gemm_tma_enabled();
// Whether the TMA form can run here (the wgmma kernel can, and the driver encodes tensor maps).
bool gemm_tma_available();

// db[n] (= db[n] when accumulate) + sum over the M rows of dy[m, n] (bf16 M×N, leading dim ldy): the
// bias gradient of a linear layer, deterministic (fixed reduction order).
void bias_grad(int64_t M, int64_t N, const bf16* dy, int64_t ldy, float* db, bool accumulate, cudaStream_t stream);

}  // namespace llm::cuda
