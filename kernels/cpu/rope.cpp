// Rotary position embedding, both pairings, forward and inverse (backward).
#include <cmath>
#include <vector>

#include "kernels/cpu/fused.h"
#include "kernels/cpu/loop_util.h"

namespace llm::cpu {

void rope(int64_t N, int64_t H, int64_t D, const float* x, const int32_t* positions, const RopeFrequencies& freqs,
          RopeLayout layout, bool inverse, float* out) {
  const int64_t half = D / 2;
  // Angles in double (see rope_frequency), rounded to fp32 once as sine and cosine.
  std::vector<double> freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) freq[size_t(i)] = rope_frequency(freqs, i, D);
  const double sign = inverse ? -1.0 : 1.0;

#pragma omp parallel if (N * H * D >= kParallelMinWork)
  {
    std::vector<float> cos_t(static_cast<size_t>(half)), sin_t(static_cast<size_t>(half));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      // One table per token, shared by its H heads.
      const double pos = double(positions[n]);
      for (int64_t i = 0; i < half; ++i) {
        const double angle = pos * freq[size_t(i)];
        cos_t[size_t(i)] = float(std::cos(angle));
        sin_t[size_t(i)] = float(sign * std::sin(angle));
      }
      const float* cs = cos_t.data();
      const float* sn = sin_t.data();
      for (int64_t h = 0; h < H; ++h) {
        const float* xr = x + (n * H + h) * D;
        float* yr = out + (n * H + h) * D;
        // Every pair is read before either of its outputs is written, so out may equal x.
        if (layout == RopeLayout::kHalf) {
#pragma omp simd
          for (int64_t i = 0; i < half; ++i) {
            const float a = xr[i], b = xr[i + half];
            yr[i] = a * cs[i] - b * sn[i];
            yr[i + half] = a * sn[i] + b * cs[i];
          }
        } else {
#pragma omp simd
          for (int64_t i = 0; i < half; ++i) {
            const float a = xr[2 * i], b = xr[2 * i + 1];
            yr[2 * i] = a * cs[i] - b * sn[i];
            yr[2 * i + 1] = a * sn[i] + b * cs[i];
          }
        }
      }
    }
  }
}

}  // namespace llm::cpu
