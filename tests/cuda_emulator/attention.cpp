// kernels/cuda/attention.h on the CPU: cpu::attention_forward / attention_backward in fp32 on the
// bf16 inputs, outputs rounded to bf16 (lse stays fp32), with the real kernels' argument checks.
#include "kernels/cuda/attention.h"

#include <limits>
#include <stdexcept>
#include <string>

#include "kernels/cpu/attention.h"
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

// As the real validate(): throws on shapes the kernels cannot take; false when there is nothing to do.
bool validate(const AttentionShape& s, const char* fn) {
  const auto fail = [&](const std::string& why) { throw std::runtime_error(std::string(fn) + ": " + why); };
  if (s.B < 0 || s.T < 0 || s.Hq < 0 || s.Hkv < 0 || s.D < 0 || s.window < 0) fail("negative size in the shape");
  if (s.B == 0 || s.T == 0 || s.Hq == 0 || s.D == 0) return false;
  if (s.Hkv == 0 || s.Hq % s.Hkv != 0)
    fail("Hq (" + std::to_string(s.Hq) + ") must be a multiple of Hkv (" + std::to_string(s.Hkv) + ")");
  if (s.D % 2 != 0 || s.D > 256) fail("head dimension " + std::to_string(s.D) + ": must be even and at most 256");
  constexpr int64_t kMaxInt = std::numeric_limits<int>::max();
  if (s.T > kMaxInt / 2 || s.B > 65535 || s.Hq > kMaxInt || s.window > kMaxInt)
    fail("shape too large (T ≤ 2^30, B ≤ 65535)");
  return true;
}

// The tensor-core kernel's requirements, enforced where it is asked for by name (as the real one).
void check_tensor_core(AttentionKernel kernel, const AttentionShape& s, std::initializer_list<const void*> pointers,
                       const char* fn) {
  if (kernel != AttentionKernel::kTensorCore) return;
  bool ok = s.D == 64 || s.D == 128;
  for (const void* p : pointers) ok = ok && reinterpret_cast<uintptr_t>(p) % 16 == 0;
  if (!ok)
    throw std::runtime_error(std::string(fn) + ": the tensor-core kernel needs D = 64 or 128 (got " +
                             std::to_string(s.D) + ") and 16-byte aligned tensors");
}

cpu::AttentionShape cpu_shape(const AttentionShape& s) { return {s.B, s.T, s.Hq, s.Hkv, s.D, s.window}; }

// The byte offset of the backward's first-key table in the workspace (after Δ, 256-byte rounded).
size_t delta_bytes(const AttentionShape& s) { return (sizeof(float) * s.B * s.Hq * s.T + 255) / 256 * 256; }

}  // namespace

void attention_forward(const AttentionShape& shape, const bf16* q, const bf16* k, const bf16* v, const int32_t* doc,
                       float scale, bf16* out, float* lse, cudaStream_t stream, AttentionKernel kernel) {
  constexpr const char* kFn = "cuda::attention_forward";
  emu::require_stream(stream, kFn);
  if (!validate(shape, kFn)) return;
  if (!q || !k || !v || !out || !lse) throw std::runtime_error("cuda::attention_forward: null tensor");
  check_tensor_core(kernel, shape, {q, k, v, out}, kFn);
  const int64_t nq = shape.B * shape.T * shape.Hq * shape.D, nkv = shape.B * shape.T * shape.Hkv * shape.D;
  const std::vector<float> qf = emu::read(q, nq, kFn, "q"), kf = emu::read(k, nkv, kFn, "k"),
                           vf = emu::read(v, nkv, kFn, "v");
  if (doc) emu::require(doc, shape.B * shape.T, kFn, "doc");
  std::vector<float> o(static_cast<size_t>(nq)), l(static_cast<size_t>(shape.B * shape.Hq * shape.T));
  cpu::attention_forward(cpu_shape(shape), qf.data(), kf.data(), vf.data(), doc, scale, o.data(), l.data());
  emu::write(o, out, kFn, "out");
  emu::write(l, lse, kFn, "lse");
}

size_t attention_backward_workspace_bytes(const AttentionShape& shape) {
  if (shape.B <= 0 || shape.T <= 0 || shape.Hq <= 0 || shape.D <= 0) return 0;
  return delta_bytes(shape) + sizeof(int32_t) * shape.B * shape.T;
}

void attention_backward(const AttentionShape& shape, const bf16* q, const bf16* k, const bf16* v, const int32_t* doc,
                        float scale, const bf16* out, const float* lse, const bf16* dout, bf16* dq, bf16* dk, bf16* dv,
                        void* workspace, cudaStream_t stream, AttentionKernel kernel) {
  constexpr const char* kFn = "cuda::attention_backward";
  emu::require_stream(stream, kFn);
  if (!validate(shape, kFn)) return;
  if (!q || !k || !v || !out || !lse || !dout || !dq || !dk || !dv || !workspace)
    throw std::runtime_error("cuda::attention_backward: null tensor or workspace");
  if (reinterpret_cast<uintptr_t>(workspace) % alignof(float) != 0)
    throw std::runtime_error("cuda::attention_backward: workspace is not 4-byte aligned");
  check_tensor_core(kernel, shape, {q, k, v, dout, dq, dk, dv}, kFn);
  emu::require_device(workspace, attention_backward_workspace_bytes(shape), kFn, "workspace");
  const int64_t nq = shape.B * shape.T * shape.Hq * shape.D, nkv = shape.B * shape.T * shape.Hkv * shape.D;
  const std::vector<float> qf = emu::read(q, nq, kFn, "q"), kf = emu::read(k, nkv, kFn, "k"),
                           vf = emu::read(v, nkv, kFn, "v"), of = emu::read(out, nq, kFn, "out"),
                           lf = emu::read(lse, shape.B * shape.Hq * shape.T, kFn, "lse"),
                           dof = emu::read(dout, nq, kFn, "dout");
  if (doc) emu::require(doc, shape.B * shape.T, kFn, "doc");
  std::vector<float> dqf(static_cast<size_t>(nq)), dkf(static_cast<size_t>(nkv)), dvf(static_cast<size_t>(nkv));
  cpu::attention_backward(cpu_shape(shape), qf.data(), kf.data(), vf.data(), doc, scale, of.data(), lf.data(),
                          dof.data(), dqf.data(), dkf.data(), dvf.data());
  emu::write(dqf, dq, kFn, "dq");
  emu::write(dkf, dk, kFn, "dk");
  emu::write(dvf, dv, kFn, "dv");
}

}  // namespace llm::cuda
