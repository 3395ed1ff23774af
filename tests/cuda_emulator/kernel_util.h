// What every emulated kernel does: check that each pointer argument holds its whole extent of
// device memory, read the inputs into fp32 (bf16 widened exactly), compute on the CPU, and write
// the outputs rounded to their type (bf16 round-to-nearest-even, as the GPU). Inputs are read in
// full before any output is written, so outputs may alias inputs as the headers allow.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/cuda/runtime.h"
#include "tests/cuda_emulator/emulator.h"

namespace llm::cuda_emulator {

using cuda::bf16;

inline float widen(float x) { return x; }
inline float widen(bf16 x) { return __bfloat162float(x); }
inline void narrow(float v, float* out) { *out = v; }
inline void narrow(float v, bf16* out) { *out = __float2bfloat16_rn(v); }

// Aborts unless p holds n elements of T in one device allocation.
template <class T>
void require(const T* p, int64_t n, const char* function, const char* argument) {
  require_device(p, bytes_of(n, sizeof(T), function, argument), function, argument);
}

// The n elements at p (checked) as fp32.
template <class T>
std::vector<float> read(const T* p, int64_t n, const char* function, const char* argument) {
  require(p, n, function, argument);
  std::vector<float> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[i] = widen(p[i]);
  return out;
}

// Writes values (checked) to p, rounded to T.
template <class T>
void write(const std::vector<float>& values, T* p, const char* function, const char* argument) {
  require(p, static_cast<int64_t>(values.size()), function, argument);
  for (size_t i = 0; i < values.size(); ++i) narrow(values[i], p + i);
}

// Writes `rows` rows of `row` elements, taken from values every `src_stride` elements, to p every
// `dst_stride` elements: the elements between the rows at p (padding, or other views' data) are
// left as they were.
template <class T>
void write_rows(const std::vector<float>& values, int64_t src_stride, T* p, int64_t dst_stride, int64_t rows,
                int64_t row, const char* function, const char* argument) {
  for (int64_t r = 0; r < rows; ++r)
    write(std::vector<float>(values.begin() + r * src_stride, values.begin() + r * src_stride + row), p + r * dst_stride,
          function, argument);
}

}  // namespace llm::cuda_emulator
