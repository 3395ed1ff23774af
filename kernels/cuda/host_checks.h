// The host-side argument checks of the CUDA entry points, and the workspace layout they size, in one
// place for both the real kernels (kernels/cuda/*.cu) and their CPU emulation (tests/cuda_emulator):
// the two refuse the same arguments with the same messages. Plain C++, no device code.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/gemm.h"

namespace llm::cuda::checks {

// Throws std::runtime_error("gemm: ...") on arguments gemm() cannot take.
void gemm_args(const Gemm& g);

// Throws std::runtime_error("bias_grad: ...") on arguments bias_grad() cannot take.
void bias_grad_args(int64_t M, int64_t N, const bf16* dy, int64_t ldy, const float* db);

// The largest head dimension the attention kernels take (the simple kernel's register budget).
constexpr int kAttentionMaxHeadDim = 256;

// Throws (naming fn) on a shape the attention kernels cannot take (token strides below H·D included),
// or a null tensor, or (backward)
// a null or misaligned workspace; false when there is nothing to compute.
bool attention_args(const AttentionShape& s, std::initializer_list<const void*> tensors, const char* fn,
                    const void* const* workspace = nullptr);

// Whether the tensor-core attention kernels take this shape and these tensors (D = 64 or 128, 16-byte
// aligned, token strides multiples of 8); throws (naming fn) when `kernel` asks for them by name and
// they cannot.
bool attention_tensor_cores(AttentionKernel kernel, const AttentionShape& s, std::initializer_list<const void*> tensors,
                            const char* fn);

// attention_backward's workspace: Δ [B, Hq, T] fp32 rounded up to 256 bytes, then the first key
// position of each query row's document [B, T] int32 (attention_backward_workspace_bytes in all).
size_t attention_delta_bytes(const AttentionShape& s);

}  // namespace llm::cuda::checks
