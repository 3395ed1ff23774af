// Attention of new queries against a KV cache, for generation: each query row is one softmax over
// its visible cache slots (two passes over the keys, one over the values). Decoding is bound by
// reading the cache, so the loops are written for streaming: contiguous D-vectors, vectorized dots.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/attention.h"

namespace llm::cpu {

namespace {
inline float dot(const float* a, const float* b, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}
}  // namespace

void attention_cached_forward(int64_t B, int64_t Tq, int64_t S, int64_t Hq, int64_t Hkv, int64_t D, const float* q,
                              const float* k_cache, const float* v_cache, const int32_t* past, float scale, float* out,
                              int64_t window) {
  const int64_t group = Hq / Hkv, rows = B * Tq * Hq;
  // Tiny decode steps are not worth waking the thread pool for.
  const bool parallel = rows * S * D > (1 << 15);
#pragma omp parallel if (parallel)
  {
    std::vector<float> scores(static_cast<size_t>(S));
    std::vector<float> acc(static_cast<size_t>(D));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t h = r % Hq, t = (r / Hq) % Tq, b = r / (Hq * Tq), kvh = h / group;
      const int64_t visible = std::min<int64_t>(static_cast<int64_t>(past[b]) + t + 1, S);
      const int64_t first = window > 0 ? std::max<int64_t>(0, visible - window) : 0;
      const float* qr = q + r * D;
      const float* kb = k_cache + (b * S * Hkv + kvh) * D;
      const float* vb = v_cache + (b * S * Hkv + kvh) * D;
      const int64_t slot_stride = Hkv * D;
      float mx = -INFINITY;
      for (int64_t s = first; s < visible; ++s) {
        scores[s] = scale * dot(qr, kb + s * slot_stride, D);
        mx = std::max(mx, scores[s]);
      }
      float z = 0.f;
      for (int64_t s = first; s < visible; ++s) z += scores[s] = std::exp(scores[s] - mx);
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t s = first; s < visible; ++s) {
        const float p = scores[s];
        const float* vr = vb + s * slot_stride;
#pragma omp simd
        for (int64_t i = 0; i < D; ++i) acc[i] += p * vr[i];
      }
      const float inv = 1.f / z;
      float* o = out + r * D;
#pragma omp simd
      for (int64_t i = 0; i < D; ++i) o[i] = acc[i] * inv;
    }
  }
}

}  // namespace llm::cpu
