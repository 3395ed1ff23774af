// Flash-style causal attention on the CPU (see attention.h for the contract).
//
// Both directions work on tiles: a block of query rows against a tile of keys, so every inner loop is
// a small matrix product C (M×N) += A (M×K) · B (K×N) with N contiguous and vectorized. K is packed
// transposed per tile (so Q·Kᵀ becomes such a product); the packed copies are at most the size of k
// and v, so memory stays linear in T. Tiles outside a block's allowed key range are skipped.
//
// Determinism: every task (forward: one query block of one head; backward: see attention_backward)
// is computed by one thread in a fixed order and writes disjoint outputs, so results are
// bit-identical for any thread count.
#include "kernels/cpu/attention.h"

// GCC 12 reports its own AVX-512 headers' deliberate `__Y = __Y` placeholders as uninitialized.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

namespace llm::cpu {

namespace {

// ---- a minimal SIMD vocabulary: one vector of kW floats ------------------------------------------
#if defined(__AVX512F__)
constexpr int kW = 16;
constexpr int kMR = 6;  // rows per register block: 6 rows × 4 vectors = 24 of 32 zmm accumulators
constexpr int kNV = 4;
using Vec = __m512;
inline Vec vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, Vec v) { _mm512_storeu_ps(p, v); }
inline Vec vset(float x) { return _mm512_set1_ps(x); }
inline Vec vzero() { return _mm512_setzero_ps(); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline Vec vadd(Vec a, Vec b) { return _mm512_add_ps(a, b); }
inline Vec vsub(Vec a, Vec b) { return _mm512_sub_ps(a, b); }
inline Vec vmul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
inline Vec vmax(Vec a, Vec b) { return _mm512_max_ps(a, b); }
inline float vreduce_max(Vec v) { return _mm512_reduce_max_ps(v); }
inline float vreduce_add(Vec v) { return _mm512_reduce_add_ps(v); }
// exp(x) to about 2 ulp; arguments below -87.3 (including -inf) give exactly 0.
inline Vec vexp(Vec x) {
  const __mmask16 underflow = _mm512_cmp_ps_mask(x, vset(-87.3f), _CMP_LT_OQ);
  x = _mm512_min_ps(_mm512_max_ps(x, vset(-87.3f)), vset(88.3f));
  const Vec n = _mm512_roundscale_ps(vmul(x, vset(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  Vec r = _mm512_fnmadd_ps(n, vset(0.693359375f), x);  // ln2 split in two for an exact first step
  r = _mm512_fnmadd_ps(n, vset(-2.12194440e-4f), r);
  Vec p = vset(1.f / 5040);
  p = vfma(p, r, vset(1.f / 720));
  p = vfma(p, r, vset(1.f / 120));
  p = vfma(p, r, vset(1.f / 24));
  p = vfma(p, r, vset(1.f / 6));
  p = vfma(p, r, vset(0.5f));
  p = vfma(p, r, vset(1.f));
  p = vfma(p, r, vset(1.f));
  return _mm512_maskz_mov_ps(static_cast<__mmask16>(~underflow), _mm512_scalef_ps(p, n));
}
#elif defined(__AVX2__)
constexpr int kW = 8;
constexpr int kMR = 6;  // 6 rows × 2 vectors = 12 of 16 ymm accumulators
constexpr int kNV = 2;
using Vec = __m256;
inline Vec vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, Vec v) { _mm256_storeu_ps(p, v); }
inline Vec vset(float x) { return _mm256_set1_ps(x); }
inline Vec vzero() { return _mm256_setzero_ps(); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline Vec vadd(Vec a, Vec b) { return _mm256_add_ps(a, b); }
inline Vec vsub(Vec a, Vec b) { return _mm256_sub_ps(a, b); }
inline Vec vmul(Vec a, Vec b) { return _mm256_mul_ps(a, b); }
inline Vec vmax(Vec a, Vec b) { return _mm256_max_ps(a, b); }
inline float vreduce_max(Vec v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}
inline float vreduce_add(Vec v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}
inline Vec vexp(Vec x) {
  const Vec underflow = _mm256_cmp_ps(x, vset(-87.3f), _CMP_LT_OQ);
  x = _mm256_min_ps(_mm256_max_ps(x, vset(-87.3f)), vset(88.0f));
  const Vec n = _mm256_round_ps(vmul(x, vset(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  Vec r = _mm256_fnmadd_ps(n, vset(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, vset(-2.12194440e-4f), r);
  Vec p = vset(1.f / 5040);
  p = vfma(p, r, vset(1.f / 720));
  p = vfma(p, r, vset(1.f / 120));
  p = vfma(p, r, vset(1.f / 24));
  p = vfma(p, r, vset(1.f / 6));
  p = vfma(p, r, vset(0.5f));
  p = vfma(p, r, vset(1.f));
  p = vfma(p, r, vset(1.f));
  // n is in [-126, 127] after the clamp, so 2^n is a normal float built from its exponent bits.
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(underflow, vmul(p, _mm256_castsi256_ps(bits)));
}
#else
constexpr int kW = 1;
constexpr int kMR = 4;
constexpr int kNV = 4;
using Vec = float;
inline Vec vload(const float* p) { return *p; }
inline void vstore(float* p, Vec v) { *p = v; }
inline Vec vset(float x) { return x; }
inline Vec vzero() { return 0.f; }
inline Vec vfma(Vec a, Vec b, Vec c) { return a * b + c; }  // std::fma is a libm call without FMA
inline Vec vadd(Vec a, Vec b) { return a + b; }
inline Vec vsub(Vec a, Vec b) { return a - b; }
inline Vec vmul(Vec a, Vec b) { return a * b; }
inline Vec vmax(Vec a, Vec b) { return std::max(a, b); }
inline float vreduce_max(Vec v) { return v; }
inline float vreduce_add(Vec v) { return v; }
inline Vec vexp(Vec x) { return x < -87.3f ? 0.f : std::exp(x); }
#endif

// Query rows per block and keys per tile (key tiles in whole vectors), tuned on Zen 4 for D = 64
// (the differences between nearby choices were within the noise of a shared machine). The forward
// likes wider key tiles: each row pays a fixed cost per tile (a max reduction, a rescale of its
// accumulator) that long tiles amortize. Overridable at compile time for tuning experiments.
#ifndef LLM_ATTN_FWD_BQ
#define LLM_ATTN_FWD_BQ 96
#define LLM_ATTN_FWD_BK 128
#define LLM_ATTN_BWD_BQ 64
#define LLM_ATTN_BWD_BK 64
#endif
constexpr int64_t kBQ = LLM_ATTN_FWD_BQ;
constexpr int64_t kBK = LLM_ATTN_FWD_BK;
constexpr int64_t kBwdBQ = LLM_ATTN_BWD_BQ;
constexpr int64_t kBwdBK = LLM_ATTN_BWD_BK;
static_assert(kBK % kW == 0 && kBwdBK % kW == 0, "key tiles must be whole vectors");

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Scratch memory, kept per thread and reused across calls: fresh multi-megabyte allocations would
// page-fault on every call, which costs more than the attention itself at small T. Contents are
// unspecified; callers write every element they read. OpenMP pool threads are long-lived, so each
// keeps its high-water mark until the thread exits.
enum Slot { kPackedK, kPackedV, kQueries, kScores, kAccumulator, kGradOut, kGradQ, kDelta, kKeysT,
            kValuesT, kKeys, kGradK, kGradV, kGradScores, kNumSlots };
float* scratch(Slot slot, int64_t n) {
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<float[], Free> buffers[kNumSlots];
  thread_local int64_t capacity[kNumSlots] = {};
  if (capacity[slot] < n) {
    const size_t bytes = static_cast<size_t>(round_up(n * 4, 64));
    buffers[slot].reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
    capacity[slot] = n;
  }
  return buffers[slot].get();
}

// ---- the one inner product shape: C (M×N) (+)= A (M×K) · B (K×N) ---------------------------------
// A is read through strides (so Aᵀ costs nothing), B and C are row-major with N a multiple of kW.
// Each C element is one fma chain over k in order, independent of the blocking, so any caller that
// feeds the same data gets the same bits.
template <int MR, int NV, bool kAccumulate>
void micro_kernel(int64_t K, const float* A, int64_t a_rs, int64_t a_cs, const float* B, int64_t ldb,
                  float* C, int64_t ldc) {
  Vec acc[MR][NV];
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) acc[m][v] = kAccumulate ? vload(C + m * ldc + v * kW) : vzero();
  for (int64_t k = 0; k < K; ++k) {
    Vec b[NV];
    for (int v = 0; v < NV; ++v) b[v] = vload(B + k * ldb + v * kW);
    const float* a = A + k * a_cs;
    for (int m = 0; m < MR; ++m) {
      const Vec am = vset(a[m * a_rs]);
      for (int v = 0; v < NV; ++v) acc[m][v] = vfma(am, b[v], acc[m][v]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) vstore(C + m * ldc + v * kW, acc[m][v]);
}

template <int NV, bool kAccumulate>
void gemm_rows(int64_t M, int64_t K, const float* A, int64_t a_rs, int64_t a_cs, const float* B,
               int64_t ldb, float* C, int64_t ldc) {
  int64_t m = 0;
  for (; m + kMR <= M; m += kMR)
    micro_kernel<kMR, NV, kAccumulate>(K, A + m * a_rs, a_rs, a_cs, B, ldb, C + m * ldc, ldc);
  const float* a = A + m * a_rs;
  float* c = C + m * ldc;
  switch (M - m) {  // the leftover rows, each count its own fully unrolled kernel
    case 0: break;
#define LLM_ATTN_TAIL(R) \
  case R: if constexpr (R < kMR) micro_kernel<R, NV, kAccumulate>(K, a, a_rs, a_cs, B, ldb, c, ldc); break;
    LLM_ATTN_TAIL(1) LLM_ATTN_TAIL(2) LLM_ATTN_TAIL(3) LLM_ATTN_TAIL(4) LLM_ATTN_TAIL(5)
#undef LLM_ATTN_TAIL
    default: break;
  }
}

template <bool kAccumulate>
void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_rs, int64_t a_cs, const float* B,
          int64_t ldb, float* C, int64_t ldc) {
  static_assert(kMR <= 6, "gemm_rows handles tails of up to 5 rows");
  int64_t n = 0;
  for (; n + kNV * kW <= N; n += kNV * kW)
    gemm_rows<kNV, kAccumulate>(M, K, A, a_rs, a_cs, B + n, ldb, C + n, ldc);
  const int64_t tail = (N - n) / kW;
  if constexpr (kNV > 1)
    if (tail == 1) gemm_rows<1, kAccumulate>(M, K, A, a_rs, a_cs, B + n, ldb, C + n, ldc);
  if constexpr (kNV > 2)
    if (tail == 2) gemm_rows<2, kAccumulate>(M, K, A, a_rs, a_cs, B + n, ldb, C + n, ldc);
  if constexpr (kNV > 3)
    if (tail == 3) gemm_rows<3, kAccumulate>(M, K, A, a_rs, a_cs, B + n, ldb, C + n, ldc);
}

// ---- masks ---------------------------------------------------------------------------------------
// doc_start[b*T + t]: the first key query t may attend to: the start of t's document (0 without
// documents), or t - window + 1 when a sliding window cuts in later. Query t attends to keys
// [doc_start, t]. The starts never decrease along t (documents are contiguous runs, as the contract
// states), which the tile ranges below rely on.
std::vector<int64_t> document_starts(int64_t B, int64_t T, const int32_t* doc, int64_t window) {
  std::vector<int64_t> start(static_cast<size_t>(B * T), 0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 1; t < T; ++t)
      start[b * T + t] = !doc || doc[b * T + t] == doc[b * T + t - 1] ? start[b * T + t - 1] : t;
  if (window > 0)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t) start[b * T + t] = std::max(start[b * T + t], t - window + 1);
  return start;
}

// Packed K and V, shared by all query heads of a kv head: kt[b][hkv][tile][d][j] holds K transposed
// per key tile (so Q·Kᵀ is a row-major product) and vp[b][hkv][s][d] is V with rows padded to Dp.
// Padding keys (s >= T) and padding columns are zero, so they add nothing.
struct PackedKV {
  int64_t Hkv, D, Dp, num_tiles;
  float* kt;
  float* vp;
  const float* k_tile(int64_t b, int64_t h, int64_t tile) const {
    return kt + (((b * Hkv + h) * num_tiles + tile) * D) * kBK;
  }
  const float* v_rows(int64_t b, int64_t h, int64_t s0) const {
    return vp + ((b * Hkv + h) * num_tiles * kBK + s0) * Dp;
  }
};

// Called by the calling thread before the parallel region (the buffers are its scratch).
PackedKV packed_kv_buffers(const AttentionShape& sh) {
  PackedKV p{sh.Hkv, sh.D, round_up(sh.D, kW), (sh.T + kBK - 1) / kBK, nullptr, nullptr};
  const int64_t Tp = p.num_tiles * kBK;
  p.kt = scratch(kPackedK, sh.B * sh.Hkv * Tp * sh.D);
  p.vp = scratch(kPackedV, sh.B * sh.Hkv * Tp * p.Dp);
  return p;
}

// One key tile of one (batch row, kv head); runs inside a parallel region.
void pack_kv_tile(const AttentionShape& sh, const float* k, const float* v, const PackedKV& p, int64_t job) {
  const int64_t tile = job % p.num_tiles, h = (job / p.num_tiles) % sh.Hkv, b = job / (p.num_tiles * sh.Hkv);
  float* kt = const_cast<float*>(p.k_tile(b, h, tile));
  float* vp = const_cast<float*>(p.v_rows(b, h, tile * kBK));
  const int64_t keys = std::min(kBK, sh.T - tile * kBK);
  for (int64_t j = 0; j < kBK; ++j) {
    float* vrow = vp + j * p.Dp;
    if (j >= keys) {
      for (int64_t d = 0; d < sh.D; ++d) kt[d * kBK + j] = 0.f;
      std::fill(vrow, vrow + p.Dp, 0.f);
      continue;
    }
    const int64_t src = (b * sh.T + tile * kBK + j) * sh.kv_row_stride() + h * sh.D;
    for (int64_t d = 0; d < sh.D; ++d) kt[d * kBK + j] = k[src + d];
    std::memcpy(vrow, v + src, sizeof(float) * sh.D);
    std::fill(vrow + sh.D, vrow + p.Dp, 0.f);
  }
}

// Columns [lo, hi] of a score row that are allowed (may be empty: lo > hi).
struct ColumnRange {
  int64_t lo, hi;
};
inline ColumnRange allowed_columns(int64_t k0, int64_t ncols, int64_t doc_start, int64_t t) {
  return {std::max<int64_t>(0, doc_start - k0), std::min<int64_t>(ncols - 1, t - k0)};
}

}  // namespace

// Below about a million multiply-adds, waking the thread pool costs more than the work (and on a busy
// machine a parked thread can cost a scheduler slice): such calls run on the calling thread. Results
// are the same bits either way.
static bool run_single_threaded(const AttentionShape& sh) {
  return sh.B * sh.Hq * sh.T * sh.T * sh.D < (int64_t(1) << 21);
}

void attention_forward(const AttentionShape& sh, const float* q, const float* k, const float* v,
                       const int32_t* doc, float scale, float* out, float* lse) {
  const int64_t B = sh.B, T = sh.T, Hq = sh.Hq, Hkv = sh.Hkv, D = sh.D, group = Hq / Hkv;
  if (B <= 0 || T <= 0 || Hq <= 0 || D <= 0) return;
  const int64_t q_stride = sh.q_row_stride();
  const std::vector<int64_t> doc_start = document_starts(B, T, doc, sh.window);
  const PackedKV kv = packed_kv_buffers(sh);
  const int64_t Dp = kv.Dp, num_blocks = (T + kBQ - 1) / kBQ, jobs = B * Hq * num_blocks;
  const int64_t pack_jobs = B * Hkv * kv.num_tiles;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();

#pragma omp parallel if (!run_single_threaded(sh))
  {
#pragma omp for schedule(static)
    for (int64_t job = 0; job < pack_jobs; ++job) pack_kv_tile(sh, k, v, kv, job);

    float* qs = scratch(kQueries, kBQ * Dp);
    float* scores = scratch(kScores, kBQ * kBK);
    float* acc = scratch(kAccumulator, kBQ * Dp);
    float row_max[kBQ];
    Vec row_sum[kBQ];  // lane-wise partial sums, reduced once per row at the end
    // Later query blocks see more keys: hand them out first so the tail of the schedule is short.
#pragma omp for schedule(dynamic, 1)
    for (int64_t job = 0; job < jobs; ++job) {
      const int64_t block = num_blocks - 1 - job / (B * Hq), h = job % Hq, b = (job / Hq) % B;
      const int64_t hk = h / group, t0 = block * kBQ, M = std::min(kBQ, T - t0), t_last = t0 + M - 1;
      const int64_t* starts = doc_start.data() + b * T;
      for (int64_t i = 0; i < M; ++i) {
        const float* src = q + (b * T + t0 + i) * q_stride + h * D;
        for (int64_t d = 0; d < D; ++d) qs[i * Dp + d] = scale * src[d];
      }
      std::fill(acc, acc + M * Dp, 0.f);
      std::fill(row_max, row_max + kBQ, kNegInf);
      std::fill(row_sum, row_sum + kBQ, vzero());

      // Allowed keys of the block form the contiguous range [starts[t0], t_last].
      for (int64_t tile = starts[t0] / kBK; tile * kBK <= t_last; ++tile) {
        const int64_t k0 = tile * kBK;
        const int64_t keys = std::min(kBK, t_last + 1 - k0);  // keys past t_last are masked for all
        const int64_t ncols = round_up(keys, kW);
        const bool unmasked = k0 >= starts[t_last] && k0 + ncols - 1 <= t0;
        gemm<false>(M, ncols, D, qs, Dp, 1, kv.k_tile(b, hk, tile), kBK, scores, kBK);

        for (int64_t i = 0; i < M; ++i) {
          float* s = scores + i * kBK;
          if (!unmasked) {
            const ColumnRange c = allowed_columns(k0, ncols, starts[t0 + i], t0 + i);
            for (int64_t j = 0; j < ncols; ++j)
              if (j < c.lo || j > c.hi) s[j] = kNegInf;
          }
          Vec vm = vset(kNegInf);
          for (int64_t j = 0; j < ncols; j += kW) vm = vmax(vm, vload(s + j));
          const float m_new = std::max(row_max[i], vreduce_max(vm));
          if (m_new == kNegInf) {  // nothing allowed yet in this row: contributes nothing
            std::fill(s, s + ncols, 0.f);
            continue;
          }
          // 0 on the row's first allowed tile; all lanes equal, so no scalar exp call is needed.
          const Vec valpha = vexp(vset(row_max[i] - m_new));
          const bool max_changed = m_new != row_max[i];
          row_max[i] = m_new;
          Vec vsum = vzero();
          const Vec shift = vset(m_new);
          for (int64_t j = 0; j < ncols; j += kW) {
            const Vec p = vexp(vsub(vload(s + j), shift));
            vstore(s + j, p);
            vsum = vadd(vsum, p);
          }
          row_sum[i] = vfma(row_sum[i], valpha, vsum);
          if (max_changed) {
            float* o = acc + i * Dp;
            for (int64_t d = 0; d < Dp; d += kW) vstore(o + d, vmul(vload(o + d), valpha));
          }
        }
        gemm<true>(M, Dp, keys, scores, kBK, 1, kv.v_rows(b, hk, k0), Dp, acc, Dp);
      }

      for (int64_t i = 0; i < M; ++i) {
        const float sum = vreduce_add(row_sum[i]), inv = 1.f / sum;
        float* dst = out + ((b * T + t0 + i) * Hq + h) * D;
        for (int64_t d = 0; d < D; ++d) dst[d] = acc[i * Dp + d] * inv;
        lse[(b * Hq + h) * T + t0 + i] = row_max[i] + std::log(sum);
      }
    }
  }
}

void attention_backward(const AttentionShape& sh, const float* q, const float* k, const float* v,
                        const int32_t* doc, float scale, const float* out, const float* lse,
                        const float* dout, float* dq, float* dk, float* dv) {
  const int64_t B = sh.B, T = sh.T, Hq = sh.Hq, Hkv = sh.Hkv, D = sh.D, group = Hq / Hkv;
  if (B <= 0 || T <= 0 || Hq <= 0 || D <= 0) return;
  const int64_t q_stride = sh.q_row_stride(), kv_stride = sh.kv_row_stride();
  const std::vector<int64_t> doc_start = document_starts(B, T, doc, sh.window);
  const int64_t Dp = round_up(D, kW), num_tiles = (T + kBwdBK - 1) / kBwdBK;
  constexpr int64_t BQ = kBwdBQ, BK = kBwdBK;

  // Rows [t0, t0 + n) of query head h: scale·Q and dO padded to Dp, and Δ = rowsum(dO ⊙ O).
  auto pack_rows = [&](int64_t b, int64_t h, int64_t t0, int64_t n, float* qs, float* dos, float* delta) {
    for (int64_t i = 0; i < n; ++i) {
      const int64_t src = ((b * T + t0 + i) * Hq + h) * D, q_src = (b * T + t0 + i) * q_stride + h * D;
      float* qrow = qs + i * Dp;
      float* drow = dos + i * Dp;
      float dot = 0.f;
      for (int64_t d = 0; d < D; ++d) {
        qrow[d] = scale * q[q_src + d];
        drow[d] = dout[src + d];
        dot += dout[src + d] * out[src + d];
      }
      std::fill(qrow + D, qrow + Dp, 0.f);
      std::fill(drow + D, drow + Dp, 0.f);
      delta[i] = dot;
    }
  };
  // Key tile `tile` of kv head hk: Kᵀ and Vᵀ (for S and dP) and scale·K (for dQ), zero-padded.
  auto pack_key_tile = [&](int64_t b, int64_t hk, int64_t tile, float* kt, float* vt, float* ks) {
    const int64_t k0 = tile * BK, tile_keys = std::min(BK, T - k0);
    for (int64_t j = 0; j < BK; ++j) {
      const bool real = j < tile_keys;
      const int64_t src = (b * T + k0 + j) * kv_stride + hk * D;
      for (int64_t d = 0; d < D; ++d) {
        kt[d * BK + j] = real ? k[src + d] : 0.f;
        vt[d * BK + j] = real ? v[src + d] : 0.f;
        ks[j * Dp + d] = real ? scale * k[src + d] : 0.f;
      }
      std::fill(ks + j * Dp + D, ks + (j + 1) * Dp, 0.f);
    }
  };
  // P and dS = P ⊙ (dP − Δ) of query rows [t0, t0 + M) of head h against one key tile; returns the
  // number of keys that any of these rows may see (a prefix of the tile).
  auto scores_and_grads = [&](int64_t b, int64_t h, int64_t tile, int64_t t0, const float* qs,
                              const float* dos, const float* delta, const float* kt, const float* vt,
                              float* p, float* ds) {
    const int64_t* starts = doc_start.data() + b * T;
    const float* lse_h = lse + (b * Hq + h) * T;
    const int64_t k0 = tile * BK, M = std::min(BQ, T - t0), t_last = t0 + M - 1;
    const int64_t keys = std::min(std::min(BK, T - k0), t_last + 1 - k0), ncols = round_up(keys, kW);
    const bool unmasked = k0 >= starts[t_last] && k0 + ncols - 1 <= t0;
    gemm<false>(M, ncols, D, qs, Dp, 1, kt, BK, p, BK);    // S = scale·Q·Kᵀ
    gemm<false>(M, ncols, D, dos, Dp, 1, vt, BK, ds, BK);  // dP = dO·Vᵀ
    for (int64_t i = 0; i < M; ++i) {
      float* pr = p + i * BK;
      float* dsr = ds + i * BK;
      const Vec row_lse = vset(lse_h[t0 + i]), row_delta = vset(delta[i]);
      for (int64_t j = 0; j < ncols; j += kW) {
        const Vec pj = vexp(vsub(vload(pr + j), row_lse));
        vstore(pr + j, pj);
        vstore(dsr + j, vmul(pj, vsub(vload(dsr + j), row_delta)));
      }
      if (!unmasked) {
        const ColumnRange c = allowed_columns(k0, ncols, starts[t0 + i], t0 + i);
        for (int64_t j = 0; j < ncols; ++j)
          if (j < c.lo || j > c.hi) pr[j] = dsr[j] = 0.f;
      }
    }
    return keys;
  };
  // Last query (exclusive) that sees any key of the tile: documents starting after it end the range.
  auto queries_end = [&](int64_t b, int64_t tile) {
    const int64_t* starts = doc_start.data() + b * T;
    const int64_t k1 = std::min(T, (tile + 1) * BK);
    int64_t t_end = tile * BK;
    while (t_end < T && starts[t_end] < k1) ++t_end;
    return t_end;
  };
  auto write_kv_tile = [&](int64_t b, int64_t hk, int64_t tile, const float* dk_acc, const float* dv_acc) {
    for (int64_t j = 0; j < std::min(BK, T - tile * BK); ++j) {
      const int64_t dst = (b * T + tile * BK + j) * kv_stride + hk * D;
      std::memcpy(dk + dst, dk_acc + j * Dp, sizeof(float) * D);
      std::memcpy(dv + dst, dv_acc + j * Dp, sizeof(float) * D);
    }
  };

  // Two schedules with the same arithmetic. Fused: one task per (batch row, kv head) owns dk/dv of
  // that head and dq of its query heads, so P and dS are computed once. When there are too few such
  // tasks to occupy the threads, split instead: tasks over key tiles for dk/dv, then over query
  // blocks for dq (recomputing P and dS). Every output element is accumulated in the same order by
  // the same code either way (dq over key tiles in increasing order), so the bits do not depend on
  // the schedule, and thus not on the thread count.
  const int threads = run_single_threaded(sh) ? 1 : omp_get_max_threads();
  const bool fused = threads == 1 || B * Hkv >= 2 * threads;

#pragma omp parallel if (threads > 1)
  {
    float* kt = scratch(kKeysT, D * BK);
    float* vt = scratch(kValuesT, D * BK);
    float* ks = scratch(kKeys, BK * Dp);
    float* dk_acc = scratch(kGradK, BK * Dp);
    float* dv_acc = scratch(kGradV, BK * Dp);
    float* p = scratch(kScores, BQ * BK);
    float* ds = scratch(kGradScores, BQ * BK);
    // Rows of scale·Q, dO, the dQ accumulator and Δ: a whole group of heads (fused) or one block.
    const int64_t rows = fused ? group * T : BQ;
    float* qs = scratch(kQueries, rows * Dp);
    float* dos = scratch(kGradOut, rows * Dp);
    float* dqs = scratch(kGradQ, rows * Dp);
    float* delta = scratch(kDelta, rows);

    if (fused) {
#pragma omp for schedule(dynamic, 1)
      for (int64_t job = 0; job < B * Hkv; ++job) {
        const int64_t b = job / Hkv, hk = job % Hkv;
        for (int64_t g = 0; g < group; ++g)
          pack_rows(b, hk * group + g, 0, T, qs + g * T * Dp, dos + g * T * Dp, delta + g * T);
        std::fill(dqs, dqs + group * T * Dp, 0.f);
        for (int64_t tile = 0; tile < num_tiles; ++tile) {
          pack_key_tile(b, hk, tile, kt, vt, ks);
          std::fill(dk_acc, dk_acc + BK * Dp, 0.f);
          std::fill(dv_acc, dv_acc + BK * Dp, 0.f);
          const int64_t t_end = queries_end(b, tile);
          for (int64_t g = 0; g < group; ++g)
            for (int64_t t0 = tile * BK / BQ * BQ; t0 < t_end; t0 += BQ) {
              const int64_t row = g * T + t0, M = std::min(BQ, T - t0);
              const int64_t keys = scores_and_grads(b, hk * group + g, tile, t0, qs + row * Dp,
                                                    dos + row * Dp, delta + row, kt, vt, p, ds);
              gemm<true>(keys, Dp, M, p, 1, BK, dos + row * Dp, Dp, dv_acc, Dp);   // dV += Pᵀ·dO
              gemm<true>(keys, Dp, M, ds, 1, BK, qs + row * Dp, Dp, dk_acc, Dp);   // dK += dSᵀ·scale·Q
              gemm<true>(M, Dp, keys, ds, BK, 1, ks, Dp, dqs + row * Dp, Dp);      // dQ += dS·scale·K
            }
          write_kv_tile(b, hk, tile, dk_acc, dv_acc);
        }
        for (int64_t g = 0; g < group; ++g)
          for (int64_t t = 0; t < T; ++t)
            std::memcpy(dq + (b * T + t) * q_stride + (hk * group + g) * D, dqs + (g * T + t) * Dp,
                        sizeof(float) * D);
      }
    } else {
#pragma omp for schedule(dynamic, 1)
      for (int64_t job = 0; job < B * Hkv * num_tiles; ++job) {
        const int64_t tile = job % num_tiles, hk = (job / num_tiles) % Hkv, b = job / (num_tiles * Hkv);
        pack_key_tile(b, hk, tile, kt, vt, ks);
        std::fill(dk_acc, dk_acc + BK * Dp, 0.f);
        std::fill(dv_acc, dv_acc + BK * Dp, 0.f);
        const int64_t t_end = queries_end(b, tile);
        for (int64_t g = 0; g < group; ++g)
          for (int64_t t0 = tile * BK / BQ * BQ; t0 < t_end; t0 += BQ) {
            const int64_t h = hk * group + g, M = std::min(BQ, T - t0);
            pack_rows(b, h, t0, M, qs, dos, delta);
            const int64_t keys = scores_and_grads(b, h, tile, t0, qs, dos, delta, kt, vt, p, ds);
            gemm<true>(keys, Dp, M, p, 1, BK, dos, Dp, dv_acc, Dp);
            gemm<true>(keys, Dp, M, ds, 1, BK, qs, Dp, dk_acc, Dp);
          }
        write_kv_tile(b, hk, tile, dk_acc, dv_acc);
      }
      const int64_t num_blocks = (T + BQ - 1) / BQ;
#pragma omp for schedule(dynamic, 1) nowait
      for (int64_t job = 0; job < B * Hq * num_blocks; ++job) {
        const int64_t block = num_blocks - 1 - job / (B * Hq), h = job % Hq, b = (job / Hq) % B;
        const int64_t t0 = block * BQ, M = std::min(BQ, T - t0), t_last = t0 + M - 1;
        pack_rows(b, h, t0, M, qs, dos, delta);
        std::fill(dqs, dqs + M * Dp, 0.f);
        // The same tiles, in the same order, that the fused schedule visits for this block.
        for (int64_t tile = doc_start[b * T + t0] / BK; tile * BK <= t_last; ++tile) {
          pack_key_tile(b, h / group, tile, kt, vt, ks);
          const int64_t keys = scores_and_grads(b, h, tile, t0, qs, dos, delta, kt, vt, p, ds);
          gemm<true>(M, Dp, keys, ds, BK, 1, ks, Dp, dqs, Dp);
        }
        for (int64_t i = 0; i < M; ++i)
          std::memcpy(dq + (b * T + t0 + i) * q_stride + h * D, dqs + i * Dp, sizeof(float) * D);
      }
    }
  }
}

}  // namespace llm::cpu
