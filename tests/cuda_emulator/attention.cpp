// kernels/cuda/attention.h on the CPU: cpu::attention_forward / attention_backward in fp32 on the
// bf16 inputs, outputs rounded to bf16 (lse stays fp32), with the real kernels' argument checks
// (kernels/cuda/host_checks.h).
#include "kernels/cuda/attention.h"

#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cuda/host_checks.h"
#include "tests/cuda_emulator/kernel_util.h"

namespace llm::cuda {

namespace emu = cuda_emulator;

const char* to_string(AttentionKernel kernel) {
  switch (kernel) {
    case AttentionKernel::kAuto: return "auto";
    case AttentionKernel::kSimple: return "simple";
    case AttentionKernel::kTensorCore: return "tensor-core";
  }
  return "?";
}

namespace {

cpu::AttentionShape cpu_shape(const AttentionShape& s) {
  return {s.B, s.T, s.Hq, s.Hkv, s.D, s.window, s.q_stride, s.kv_stride};
}

// Elements spanned by `rows` rows of `row` elements, `stride` apart (a q, k, v view with token strides).
int64_t extent(int64_t rows, int64_t row, int64_t stride) { return (rows - 1) * stride + row; }

}  // namespace

// The emulator has one implementation of the forward; there is no wgmma kernel to run (its switch is
// the real one, gemm_wgmma_switch.cpp).
bool attention_wgmma_available() { return false; }
bool attention_tma_available() { return false; }
bool attention_backward_wgmma_in_use(int64_t) { return false; }
bool attention_backward_wgmma_available() { return false; }

void attention_forward(const AttentionShape& shape, const bf16* q, const bf16* k, const bf16* v, const int32_t* doc,
                       float scale, bf16* out, float* lse, cudaStream_t stream, AttentionKernel kernel) {
  constexpr const char* kFn = "cuda::attention_forward";
  emu::require_stream(stream, kFn);
  if (!checks::attention_args(shape, {q, k, v, out, lse}, kFn)) return;
  checks::attention_tensor_cores(kernel, shape, {q, k, v, out}, kFn);
  const int64_t rows = shape.B * shape.T, nq = rows * shape.Hq * shape.D;
  const int64_t q_extent = extent(rows, shape.Hq * shape.D, shape.q_row_stride());
  const int64_t kv_extent = extent(rows, shape.Hkv * shape.D, shape.kv_row_stride());
  const std::vector<float> qf = emu::read(q, q_extent, kFn, "q"), kf = emu::read(k, kv_extent, kFn, "k"),
                           vf = emu::read(v, kv_extent, kFn, "v");
  if (doc) emu::require(doc, rows, kFn, "doc");
  std::vector<float> o(static_cast<size_t>(nq)), l(static_cast<size_t>(shape.B * shape.Hq * shape.T));
  cpu::attention_forward(cpu_shape(shape), qf.data(), kf.data(), vf.data(), doc, scale, o.data(), l.data());
  emu::write(o, out, kFn, "out");
  emu::write(l, lse, kFn, "lse");
}

void attention_backward(const AttentionShape& shape, const bf16* q, const bf16* k, const bf16* v, const int32_t* doc,
                        float scale, const bf16* out, const float* lse, const bf16* dout, bf16* dq, bf16* dk, bf16* dv,
                        void* workspace, cudaStream_t stream, AttentionKernel kernel) {
  constexpr const char* kFn = "cuda::attention_backward";
  emu::require_stream(stream, kFn);
  if (!checks::attention_args(shape, {q, k, v, out, lse, dout, dq, dk, dv}, kFn, &workspace)) return;
  checks::attention_tensor_cores(kernel, shape, {q, k, v, dout, dq, dk, dv}, kFn);
  emu::require_device(workspace, attention_backward_workspace_bytes(shape), kFn, "workspace");
  const int64_t rows = shape.B * shape.T, nq = rows * shape.Hq * shape.D;
  const int64_t q_extent = extent(rows, shape.Hq * shape.D, shape.q_row_stride());
  const int64_t kv_extent = extent(rows, shape.Hkv * shape.D, shape.kv_row_stride());
  const std::vector<float> qf = emu::read(q, q_extent, kFn, "q"), kf = emu::read(k, kv_extent, kFn, "k"),
                           vf = emu::read(v, kv_extent, kFn, "v"), of = emu::read(out, nq, kFn, "out"),
                           lf = emu::read(lse, shape.B * shape.Hq * shape.T, kFn, "lse"),
                           dof = emu::read(dout, nq, kFn, "dout");
  if (doc) emu::require(doc, rows, kFn, "doc");
  std::vector<float> dqf(static_cast<size_t>(q_extent)), dkf(static_cast<size_t>(kv_extent)),
      dvf(static_cast<size_t>(kv_extent));
  cpu::attention_backward(cpu_shape(shape), qf.data(), kf.data(), vf.data(), doc, scale, of.data(), lf.data(),
                          dof.data(), dqf.data(), dkf.data(), dvf.data());
  // Only the rows: with token strides the elements between them belong to other views.
  const int64_t qs = shape.q_row_stride(), kvs = shape.kv_row_stride();
  emu::write_rows(dqf, qs, dq, qs, rows, shape.Hq * shape.D, kFn, "dq");
  emu::write_rows(dkf, kvs, dk, kvs, rows, shape.Hkv * shape.D, kFn, "dk");
  emu::write_rows(dvf, kvs, dv, kvs, rows, shape.Hkv * shape.D, kFn, "dv");
}

}  // namespace llm::cuda
