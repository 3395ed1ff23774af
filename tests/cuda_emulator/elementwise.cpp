// kernels/cuda/elementwise.h on the CPU, element by element in fp32 as the real kernels compute,
// with their argument checks.
#include "kernels/cuda/elementwise.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/dropout_mask.h"
#include "tests/cuda_emulator/kernel_util.h"

namespace llm::cuda {

namespace emu = cuda_emulator;

namespace {
constexpr int64_t kSumChunk = 4096;  // the real sum's partial-sum block, which sizes its workspace

void check_args(bool ok, const char* kernel, const std::string& why) {
  if (!ok) throw std::runtime_error(std::string(kernel) + ": " + why);
}
}  // namespace

void f32_to_bf16(int64_t n, const float* x, bf16* y, cudaStream_t stream) {
  emu::require_stream(stream, "cuda::f32_to_bf16");
  if (n <= 0) return;
  emu::write(emu::read(x, n, "cuda::f32_to_bf16", "x"), y, "cuda::f32_to_bf16", "y");
}

void bf16_to_f32(int64_t n, const bf16* x, float* y, cudaStream_t stream) {
  emu::require_stream(stream, "cuda::bf16_to_f32");
  if (n <= 0) return;
  emu::write(emu::read(x, n, "cuda::bf16_to_f32", "x"), y, "cuda::bf16_to_f32", "y");
}

void copy_strided(const StridedCopy& layout, int elem_size, const void* src, void* dst, cudaStream_t stream) {
  constexpr const char* kFn = "cuda::copy_strided";
  emu::require_stream(stream, kFn);
  check_args(layout.ndim >= 0 && layout.ndim <= kMaxCopyDims, "copy_strided",
             "ndim " + std::to_string(layout.ndim) + " is outside [0, " + std::to_string(kMaxCopyDims) + "]");
  int64_t n = 1;
  for (int d = 0; d < layout.ndim; ++d) {
    check_args(layout.shape[d] >= 0, "copy_strided", "negative size in dimension " + std::to_string(d));
    n *= layout.shape[d];
  }
  if (n == 0) return;
  check_args(elem_size == 1 || elem_size == 2 || elem_size == 4 || elem_size == 8, "copy_strided",
             "element size " + std::to_string(elem_size) + " is not 1, 2, 4 or 8");
  // Each side's extent: from its lowest to its highest element offset (strides may be negative).
  int64_t src_lo = 0, src_hi = 0, dst_lo = 0, dst_hi = 0;
  for (int d = 0; d < layout.ndim; ++d) {
    const int64_t last = layout.shape[d] - 1;
    (layout.src_strides[d] < 0 ? src_lo : src_hi) += last * layout.src_strides[d];
    (layout.dst_strides[d] < 0 ? dst_lo : dst_hi) += last * layout.dst_strides[d];
  }
  const auto* s = static_cast<const unsigned char*>(src);
  auto* t = static_cast<unsigned char*>(dst);
  const unsigned char *src_begin = s + src_lo * elem_size, *src_end = s + (src_hi + 1) * elem_size;
  unsigned char *dst_begin = t + dst_lo * elem_size, *dst_end = t + (dst_hi + 1) * elem_size;
  emu::require_device(src_begin, src_end - src_begin, kFn, "src");
  emu::require_device(dst_begin, dst_end - dst_begin, kFn, "dst");
  if (src_begin < dst_end && dst_begin < src_end) emu::fail(kFn, "src and dst overlap (the header forbids it)");
  for (int64_t i = 0; i < n; ++i) {
    int64_t rest = i, src_offset = 0, dst_offset = 0;
    for (int d = layout.ndim - 1; d >= 0; --d) {
      const int64_t index = rest % layout.shape[d];
      rest /= layout.shape[d];
      src_offset += index * layout.src_strides[d];
      dst_offset += index * layout.dst_strides[d];
    }
    std::memcpy(t + dst_offset * elem_size, s + src_offset * elem_size, elem_size);
  }
}

template <class T>
void fill(int64_t n, float value, T* y, cudaStream_t stream) {
  emu::require_stream(stream, "cuda::fill");
  if (n <= 0) return;
  emu::write(std::vector<float>(static_cast<size_t>(n), value), y, "cuda::fill", "y");
}

void fill(int64_t n, int32_t value, int32_t* y, cudaStream_t stream) {
  emu::require_stream(stream, "cuda::fill");
  if (n <= 0) return;
  emu::require(y, n, "cuda::fill", "y");
  std::fill(y, y + n, value);
}

template <class T>
void add(int64_t n, const T* a, float alpha_a, int64_t nb, const T* b, float alpha_b, T* y, cudaStream_t stream) {
  emu::require_stream(stream, "cuda::add");
  if (n <= 0) return;
  check_args(nb >= 1 && n % nb == 0, "add", "b's " + std::to_string(nb) + " elements do not tile " + std::to_string(n));
  std::vector<float> out = emu::read(a, n, "cuda::add", "a");
  const std::vector<float> bf = emu::read(b, nb, "cuda::add", "b");
  for (int64_t i = 0; i < n; ++i) out[i] = alpha_a * out[i] + alpha_b * bf[i % nb];
  emu::write(out, y, "cuda::add", "y");
}

template <class T>
void mul(int64_t n, const T* a, int64_t nb, const T* b, T* y, cudaStream_t stream) {
  emu::require_stream(stream, "cuda::mul");
  if (n <= 0) return;
  check_args(nb >= 1 && n % nb == 0, "mul", "b's " + std::to_string(nb) + " elements do not tile " + std::to_string(n));
  std::vector<float> out = emu::read(a, n, "cuda::mul", "a");
  const std::vector<float> bf = emu::read(b, nb, "cuda::mul", "b");
  for (int64_t i = 0; i < n; ++i) out[i] *= bf[i % nb];
  emu::write(out, y, "cuda::mul", "y");
}

template <class T>
void scale(int64_t n, const T* x, float alpha, T* y, cudaStream_t stream) {
  emu::require_stream(stream, "cuda::scale");
  if (n <= 0) return;
  std::vector<float> out = emu::read(x, n, "cuda::scale", "x");
  for (float& v : out) v *= alpha;
  emu::write(out, y, "cuda::scale", "y");
}

template <class T>
void accumulate(int64_t n, const T* src, float* dst, cudaStream_t stream) {
  emu::require_stream(stream, "cuda::accumulate");
  if (n <= 0) return;
  const std::vector<float> s = emu::read(src, n, "cuda::accumulate", "src");
  std::vector<float> out = emu::read(dst, n, "cuda::accumulate", "dst");
  for (int64_t i = 0; i < n; ++i) out[i] += s[i];
  emu::write(out, dst, "cuda::accumulate", "dst");
}

int64_t sum_workspace_elems(int64_t n) { return std::max<int64_t>((n + kSumChunk - 1) / kSumChunk, 1); }

template <class T>
void sum(int64_t n, const T* x, bool squares, float* out, double* workspace, cudaStream_t stream) {
  emu::require_stream(stream, "cuda::sum");
  check_args(n >= 0, "sum", "negative size " + std::to_string(n));
  emu::require(workspace, sum_workspace_elems(n), "cuda::sum", "workspace");
  const std::vector<float> xf = emu::read(x, n, "cuda::sum", "x");
  double total = 0;
  for (float v : xf) total += squares ? static_cast<double>(v) * v : v;
  emu::write(std::vector<float>{static_cast<float>(total)}, out, "cuda::sum", "out");
}

template <class T>
void sum_rows(int64_t N, int64_t C, const T* x, float* y, cudaStream_t stream) {
  emu::require_stream(stream, "cuda::sum_rows");
  if (C <= 0) return;
  check_args(N >= 0, "sum_rows", "negative row count " + std::to_string(N));
  const std::vector<float> xf = emu::read(x, N * C, "cuda::sum_rows", "x");
  std::vector<double> totals(static_cast<size_t>(C), 0.0);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t c = 0; c < C; ++c) totals[c] += xf[i * C + c];
  emu::write(std::vector<float>(totals.begin(), totals.end()), y, "cuda::sum_rows", "y");
}

template <class T>
void dropout(int64_t n, const T* x, float p, uint64_t seed, T* y, cudaStream_t stream) {
  emu::require_stream(stream, "cuda::dropout");
  if (n <= 0) return;
  check_args(p >= 0.f && p <= 1.f, "dropout", "probability " + std::to_string(p) + " is outside [0, 1]");
  std::vector<float> out = emu::read(x, n, "cuda::dropout", "x");
  const uint64_t key = dropout_mask::key(seed);
  const float keep_scale = dropout_mask::keep_scale(p);
  for (int64_t i = 0; i < n; ++i) out[i] = dropout_mask::keep(key, i, p) ? out[i] * keep_scale : 0.f;
  emu::write(out, y, "cuda::dropout", "y");
}

#define LLM_INSTANTIATE(T)                                                                    \
  template void fill<T>(int64_t, float, T*, cudaStream_t);                                    \
  template void add<T>(int64_t, const T*, float, int64_t, const T*, float, T*, cudaStream_t); \
  template void mul<T>(int64_t, const T*, int64_t, const T*, T*, cudaStream_t);               \
  template void scale<T>(int64_t, const T*, float, T*, cudaStream_t);                         \
  template void accumulate<T>(int64_t, const T*, float*, cudaStream_t);                       \
  template void sum<T>(int64_t, const T*, bool, float*, double*, cudaStream_t);               \
  template void sum_rows<T>(int64_t, int64_t, const T*, float*, cudaStream_t);                \
  template void dropout<T>(int64_t, const T*, float, uint64_t, T*, cudaStream_t);
LLM_INSTANTIATE(float)
LLM_INSTANTIATE(bf16)
#undef LLM_INSTANTIATE

}  // namespace llm::cuda
