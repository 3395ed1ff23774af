// Flash attention on the GPU: bf16 q/k/v, fp32 online softmax, log-sum-exp saved for backward.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/runtime.h"

namespace llm::cuda {

// The same meaning as cpu::AttentionShape (kernels/cpu/attention.h).
struct AttentionShape {
  int64_t B;    // batch
  int64_t T;    // sequence length (queries and keys)
  int64_t Hq;   // query heads
  int64_t Hkv;  // key/value heads; Hq % Hkv == 0 and query head h reads kv head h / (Hq / Hkv)
  int64_t D;    // head dimension: 64 and 128 take the tensor-core kernels; others (even, ≤ 256) a slower path
  int64_t window = 0;  // sliding window (Mistral): query t also needs key s > t - window; 0: unlimited
  // Elements from one token's row to the next in q and dq, and in k, v, dk and dv (0: dense, Hq·D and
  // Hkv·D); out, dout, lse are dense. The tensor-core kernels need multiples of 8 (16-byte rows).
  int64_t q_stride = 0;
  int64_t kv_stride = 0;
  int64_t q_row_stride() const { return q_stride ? q_stride : Hq * D; }
  int64_t kv_row_stride() const { return kv_stride ? kv_stride : Hkv * D; }
};

// Which implementation runs. kSimple: one warp per query (or key) row with scalar fp32 arithmetic, any
// even D ≤ 256 and any alignment; the reference the fast kernels are tested against. kTensorCore:
// FlashAttention-2 style mma.sync kernels (the forward on wgmma on Hopper: see below), D = 64 or 128
// with 16-byte aligned q, k, v and out (forward) or q, k, v, dout, dq, dk, dv (backward); throws
// otherwise. kAuto: kTensorCore where it applies, else kSimple.
enum class AttentionKernel { kAuto, kSimple, kTensorCore };
const char* to_string(AttentionKernel kernel);

// Layouts and semantics exactly as cpu::attention_forward / attention_backward: causal; q, out, dout,
// dq: [B, T, Hq, D]; k, v, dk, dv: [B, T, Hkv, D]; lse: [B, Hq, T] (fp32, natural log); doc: optional
// [B, T] int32 segment ids (each maximal run of equal ids is one document; null: plain causal).
void attention_forward(const AttentionShape& shape, const bf16* q, const bf16* k, const bf16* v,
                       const int32_t* doc, float scale, bf16* out, float* lse, cudaStream_t stream,
                       AttentionKernel kernel = AttentionKernel::kAuto);

// kTensorCore's (and so kAuto's) forward runs on Hopper's wgmma kernel (attention_wgmma.cu) when it was
// compiled in (CUDA architectures with 90a), the device is compute capability 9.0 and the switch is on,
// else on the mma.sync kernel; the same for the backward (see below). The switch is process-wide;
// it starts on, or off when the environment variable LLM_CUDA_WGMMA=0 is set (the GEMM's switch
// reads the same).
// The first wgmma forward of each D in a process first runs a self-check against the mma.sync kernel
// (a small causal problem, about a millisecond); if they disagree it turns the switch off and says so
// once on stderr. Tests use the switch to check both kernels.
void set_attention_wgmma(bool enabled);
bool attention_wgmma_enabled();
// Whether the wgmma forward can run here at all (wgmma_supported and not excluded by LLM_CUDA_EXCLUDE:
// kernels/cuda/gemm.h), whatever the switch says.
bool attention_wgmma_available();
// The wgmma forward has two forms: tiles loaded by the TMA in a producer warpgroup (the default) or
// by cp.async in every thread (inputs the TMA cannot describe, or this switch off: LLM_CUDA_TMA=0,
// which the GEMM's TMA switch reads too, or set_attention_tma(false)). The TMA form's first use per
// D runs its own self-check against the mma.sync kernel; a failure turns this switch off (stderr).
void set_attention_tma(bool enabled);
bool attention_tma_enabled();
// Whether the TMA form can run here (the wgmma forward can, it is not excluded, and the driver
// encodes tensor maps).
bool attention_tma_available();
// The backward's dK, dV and dQ run on wgmma kernels too where the forward's can, under the same
// switch (attention_wgmma_enabled), after a self-check of their own against the mma.sync kernels on
// first use per D; a kernel that fails it stays on mma.sync (one line on stderr) and leaves the
// forward alone. Whether both do for head dimension D (running that self-check now if it has not).
bool attention_backward_wgmma_in_use(int64_t D);
// Whether the wgmma backward kernels can run here at all (wgmma_supported and not excluded), whatever
// the switch and the self-check say.
bool attention_backward_wgmma_available();

// Scratch the backward needs, in bytes: Δ = rowsum(dO ⊙ O) (fp32 [B, Hq, T]) and each query's first
// visible key (int32 [B, T]); the same for every kernel choice.
size_t attention_backward_workspace_bytes(const AttentionShape& shape);
// dq, dk, dv are overwritten, deterministically (no float atomics). workspace holds
// attention_backward_workspace_bytes(shape) bytes, 4-byte aligned.
void attention_backward(const AttentionShape& shape, const bf16* q, const bf16* k, const bf16* v,
                        const int32_t* doc, float scale, const bf16* out, const float* lse, const bf16* dout,
                        bf16* dq, bf16* dk, bf16* dv, void* workspace, cudaStream_t stream,
                        AttentionKernel kernel = AttentionKernel::kAuto);

}  // namespace llm::cuda
